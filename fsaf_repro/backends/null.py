"""The `null` backend: well-formed outputs without a model, to time and test the harness alone.

detections="empty" (default): no detection for any image (every row is padding), the cheapest
possible backend, for measuring the loader/runner/writer. detections="echo": one deterministic
detection per image computed from its pixels (box from the mean of the first channel), so that a
pipeline test can check that each image's result lands on that image. delay_s sleeps per batch
(to emulate a slow runtime in tests).
"""
import time

import numpy as np

from .base import Backend, empty_outputs
from ..errors import BackendError
from ..options import BATCH_SIZE, Choice, Real
from ..spec import model_constants


class NullBackend(Backend):
    """Options: batch_size (emulate a static-batch model), detections ("empty" | "echo"), delay_s."""

    name = "null"
    option_kinds = {"batch_size": BATCH_SIZE, "detections": Choice(("empty", "echo")), "delay_s": Real(0.0)}

    def __init__(self, batch_size=None, detections="empty", delay_s=0.0, **options):
        super().__init__(**options)
        if detections not in ("empty", "echo"):
            raise BackendError(f"null backend: detections must be 'empty' or 'echo', got {detections!r}")
        self.static_batch_size = int(batch_size) if batch_size is not None else None
        self.detections = detections
        self.delay_s = float(delay_s)

    def load(self, model_path=None):
        self.model_path = model_path or "<no model>"
        self.batch_size = self.static_batch_size
        return self

    def run(self, batch, image_hw=None):
        size = self.check_batch(batch)
        if self.delay_s:
            time.sleep(self.delay_s)
        out = empty_outputs(size)
        if self.detections == "echo":
            height, width = batch.shape[2], batch.shape[3]
            for n in range(size):
                level = float(np.abs(batch[n, 0].astype(np.float64)).mean())
                x1 = (level * 7.0) % (width / 2.0)
                y1 = (level * 3.0) % (height / 2.0)
                out["dets"][n, 0] = [x1, y1, x1 + width / 4.0, y1 + height / 4.0, 0.5 + (level % 0.25)]
                out["labels"][n, 0] = int(level * 1000) % model_constants()["num_classes"]
        return out
