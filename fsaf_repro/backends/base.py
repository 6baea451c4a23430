"""The backend contract shared by every runtime, and the facts each backend class states about itself.

Besides running a model, a backend class says (class attributes and classmethods, read without loading
anything, so that reproduce and perf can ask a class whose runtime is absent):
- `model_kind`: the model file it takes: "checkpoint" (the .pth), an exported ONNX flavour ("onnx-nms",
  "raw"), "om" (an atc-built om), or None (no model file);
- `takes_threads`: whether it accepts a `threads` option (intra-op threads of a CPU runtime);
- `device_kind` and `device_label(soc_version)`: the device its measurements are labelled with;
- `precision(om_precision)`: the precision label of its records;
- `record_labels(device, precision)` / `check_record(record, origin)`: the labels a record of this
  backend must carry (an emulation refuses an NPU label).
`run_padded` (a base-class helper) runs a batch of any size through a static-batch model: it splits the
batch, pads the last part with zero images and drops the padding's outputs.
"""
from collections import namedtuple
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ..convert import DEFAULT_PRECISION_MODE, FORCE_FP16
from ..errors import BackendError, BackendOptionError, BatchSizeMismatch, OptionError
from ..options import BOOLEAN, THREADS, check_options

# Whether a backend can run on this host, and why not. Defined here rather than in the package's
# __init__ (which re-exports it) so that the contract imports nothing from the registry above it.
Availability = namedtuple("Availability", ["ok", "reason"])

# Every backend returns this many detection rows per image (the exported graphs' top-k; score-0 rows
# are padding). The value is the model's max_per_img in spec/recipe.json; read lazily there.
OUTPUT_KEYS = ("dets", "labels")

# The model files a backend may take (Backend.model_kind); None: no model file.
MODEL_CHECKPOINT = "checkpoint"
MODEL_OM = "om"
ONNX_MODEL_KINDS = ("onnx-nms", "raw")  # exported ONNX flavours a runtime reads (export.py)

Outputs = Dict[str, np.ndarray]


def max_detections() -> int:
    from ..spec import model_constants
    return int(model_constants()["max_per_img"])


def empty_outputs(batch_size: int, num_dets: Optional[int] = None) -> Outputs:
    """Well-formed outputs with no detection: zero boxes, score 0 (padding), label 0."""
    n = max_detections() if num_dets is None else int(num_dets)
    return {"dets": np.zeros((int(batch_size), n, 5), dtype=np.float32),
            "labels": np.zeros((int(batch_size), n), dtype=np.int64)}


def normalise_outputs(dets: Any, labels: Any, batch_size: int, origin: str) -> Outputs:
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
            f"{origin}: outputs have shapes dets {tuple(dets.shape)} and labels {tuple(labels.shape)}; "
            f"expected dets [{batch_size}, {n}, 5] and labels [{batch_size}, {n}]") from None
    return {"dets": dets, "labels": labels}


def npu_device_label(soc_version: Optional[str] = None) -> str:
    """The device label of a measurement on an Ascend NPU: 310P or 310 (the recipe's table columns),
    else the soc version without its "Ascend" prefix ("npu" when unknown)."""
    soc = (soc_version or "npu").replace("Ascend", "")
    if soc.startswith("310P"):
        return "310P"
    if soc.startswith("310"):
        return "310"
    return soc


class Backend:
    """Contract: `availability()` -> `load(model_path)` -> `run(batch)` ... -> `close()`.

    Subclasses set `name` and implement `availability`, `load`, `run` and `close`, and state their
    facts (`model_kind`, `takes_threads`, `device_kind`; override `device_label` / `precision` /
    `record_labels` when the defaults do not fit). `batch_size` is the static batch size of the
    loaded model, or None when the model accepts any batch size. `input_dtype` is the dtype the
    loaded model expects (numpy dtype name), when known.
    """

    name = None  # type: Optional[str]
    model_kind = None  # type: Optional[str]
    takes_threads = False
    device_kind = "cpu"  # "cpu", "gpu" or "npu"
    # The option that picks which device of the host runs the model (an NPU or GPU id), or None: a
    # sharded run (`infer --devices`) gives each shard one device through it, or, without it, splits
    # the host's threads between worker processes (fsaf_repro.devices).
    device_option = None  # type: Optional[str]
    # The options this backend takes besides those its facts imply (declared_options), each with its
    # declared kind (fsaf_repro.options): create_backend refuses any other name and any value out of range.
    option_kinds = {}  # type: Dict[str, Any]

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)
        self.batch_size = None  # type: Optional[int]
        self.input_dtype = None  # type: Any
        self.model_path = None  # type: Optional[str]

    # --- facts about the class: asked without loading a model ------------------------------------

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True, "")

    @classmethod
    def declared_options(cls) -> Dict[str, Any]:
        """Option name -> kind: `threads` for a backend that takes threads, `trusted` for one that loads a
        checkpoint, and the class's own `option_kinds`."""
        kinds = {}  # type: Dict[str, Any]
        if cls.takes_threads:
            kinds["threads"] = THREADS
        if cls.model_kind == MODEL_CHECKPOINT:
            kinds["trusted"] = BOOLEAN
        kinds.update(cls.option_kinds)
        return kinds

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> Dict[str, Any]:
        """`options` checked against declared_options (BackendOptionError naming the option otherwise)."""
        try:
            return check_options(cls.declared_options(), dict(options), f"backend {cls.name}")
        except OptionError as exc:
            message = str(exc)
            prefix = "" if message.startswith("backend ") else f"backend {cls.name}: "
            raise BackendOptionError(prefix + message) from None

    @classmethod
    def device_label(cls, soc_version: Optional[str] = None) -> str:
        """The device label of this backend's measurements on this host (perf records, report)."""
        if cls.device_kind == "npu":
            return npu_device_label(soc_version)
        return cls.device_kind

    @classmethod
    def precision(cls, om_precision: str = DEFAULT_PRECISION_MODE) -> str:
        """The precision label of this backend's records; `om_precision` is atc's --precision_mode,
        which only an om backend's records depend on."""
        return "fp32"

    @classmethod
    def record_labels(cls, device: str, precision: str) -> Tuple[str, str]:
        """(device, precision) a record of this backend must carry, given those of the measurement;
        raises ResultsError for labels the backend's figures may not carry."""
        return device, precision

    @classmethod
    def check_record(cls, record: Mapping[str, Any], origin: str) -> None:
        """Refuse (ResultsError) a record of this backend that carries labels it may not carry."""

    # --- running ----------------------------------------------------------------------------------

    def load(self, model_path: Optional[str]) -> "Backend":
        raise NotImplementedError

    def run(self, batch: np.ndarray, image_hw: Optional[np.ndarray] = None) -> Outputs:
        """Outputs of one batch; a static-batch model takes exactly its batch size (see run_padded)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def run_padded(self, batch: np.ndarray, image_hw: Optional[np.ndarray] = None) -> Outputs:
        """`run` on a batch of any size: for a static-batch model the batch is split into parts of the
        static size, the last part padded with zero images (their image_hw rows: the canvas size), and
        the padding's outputs dropped. A dynamic-batch model runs the batch as it is."""
        static = self.batch_size
        count = int(batch.shape[0])
        if static is None or int(static) == count:
            return self._run_part(batch, image_hw)
        static = int(static)
        dets, labels = [], []
        for start in range(0, count, static):
            part = batch[start:start + static]
            part_hw = None if image_hw is None else np.asarray(image_hw, dtype=np.int32)[start:start + static]
            size = int(part.shape[0])
            if size < static:
                padded = np.zeros((static,) + tuple(part.shape[1:]), dtype=part.dtype)
                padded[:size] = part
                part = padded
                if part_hw is not None:
                    canvas = np.tile([[batch.shape[2], batch.shape[3]]], (static - size, 1)).astype(np.int32)
                    part_hw = np.concatenate([part_hw.reshape(size, 2), canvas])
            out = self._run_part(part, part_hw)
            dets.append(out["dets"][:size])
            labels.append(out["labels"][:size])
        return {"dets": np.concatenate(dets), "labels": np.concatenate(labels)}

    def _run_part(self, batch, image_hw):
        return self.run(batch, image_hw=image_hw) if image_hw is not None else self.run(batch)

    def check_batch(self, batch: np.ndarray) -> int:
        """Refuse, before running, a batch the loaded model cannot take; return its size.

        A static-batch model (om, fixed-shape ONNX) run with another batch size is refused with both
        sizes named: `run_padded` (which the runner uses) pads the last partial batch instead.
        """
        shape = getattr(batch, "shape", None)
        if shape is None or len(shape) != 4:
            raise BackendError("{}: a batch must be an NCHW array, got {}".format(
                self.name, f"shape {tuple(shape)}" if shape is not None else type(batch).__name__))
        size = int(shape[0])
        if self.batch_size is not None and size != int(self.batch_size):
            raise BatchSizeMismatch(
                f"{self.name}: model {self.model_path} has a static batch size of {self.batch_size} but was "
                f"given a batch of {size}; pad the batch to {self.batch_size} (run_padded, which the runner "
                f"uses, does this) or convert/export a model for batch size {size}")
        if self.input_dtype is not None and np.dtype(batch.dtype) != np.dtype(self.input_dtype):
            raise BackendError(f"{self.name}: model {self.model_path} takes {np.dtype(self.input_dtype).name} "
                               f"input but the batch is {np.dtype(batch.dtype).name}")
        return size

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc_info: Any) -> bool:
        self.close()
        return False


class OmBackend(Backend):
    """What every om backend shares: it runs an atc-built om on an Ascend NPU, whose records carry the
    NPU's device label and the om's precision."""

    model_kind = MODEL_OM
    device_kind = "npu"

    @classmethod
    def precision(cls, om_precision: str = DEFAULT_PRECISION_MODE) -> str:
        return "fp16" if om_precision == FORCE_FP16 else om_precision


def read_output_files(dets_path: str, labels_path: str, batch_size: int, origin: str) -> Outputs:
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
