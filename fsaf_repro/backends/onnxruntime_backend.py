"""ONNX Runtime backends: CPU, and the CUDA / TensorRT execution providers when present.

Options (all backends here):
- threads: intra-op threads (default: ONNX Runtime's choice, one per physical core);
- inter_op_threads: inter-op threads (used only with execution_mode="parallel");
- graph_optimization: "disable", "basic", "extended" or "all" (default "all");
- execution_mode: "sequential" (default) or "parallel";
- provider_options: dict of options for the accelerator provider (e.g. {"device_id": 0});
- allow_spinning: False stops idle intra-op threads from spin-waiting after a run (they otherwise
  keep cores busy for a while, which slows whatever else runs on the host: a loader, another runtime).

The model's outputs decide the post-processing: `dets`/`labels` (onnx-nms flavour) are returned as
they are; `boxes`/`scores` (raw flavour) go through the host NMS (fsaf_repro.decode.host_nms). A model
with a fixed batch dimension has a static batch size; `run_padded` pads the last batch to it.
"""
import importlib

import numpy as np

from .base import Availability, Backend, normalise_outputs
from ..errors import BackendError
from ..options import BOOLEAN, THREADS, Choice, OfType

GRAPH_OPTIMISATION = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                      "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(float16)": np.float16}


def _import_ort():
    return importlib.import_module("onnxruntime")


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPU execution provider."""

    name = "onnxruntime"
    model_kind = "onnx-nms"  # reads the raw flavour too (host NMS); reproduce gives it onnx-nms
    takes_threads = True
    provider = "CPUExecutionProvider"
    install_hint = "pip install onnxruntime (the project's `ort` extra)"
    option_kinds = {"inter_op_threads": THREADS, "graph_optimization": Choice(GRAPH_OPTIMISATION),
                    "execution_mode": Choice(("sequential", "parallel")),
                    "provider_options": OfType(dict, "a mapping of provider options"), "allow_spinning": BOOLEAN}

    @classmethod
    def availability(cls):
        try:
            ort = _import_ort()
        except ImportError as exc:
            return Availability(False, f"onnxruntime is not installed ({exc}); {cls.install_hint}")
        available = ort.get_available_providers()
        if cls.provider not in available:
            return Availability(False, "onnxruntime {} has no {} (available: {}); {}".format(
                ort.__version__, cls.provider, ", ".join(available), cls.install_hint))
        return Availability(True, "")

    def _session_options(self, ort):
        so = ort.SessionOptions()
        level = self.options.get("graph_optimization", "all")
        if level not in GRAPH_OPTIMISATION:
            raise BackendError("{}: graph_optimization must be one of {}, got {!r}".format(
                self.name, ", ".join(GRAPH_OPTIMISATION), level))
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMISATION[level])
        mode = self.options.get("execution_mode", "sequential")
        if mode not in ("sequential", "parallel"):
            raise BackendError(f"{self.name}: execution_mode must be sequential or parallel, got {mode!r}")
        so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if mode == "parallel"
                             else ort.ExecutionMode.ORT_SEQUENTIAL)
        if self.options.get("threads"):
            so.intra_op_num_threads = int(self.options["threads"])
        if self.options.get("inter_op_threads"):
            so.inter_op_num_threads = int(self.options["inter_op_threads"])
        if self.options.get("allow_spinning") is not None:
            value = "1" if self.options["allow_spinning"] else "0"
            so.add_session_config_entry("session.intra_op.allow_spinning", value)
            so.add_session_config_entry("session.inter_op.allow_spinning", value)
        return so

    def _providers(self):
        if self.provider == "CPUExecutionProvider":
            return ["CPUExecutionProvider"]
        return [(self.provider, dict(self.options.get("provider_options") or {})), "CPUExecutionProvider"]

    def load(self, model_path):
        from ..export import read_sidecar
        ort = _import_ort()
        model_path = str(model_path)
        self.model_path = model_path
        try:
            sidecar = read_sidecar(model_path)
        except Exception as exc:  # a malformed sidecar is reported as a backend load error
            raise BackendError(f"{self.name}: {exc}") from exc
        if sidecar and sidecar.get("flavour") == "ascend-nms":
            raise BackendError(f"{self.name}: {model_path} is the ascend-nms flavour, whose BatchMultiClassNMS node "
                               "only atc understands; export the onnx-nms or raw flavour for ONNX Runtime")
        try:
            self.session = ort.InferenceSession(model_path, sess_options=self._session_options(ort),
                                                providers=self._providers())
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise BackendError("{}: could not load {}: {}: {}".format(
                self.name, model_path, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")) \
                from exc
        used = self.session.get_providers()
        if self.provider not in used:
            # ONNX Runtime silently falls back to the CPU when a provider fails to initialise.
            raise BackendError("{}: {} failed to initialise for {} (session providers: {}); check the "
                               "accelerator's libraries".format(self.name, self.provider, model_path,
                                                               ", ".join(used)))
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        first = inputs[0]
        self.input_dtype = _ORT_TYPES.get(first.type)
        if self.input_dtype is None:
            raise BackendError(f"{self.name}: {model_path} input {first.name!r} has unsupported type {first.type}")
        dim0 = first.shape[0] if first.shape else None
        self.batch_size = int(dim0) if isinstance(dim0, int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        names = set(self.output_names)
        if {"dets", "labels"} <= names:
            self.flavour, self.fetch = "nms", ["dets", "labels"]
        elif {"boxes", "scores"} <= names:
            self.flavour, self.fetch = "raw", ["boxes", "scores"]
        else:
            raise BackendError("{}: {} has outputs {}; expected dets/labels (onnx-nms flavour) or "
                               "boxes/scores (raw flavour)".format(
                                   self.name, model_path, ", ".join(self.output_names)))
        return self

    def run(self, batch, image_hw=None):
        size = self.check_batch(batch)
        feed = {self.input_names[0]: np.ascontiguousarray(batch)}
        if len(self.input_names) > 1:
            if image_hw is None:
                raise BackendError(f"{self.name}: {self.model_path} also takes {self.input_names[1]!r} (the resized "
                                   "image height, width of each canvas: a uint8-input model); pass image_hw")
            hw = np.asarray(image_hw, dtype=np.int32).reshape(size, 2)
            feed[self.input_names[1]] = np.ascontiguousarray(hw)
        try:
            first, second = self.session.run(self.fetch, feed)
        except Exception as exc:  # onnxruntime's own exception types
            raise BackendError(f"{self.name}: running {self.model_path} on a batch of {size} failed: {exc}") from exc
        if self.flavour == "raw":
            from ..decode import host_nms
            first, second = host_nms(first, second)
        return normalise_outputs(first, second, size, self.model_path)

    def close(self):
        self.session = None


class OnnxRuntimeCudaBackend(OnnxRuntimeBackend):
    name = "onnxruntime-cuda"
    device_kind = "gpu"
    provider = "CUDAExecutionProvider"
    install_hint = "install onnxruntime-gpu (instead of onnxruntime) on a host with an NVIDIA GPU and CUDA"


class OnnxRuntimeTensorrtBackend(OnnxRuntimeBackend):
    name = "onnxruntime-tensorrt"
    device_kind = "gpu"
    provider = "TensorrtExecutionProvider"
    install_hint = ("install onnxruntime-gpu built with TensorRT and the TensorRT libraries on a host with "
                    "an NVIDIA GPU")
