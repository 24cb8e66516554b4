"""``python -m tests.train.stop_driver ROOT OUT HP_JSON POINT``: one training process (train.loop,
in-process) over the channels under ROOT, writing under OUT, that sends itself SIGTERM at POINT:

- ``none``: no signal (an uninterrupted run, or the resumption of a stopped one);
- ``train:E:S``: during training step S (0-based) of epoch E (1-based);
- ``valid:E:B``: during batch B (0-based) of epoch E's validation pass;
- ``checkpoint:N``: while the checkpoint after epoch N is being written.

Prints ``STOPPED <reason>`` and exits 3 when the job stopped. The tests read OUT.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

from train import checkpoint, hyperparameters, loop, stop_signal


def main(root: str, out: str, hp_json: str, point: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stop_signal.install()
    kind, *where = point.split(":")
    where = [int(w) for w in where]
    eval_batches = {}  # epoch -> evaluation batches run in it
    forward = loop.Trainer._forward

    def forward_then_maybe_stop(self, images, labels):
        result = forward(self, images, labels)
        if self.model.training:
            if kind == "train" and [self.state.epoch + 1, self.state.step] == where:
                os.kill(os.getpid(), signal.SIGTERM)
        else:
            index = eval_batches.get(self.state.epoch, 0)
            eval_batches[self.state.epoch] = index + 1
            if kind == "valid" and [self.state.epoch + 1, index] == where:
                os.kill(os.getpid(), signal.SIGTERM)
        return result

    loop.Trainer._forward = forward_then_maybe_stop
    save = checkpoint.atomic_save

    def save_then_maybe_stop(obj, path):
        if kind == "checkpoint" and path.name == checkpoint.name(where[0]):
            os.kill(os.getpid(), signal.SIGTERM)
        save(obj, path)

    checkpoint.atomic_save = save_then_maybe_stop
    hp = hyperparameters.parse(json.loads(hp_json))
    job = loop.Job(channels={c: f"{root}/{c}" for c in ("train", "valid", "test")
                             if os.path.isdir(f"{root}/{c}")},
                   hyperparameters=hp, model_dir=f"{out}/model",
                   output_data_dir=f"{out}/output/data", checkpoint_dir=f"{out}/checkpoints",
                   input_config_dir=f"{out}/config")
    try:
        loop.run(job)
    except loop.JobStopped as exc:
        print(f"STOPPED {exc}", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
