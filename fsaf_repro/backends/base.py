"""The backend contract shared by every runtime."""
from collections import namedtuple

import numpy as np

from ..errors import BackendError, BatchSizeMismatch

# Whether a backend can run on this host, and why not. Defined here rather than in the package's
# __init__ (which re-exports it) so that the contract imports nothing from the registry above it.
Availability = namedtuple("Availability", ["ok", "reason"])

# Every backend returns this many detection rows per image (the exported graphs' top-k; score-0 rows
# are padding). The value is the model's max_per_img in spec/recipe.json; read lazily there.
OUTPUT_KEYS = ("dets", "labels")


def max_detections():
    from ..spec import model_constants
    return int(model_constants()["max_per_img"])


def empty_outputs(batch_size, num_dets=None):
    """Well-formed outputs with no detection: zero boxes, score 0 (padding), label 0."""
    n = max_detections() if num_dets is None else int(num_dets)
    return {"dets": np.zeros((int(batch_size), n, 5), dtype=np.float32),
            "labels": np.zeros((int(batch_size), n), dtype=np.int64)}


def normalise_outputs(dets, labels, batch_size, origin):
    """Cast a runtime's two outputs to the contract's dtypes and check their shapes.

    Tools emit fp16 dets or int32 labels depending on the graph and the converter; the contract is
    float32 [B, 100, 5] and int64 [B, 100]. `origin` names the model or file for the error message.
    """
    n = max_detections()
    dets = np.asarray(dets)
    labels = np.asarray(labels)
    try:
        dets = dets.reshape(int(batch_size), n, 5).astype(np.float32, copy=False)
        labels = labels.reshape(int(batch_size), n).astype(np.int64, copy=False)
    except ValueError:
        raise BackendError(
            f"{origin}: outputs have shapes dets {tuple(dets.shape)} and labels {tuple(labels.shape)}; expected dets [{batch_size}, {n}, 5] and labels [{batch_size}, {n}]"
            ) from None
    return {"dets": dets, "labels": labels}


class Backend:
    """Contract: `availability()` -> `load(model_path)` -> `run(batch)` ... -> `close()`.

    Subclasses set `name` and implement `availability`, `load`, `run` and `close`. `batch_size` is
    the static batch size of the loaded model, or None when the model accepts any batch size.
    `input_dtype` is the dtype the loaded model expects (numpy dtype name), when known.
    """

    name = None

    def __init__(self, **options):
        self.options = dict(options)
        self.batch_size = None
        self.input_dtype = None
        self.model_path = None

    @classmethod
    def availability(cls):
        return Availability(True, "")

    def load(self, model_path):
        raise NotImplementedError

    def run(self, batch):
        raise NotImplementedError

    def close(self):
        pass

    def check_batch(self, batch):
        """Refuse, before running, a batch the loaded model cannot take; return its size.

        A static-batch model (om, fixed-shape ONNX) run with another batch size is refused with both
        sizes named: the runner pads the last partial batch instead.
        """
        shape = getattr(batch, "shape", None)
        if shape is None or len(shape) != 4:
            raise BackendError("{}: a batch must be an NCHW array, got {}".format(
                self.name, f"shape {tuple(shape)}" if shape is not None else type(batch).__name__))
        size = int(shape[0])
        if self.batch_size is not None and size != int(self.batch_size):
            raise BatchSizeMismatch(
                f"{self.name}: model {self.model_path} has a static batch size of {self.batch_size} but was given a batch of {size}; pad the batch "
                f"to {self.batch_size} (the runner does this) or convert/export a model for batch size {size}")
        if self.input_dtype is not None and np.dtype(batch.dtype) != np.dtype(self.input_dtype):
            raise BackendError(f"{self.name}: model {self.model_path} takes {np.dtype(self.input_dtype).name} input but the batch is {np.dtype(batch.dtype).name}")
        return size

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def read_output_files(dets_path, labels_path, batch_size, origin):
    """dets and labels written by a tool as raw binary files, dtypes inferred from the byte sizes.

    The om's dets may be float32 or float16 and its labels int64 or int32 depending on the graph and
    the converter; the sizes tell which (B x 100 x 5 x {4, 2} bytes, B x 100 x {8, 4} bytes).
    """
    import os
    from ..errors import OutputFormatError
    n = max_detections()
    arrays = []
    for path, count, dtypes in ((dets_path, batch_size * n * 5, (np.float32, np.float16)),
                                (labels_path, batch_size * n, (np.int64, np.int32))):
        if not os.path.isfile(path):
            raise OutputFormatError(f"{origin}: expected output file {path} is missing")
        size = os.path.getsize(path)
        dtype = next((d for d in dtypes if np.dtype(d).itemsize * count == size), None)
        if dtype is None:
            raise OutputFormatError(
                "{}: {} has {} bytes; expected {} values of {} ({})".format(
                    origin, path, size, count, " or ".join(np.dtype(d).name for d in dtypes),
                    " or ".join(str(np.dtype(d).itemsize * count) for d in dtypes)))
        arrays.append(np.fromfile(path, dtype=dtype))
    return normalise_outputs(arrays[0], arrays[1], batch_size, origin)
