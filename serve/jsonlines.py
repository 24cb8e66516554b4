"""JSON Lines invocations (``application/jsonlines``): one image record a line, one answer a line.

What a batch transform job sends with SplitType Line (SageMaker developer guide, "Use your own
inference code with batch transform"): the lines of an input file, one per request
(BatchStrategy SINGLE_RECORD) or as many whole lines as fit in MaxPayloadInMB (MULTI_RECORD). A
line is a JSON object ``{"b64": "<base64 image>"}``, with optional ``k`` and ``probabilities``
as in a JSON request. The answer has one line per line of the body, in order, joined by
newlines (a job's AssembleWith Line ends each answer with one): ``{"model_version", "top_k"[,
"probabilities"]}``, or for a line that cannot be served an error of the HTTP errors' shape
``{"status", "error", "reason"}`` whose reason names the line (``request line 3: ...``,
counted in the request: a MULTI_RECORD request holds some lines of a file), so that one bad
photo does not fail its file. A blank line is a line too (an error), so answer line i is always body line i;
a final newline ends the last line and starts none.

Refused as a whole: a body with no line, more than SERVE_MAX_LINES_PER_REQUEST lines, or lines
whose model time alone is over the deadline's share (400s naming a smaller MaxPayloadInMB); the
deadline and a failed model, as any request.

The lines are served in chunks of at most SERVE_MAX_IMAGES_PER_REQUEST images, each through the
steps of a JSON request (headers and decode memory checked before decoding, a place in the
scheduler, the worker's decode memory, the deadline between images), so a request of thousands
of lines holds one chunk of images at a time beside its body; a line is base64-decoded only when
its chunk comes.
"""

from __future__ import annotations

import base64
import binascii
import json
import time

import numpy as np

from serve.answers import (ClientError, check_deadline, error_body, load_json, options,
                           predictions)
from serve.errors import BadImage
from serve.pipeline import ImagePipeline
from serve.record import TIMINGS_MS, Invocation

# SageMaker's built-in algorithms name JSON Lines application/jsonlines; the others are common.
JSONLINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")
ANSWER_TYPE = JSONLINES_TYPES[0]
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
# A record is one object with a few keys: a line with more JSON values than this is refused
# before json.loads builds them (a 100 MB line of "1," would be 50 million objects).
MAX_VALUES_PER_LINE = 32
SMALLER_PAYLOAD = "; lower the transform job's MaxPayloadInMB"


def line_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) offsets of each line of ``data``: split at ``\\n`` with a ``\\r`` before
    it dropped; a final newline ends the last line and starts none."""
    spans, start, size = [], 0, len(data)
    while start < size:
        end = data.find(b"\n", start)
        end = size if end < 0 else end
        stop = end - 1 if end > start and data[end - 1] == 0x0D else end
        spans.append((start, stop))
        start = end + 1
    return spans


def record(line: bytes) -> tuple[bytes, dict]:
    """One line's image bytes and its options (the parsed object).

    Raises:
        ClientError: 400 for a blank line, one that is not a JSON object with a non-empty
            ``b64`` string of valid base64, or one with more values than a record has.
    """
    if not line.strip():
        raise ClientError(400, "the line is empty")
    values = line.count(b",") + line.count(b"{") + line.count(b"[")
    if values > MAX_VALUES_PER_LINE:
        raise ClientError(400, f"the line holds about {values:,} JSON values; a record is "
                               '{"b64": "<base64 image>"} with optional "k" and "probabilities"')
    doc = load_json(line, "the line")
    b64 = doc.get("b64") if isinstance(doc, dict) else None
    if not isinstance(b64, str):
        raise ClientError(400, 'expected {"b64": "<base64 image>"}')
    if not b64:
        raise ClientError(400, '"b64" is empty')
    try:
        return base64.b64decode(b64, validate=True), doc
    except (binascii.Error, ValueError):
        raise ClientError(400, "invalid base64") from None


def serve(pipeline: ImagePipeline, inv: Invocation) -> bytes:
    """The JSON Lines answer to the invocation ``inv``, each chunk of lines through the
    ``pipeline``'s steps; fills ``inv``'s record (lines, line_errors, images, and the decode,
    queue and compute ms summed over chunks).

    Raises:
        ClientError: 400 for a body refused as a whole (module docstring), else as
            ``serve.invocation.InvocationHandler.handle``.
        serve.errors.Overloaded: the deadline passed.
        serve.errors.ModelFailed: the worker's model stopped for good.
    """
    s = pipeline.settings
    data = pipeline.read_body(inv)
    classifier, scheduler = pipeline.ready_model(inv.deadline)
    spans = line_spans(data)
    if not spans:
        raise ClientError(400, 'the body has no line; send one {"b64": "<base64 image>"} record '
                               "a line")
    if len(spans) > s.max_lines_per_request:
        raise ClientError(400, f"{len(spans):,} lines in one request; the limit is "
                               f"{s.max_lines_per_request:,} (SERVE_MAX_LINES_PER_REQUEST)"
                               + SMALLER_PAYLOAD)
    pipeline.check_cost(len(spans), 0.0, scheduler.ms_per_image, "lines", SMALLER_PAYLOAD)
    inv.fields.update(lines=len(spans), line_errors=0, images=0, batch_size=0,
                      **dict.fromkeys(TIMINGS_MS, 0.0))
    lines = _Lines(pipeline, inv, data, spans, classifier, scheduler)
    for first in range(0, len(spans), s.max_images_per_request):
        lines.serve_chunk(range(first, min(first + s.max_images_per_request, len(spans))))
    pipeline.freed_bytes(len(data))
    return b"\n".join(lines.answers)


class _Lines:
    """One JSON Lines request being served: its body, the offsets of its lines and their
    answers (bytes), filled chunk by chunk."""

    def __init__(self, pipeline: ImagePipeline, inv: Invocation, data: bytes,
                 spans: list[tuple[int, int]], classifier, scheduler):
        self.pipeline, self.inv, self.data, self.spans = pipeline, inv, data, spans
        self.classifier, self.scheduler = classifier, scheduler
        self.header = inv.request.headers.get(CUSTOM_ATTRIBUTES, "")
        self.query = inv.request.args
        self.answers: list[bytes] = [b""] * len(spans)
        self.decoded = 0

    def _error(self, i: int, status: int, reason: str) -> None:
        label = _label(i)
        reason = reason if reason.startswith(label) else label + reason
        self.answers[i] = json.dumps(error_body(status, reason)).encode()
        self.inv.fields["line_errors"] += 1

    def serve_chunk(self, indexes: range) -> None:
        """Answer the lines at ``indexes``: inspect each, decode the good ones, run them as one
        job."""
        geometry, classes = self.classifier.geometry, self.classifier.classes
        inv, pipeline = self.inv, self.pipeline
        items = []  # (line index, inspected image, k, probabilities wanted)
        for i in indexes:
            start, end = self.spans[i]
            try:
                image, doc = record(self.data[start:end])
                k, want_all = options(doc, self.header, self.query, len(classes))
                items.append((i, pipeline.inspect(image, geometry, _label(i), inv), k,
                              want_all))
            except ClientError as exc:
                self._error(i, exc.status, exc.reason)
        if not items:
            return
        self.scheduler.admit(len(items), inv.deadline)
        decode_start, decoded = time.monotonic(), []
        try:
            for j, (i, image, k, want_all) in enumerate(items):
                check_deadline(inv.deadline, self.decoded, len(self.spans), "lines",
                               SMALLER_PAYLOAD)
                try:
                    decoded.append((i, pipeline.decode(image, geometry, inv),
                                    image.size, k, want_all))
                    self.decoded += 1
                except BadImage as exc:
                    inv.failed_decode(exc.kind)
                    self._error(i, 400, str(exc))
                finally:
                    items[j] = None  # the lazy image holds its frame until it is dropped
        except BaseException:
            self.scheduler.release()
            raise
        if not decoded:
            self.scheduler.release()
            return
        inv.add_ms("decode_ms", (time.monotonic() - decode_start) * 1000)
        images = np.stack([d[1] for d in decoded])
        job = self.scheduler.submit(images, inv.deadline)
        probabilities = self.scheduler.wait(job)
        pipeline.observe(images, [d[2] for d in decoded], probabilities, inv)
        for (i, _, _, k, want_all), row in zip(decoded, probabilities):
            [prediction] = predictions(row[None], classes, k, want_all)
            self.answers[i] = json.dumps({"model_version": self.classifier.version,
                                          **prediction}).encode()
        inv.fields["images"] += len(decoded)
        inv.ran(job)


def _label(i: int) -> str:
    """What starts the reason of line ``i``'s (0-based) error."""
    return f"request line {i + 1}: "
