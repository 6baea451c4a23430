"""The `null` backend: well-formed empty outputs, to time the harness (loader, runner, writer) alone."""
from .base import Backend, empty_outputs


class NullBackend(Backend):
    """Returns no detection for every image. `batch_size=N` emulates a static-batch model."""

    name = "null"

    def __init__(self, batch_size=None, **options):
        super(NullBackend, self).__init__(**options)
        self.static_batch_size = batch_size

    def load(self, model_path=None):
        self.model_path = model_path or "<no model>"
        self.batch_size = self.static_batch_size
        return self

    def run(self, batch, image_hw=None):
        size = self.check_batch(batch)
        return empty_outputs(size)
