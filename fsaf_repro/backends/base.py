"""The backend contract shared by every runtime."""
from . import Availability


class Backend(object):
    """Contract: `availability()` -> `load(model_path)` -> `run(batch)` ... -> `close()`.

    Subclasses set `name` and implement `availability`, `load`, `run` and `close`. `batch_size` is
    the static batch size of the loaded model, or None when the model accepts any batch size.
    """

    name = None

    def __init__(self, **options):
        self.options = dict(options)
        self.batch_size = None

    @classmethod
    def availability(cls):
        return Availability(True, "")

    def load(self, model_path):
        raise NotImplementedError

    def run(self, batch):
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False
