"""Inference backends: one small contract, registered by name, imported lazily.

A backend turns a batch of network inputs (float32 NCHW, or uint8 for uint8-input models) into the
detector's outputs in network-input pixels:

    {"dets": float32 [B, 100, 5] (x1, y1, x2, y2, score), "labels": int64 [B, 100]}

Rows with score 0 are padding. Backends whose model emits raw boxes/scores (the `raw` ONNX flavour)
run the host NMS themselves, so every backend returns the same two arrays.

Registration is by dotted path so that importing this package never imports a runtime: an absent
runtime (aclruntime, TensorRT, CANN) shows up as `availability().ok == False` with a reason.
"""
import importlib

from ..errors import BackendUnavailable
from .base import Availability, Backend  # noqa: F401  (re-export the contract)

# name -> "module:Class" (module relative to this package)
_REGISTRY = {}


def register_backend(name, target):
    """Register a backend class under `name`, given as "module:Class" (relative to this package)."""
    _REGISTRY[name] = target


def backend_names():
    return sorted(_REGISTRY)


def get_backend_class(name):
    """Import and return the backend class registered as `name`."""
    if name not in _REGISTRY:
        raise BackendUnavailable(
            "unknown backend {!r}; known backends: {}".format(name, ", ".join(backend_names())))
    module_name, class_name = _REGISTRY[name].split(":")
    module = importlib.import_module("." + module_name, __name__)
    return getattr(module, class_name)


def backend_availability(name):
    """Availability of backend `name` on this host; never raises for an absent runtime."""
    try:
        cls = get_backend_class(name)
    except ImportError as exc:  # the backend module itself failed to import
        return Availability(False, f"backend module failed to import: {exc}")
    return cls.availability()


def create_backend(name, **options):
    """Instantiate backend `name`; raises BackendUnavailable with the reason if it cannot run here."""
    cls = get_backend_class(name)
    avail = cls.availability()
    if not avail.ok:
        raise BackendUnavailable(f"backend {name!r} unavailable: {avail.reason}")
    return cls(**options)


# The registered backends (module:Class, imported on first use).
register_backend("null", "null:NullBackend")
register_backend("torch", "torch_backend:TorchBackend")
register_backend("onnxruntime", "onnxruntime_backend:OnnxRuntimeBackend")
register_backend("onnxruntime-cuda", "onnxruntime_backend:OnnxRuntimeCudaBackend")
register_backend("onnxruntime-tensorrt", "onnxruntime_backend:OnnxRuntimeTensorrtBackend")
register_backend("onnxruntime-cann", "cann_ep:OnnxRuntimeCannBackend")
register_backend("fp16-emulated", "fp16_emulation:Fp16EmulatedBackend")  # CPU stand-in, not an NPU
register_backend("aclruntime", "aclruntime_backend:AclRuntimeBackend")
register_backend("ais_bench", "ais_bench_cli:AisBenchCliBackend")
register_backend("benchmark", "benchmark_tool:BenchmarkToolBackend")
