"""The `aclruntime` backend: an .om run in-process through ais_bench's Python `InferSession`.

`from ais_bench.infer.interface import InferSession; s = InferSession(device_id, om); s.infer([x])`
(the ais_bench README, Ascend/tools repository, ais-bench_workload/tool/ais_bench). The om's batch
size comes from its conversion sidecar (`<om>.json`, written by `fsaf-repro convert`) or, without
one, from the session's input shape.
"""
import importlib

import numpy as np

from .base import Availability, OmBackend, normalise_outputs
from ..errors import BackendError, ToolError
from ..options import NON_NEGATIVE_INT

INSTALL_HINT = ("install the aclruntime and ais_bench wheels (Ascend/tools repository, "
                "ais-bench_workload/tool/ais_bench) on a host with an Ascend NPU and "
                "`source /usr/local/Ascend/ascend-toolkit/set_env.sh`")


def _import_interface():
    return importlib.import_module("ais_bench.infer.interface")


class AclRuntimeBackend(OmBackend):
    """Options: device_id (default 0)."""

    name = "aclruntime"
    device_option = "device_id"
    option_kinds = {"device_id": NON_NEGATIVE_INT}

    @classmethod
    def availability(cls):
        try:
            interface = _import_interface()
        except ImportError as exc:
            return Availability(False, f"ais_bench's InferSession is not importable ({exc}); {INSTALL_HINT}")
        except Exception as exc:  # the extension module can fail to load without the CANN libraries
            return Availability(False, f"importing ais_bench.infer.interface failed ({type(exc).__name__}: {exc}); "
                                       f"{INSTALL_HINT}")
        if not hasattr(interface, "InferSession"):
            return Availability(False, "ais_bench.infer.interface has no InferSession; " + INSTALL_HINT)
        return Availability(True, "")

    def load(self, model_path):
        from ..convert import read_om_sidecar
        model_path = str(model_path)
        self.model_path = model_path
        try:
            sidecar = read_om_sidecar(model_path)
        except ToolError as exc:
            raise BackendError(f"aclruntime: {exc}") from exc
        try:
            self.session = _import_interface().InferSession(int(self.options.get("device_id", 0)), model_path)
        except Exception as exc:  # aclruntime raises RuntimeError or its own types
            raise BackendError(f"aclruntime: could not load {model_path}: {type(exc).__name__}: {exc}") from exc
        inputs = self.session.get_inputs()
        session_shape = list(getattr(inputs[0], "shape", []) or [])
        if sidecar is not None:
            self.batch_size = int(sidecar["batch_size"])
            self.out_nodes = sidecar.get("out_nodes") or ["dets", "labels"]
            if session_shape and int(session_shape[0]) != self.batch_size:
                raise BackendError(f"aclruntime: {model_path} sidecar says batch size {self.batch_size} but the om's "
                                   f"input is {session_shape}")
        else:
            self.out_nodes = ["dets", "labels"]
            self.batch_size = int(session_shape[0]) if session_shape else None
        self.input_dtype = None  # the om decides; .bin-equivalent arrays are passed as they are
        return self

    def run(self, batch, image_hw=None):
        size = self.check_batch(batch)
        arrays = [np.ascontiguousarray(batch)]
        if image_hw is not None:
            arrays.append(np.ascontiguousarray(np.asarray(image_hw, dtype=np.int32).reshape(size, 2)))
        try:
            outputs = self.session.infer(arrays)
        except Exception as exc:  # aclruntime's own error types
            raise BackendError(f"aclruntime: inference of {self.model_path} on a batch of {size} failed: "
                               f"{exc}") from exc
        if len(outputs) < 2:
            raise BackendError(f"aclruntime: {self.model_path} returned {len(outputs)} outputs; expected dets and "
                               "labels")
        by_name = dict(zip(self.out_nodes, outputs))
        if "dets" not in by_name or "labels" not in by_name:
            by_name = {"dets": outputs[0], "labels": outputs[1]}
        return normalise_outputs(by_name["dets"], by_name["labels"], size, self.model_path)

    def summary(self):
        """ais_bench's own timing summary (its method is spelled `sumary`)."""
        method = getattr(self.session, "sumary", None) or getattr(self.session, "summary", None)
        return method() if method else None

    def close(self):
        session = getattr(self, "session", None)
        if session is not None and hasattr(session, "free_resource"):
            session.free_resource()
        self.session = None
