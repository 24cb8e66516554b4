"""A compile helper: a process that builds a model's missing compiled programs into the store
while the workers serve (serve/compiling.py starts it; ``python -m serve.compile_helper``).

It runs beside the workers, not in them: a compile is seconds of Python (export, inductor's
lowering) and of the C++ compiler, which in a worker would hold the GIL that the request
threads need, and a worker that dies would lose it. On a CPU host it runs at a lower priority
(``nice``) with one intra-op thread, so serving keeps the cores it needs. It exits when the
gunicorn master that the workers belong to is gone (``--master-pid``), and holds the entry's
HELPERS lock (handed to it by the worker that started it) until it exits.

Exit status: 0 when every size is compiled (here or by another helper), 1 when a compile
failed (its reason is in the entry's failure note and on stderr), 2 for a bad program.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

MASTER_POLL_S = 1.0


def _exit_with_master(pid: int) -> None:
    """End this process at once when ``pid`` (the gunicorn master) is gone: a stopped server
    must not leave compiles running."""
    def watch():
        while True:
            time.sleep(MASTER_POLL_S)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass  # alive, another user's: cannot be ours, but do not guess

    threading.Thread(target=watch, name="master-watch", daemon=True).start()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", type=Path, required=True, help="the program file to compile")
    parser.add_argument("--sha256", default=None, help="its recorded sha256, checked first")
    parser.add_argument("--precision", required=True)
    parser.add_argument("--crop", type=int, required=True)
    parser.add_argument("--sizes", required=True, help="batch sizes, comma-separated")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--master-pid", type=int, default=0)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s compile-helper %(levelname)s %(message)s")
    if args.master_pid:
        _exit_with_master(args.master_pid)
    if args.nice:
        os.nice(args.nice)

    import torch

    from contract.artifact import check_program
    from serve import compiled

    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    entry = compiled.Entry(compiled.open_store(args.store), args.key)
    in_use = entry.hold()
    try:
        try:
            check_program(args.program, args.sha256, "program_sha256")
            make = compiled.exporter(args.program, args.precision, args.crop, device)
        except Exception as exc:  # noqa: BLE001 - torch raises several types; the worker goes on
            failure = entry.note_failure(f"{args.program} does not load: "
                                         f"{type(exc).__name__}: {exc}")
            logging.error("%s", failure.reason)
            return 2
        try:
            made = compiled.compile_sizes(entry, sizes, make)
        except compiled.CompileUnavailable as exc:
            logging.error("compile failed: %s", exc)
            return 1
        if set(entry.ready(sizes)) == set(sizes):
            entry.clear_failure()
        if made:
            compiled.evict_unused(args.store, keep=args.key)
        return 0
    finally:
        in_use.close()


if __name__ == "__main__":
    sys.exit(main())
