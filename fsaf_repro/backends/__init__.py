"""Inference backends: one small contract, registered by name, imported lazily.

A backend turns a batch of network inputs (float32 NCHW, or uint8 for uint8-input models) into the
detector's outputs in network-input pixels:

    {"dets": float32 [B, 100, 5] (x1, y1, x2, y2, score), "labels": int64 [B, 100]}

Rows with score 0 are padding. Backends whose model emits raw boxes/scores (the `raw` ONNX flavour)
run the host NMS themselves, so every backend returns the same two arrays.

Registration is by dotted path so that importing this package never imports a runtime: an absent
runtime (aclruntime, TensorRT, CANN) shows up as `availability().ok == False` with a reason. A backend
defined outside this package (a plugin, a test's dummy) is registered the same way with an absolute
"package.module:Class" path, or as the class itself. What a backend takes and how its records are
labelled are facts of its class (base.Backend: model_kind, takes_threads, device_label, precision),
asked through `get_backend_class` / `find_backend_class` without loading a model.
"""
import importlib
from typing import List, Optional, Type, Union

from ..errors import BackendUnavailable
from .base import Availability, Backend  # noqa: F401  (re-export the contract)

# name -> "module:Class" (module relative to this package, or an absolute dotted path), or the class
_REGISTRY = {}


def register_backend(name: str, target: Union[str, Type[Backend]]) -> None:
    """Register a backend under `name`: "module:Class" (a module of this package, or an absolute
    "package.module:Class"; imported on first use) or the Backend subclass itself."""
    _REGISTRY[name] = target


def unregister_backend(name: str) -> None:
    """Forget backend `name` (a plugin's or a test's registration)."""
    _REGISTRY.pop(name, None)


def backend_names() -> List[str]:
    return sorted(_REGISTRY)


def get_backend_class(name: str) -> Type[Backend]:
    """Import and return the backend class registered as `name`."""
    if name not in _REGISTRY:
        raise BackendUnavailable(
            "unknown backend {!r}; known backends: {}".format(name, ", ".join(backend_names())))
    target = _REGISTRY[name]
    if not isinstance(target, str):
        return target
    module_name, class_name = target.split(":")
    if "." in module_name:
        module = importlib.import_module(module_name)
    else:
        module = importlib.import_module("." + module_name, __name__)
    return getattr(module, class_name)


def find_backend_class(name: str) -> Optional[Type[Backend]]:
    """The class registered as `name`, or None when no backend has that name or its module fails to
    import (a record of another tool, a broken plugin): for callers that only want its facts."""
    if name not in _REGISTRY:
        return None
    try:
        return get_backend_class(name)
    except ImportError:
        return None


def backend_availability(name: str) -> Availability:
    """Availability of backend `name` on this host; never raises for an absent runtime."""
    try:
        cls = get_backend_class(name)
    except ImportError as exc:  # the backend module itself failed to import
        return Availability(False, f"backend module failed to import: {exc}")
    return cls.availability()


def create_backend(name: str, **options) -> Backend:
    """Instantiate backend `name`; raises BackendUnavailable with the reason if it cannot run here, and
    BackendOptionError for an option the backend does not declare (a misspelt name is not ignored) or a
    value outside the option's declared kind (Backend.declared_options)."""
    cls = get_backend_class(name)
    options = cls.check_options(options)
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
