"""The `torch` backend: the reference path (eager PyTorch detector + fsaf_repro.decode.detect)."""
import numpy as np

from .base import MODEL_CHECKPOINT, Availability, Backend, normalise_outputs
from ..errors import BackendError
from ..options import TEXT
from ..torch_threads import set_intra_op_threads


class TorchBackend(Backend):
    """Options: threads (torch intra-op threads), device ("cpu" or "cuda"), trusted (checkpoint loading)."""

    name = "torch"
    model_kind = MODEL_CHECKPOINT
    takes_threads = True
    option_kinds = {"device": TEXT}  # "cpu", "cuda", "cuda:1"

    @classmethod
    def availability(cls):
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return Availability(False, f"PyTorch is not installed ({exc}); install torch (README)")
        return Availability(True, "")

    def load(self, model_path):
        import torch
        from ..checkpoint import load_detector
        device = self.options.get("device", "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"torch backend: device {device} requested but torch.cuda is not available")
        threads = self.options.get("threads")
        if threads:
            # the count in effect, for records: torch 1.8.0 may keep a lower one (torch_threads)
            self.intra_op_threads = set_intra_op_threads(int(threads))
        else:
            self.intra_op_threads = torch.get_num_threads()
        self.device = torch.device(device)
        self.model = load_detector(str(model_path), trusted=bool(self.options.get("trusted", False)))
        self.model.to(self.device)
        self.model_path = str(model_path)
        self.batch_size = None  # eager PyTorch takes any batch size
        self.input_dtype = np.float32
        return self

    def run(self, batch, image_hw=None):
        import torch
        from ..decode import detect
        if np.dtype(batch.dtype) == np.uint8:
            raise BackendError("torch backend: takes the normalised float32 input; uint8 input is for models "
                               "exported with normalisation in the graph (onnxruntime, om)")
        size = self.check_batch(batch)
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.no_grad():
            cls_scores, bbox_preds = self.model(x)
            if self.device.type != "cpu":
                cls_scores = [c.cpu() for c in cls_scores]
                bbox_preds = [b.cpu() for b in bbox_preds]
        dets, labels = detect(cls_scores, bbox_preds, (int(batch.shape[2]), int(batch.shape[3])))
        return normalise_outputs(dets, labels, size, self.model_path)

    def close(self):
        self.model = None
