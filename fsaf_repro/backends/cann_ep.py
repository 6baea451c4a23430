"""ONNX Runtime with the CANN execution provider (the community `onnxruntime-cann` build).

Runs the onnx-nms or raw flavour on an Ascend NPU through ONNX Runtime instead of an atc-built om.
provider_options are passed to the CANN provider (e.g. {"device_id": 0, "npu_mem_limit": ...}).
"""
from .onnxruntime_backend import OnnxRuntimeBackend
from ..options import NON_NEGATIVE_INT


class OnnxRuntimeCannBackend(OnnxRuntimeBackend):
    name = "onnxruntime-cann"
    device_kind = "npu"  # records labelled by the soc (310P, 310), like the om backends'
    provider = "CANNExecutionProvider"
    device_option = "device_id"
    option_kinds = dict(OnnxRuntimeBackend.option_kinds, device_id=NON_NEGATIVE_INT)
    install_hint = ("install onnxruntime-cann (PyPI, instead of onnxruntime) on a host with an Ascend NPU, "
                    "the CANN toolkit and `source /usr/local/Ascend/ascend-toolkit/set_env.sh`")

    def _providers(self):
        options = {"device_id": int(self.options.get("device_id", 0))}
        options.update(self.options.get("provider_options") or {})
        return [(self.provider, options), "CPUExecutionProvider"]
