"""The `fp16-emulated` backend: a CPU stand-in for the om that atc builds with --precision_mode=force_fp16.

It is an EMULATION ON THE CPU, not an NPU measurement. Its records say so: device
"cpu (fp16 emulation, not an NPU)", precision "fp16-emulated (cpu)" (`RECORD_DEVICE`,
`RECORD_PRECISION`); the class's `record_labels` / `check_record` (asked by fsaf_repro.perf for every
record of this backend) keep it out of the NPU columns and gates. What it is for: seeing, before an
NPU is at hand, how far fp16 inference moves the detections of a checkpoint from the fp32 torch path
(docs/fp16-emulation.md).

What it emulates, on the loaded checkpoint (the model file is the .pth, as for the `torch` backend):
- BatchNorm folded into the preceding convolution, as atc's conv+BN fusion does: with
  s = gamma / sqrt(running_var + eps), w' = w * s (per output channel), b' = beta - running_mean * s
  (plus s * b for a conv with bias). The folding is computed in fp32 on the checkpoint's fp32 values,
  and only the folded weights are rounded to fp16 (the assumption that atc fuses before it casts).
- fp16 weights and biases: every convolution's folded weight and bias rounded to fp16.
- fp16 activations at every layer boundary: each convolution's input and output, each ReLU and
  max-pool output, each residual and FPN top-down sum is a value fp16 can hold (round to nearest
  even, IEEE overflow to inf, subnormals kept). The network input is rounded at the first layer, as
  the om's input cast does.
- fp32 accumulation inside convolutions, the cube unit's way: fp16 inputs x fp16 weights, products
  (exact in fp32: 11 x 11 significand bits) summed in fp32 together with the bias, one rounding of
  the sum to fp16. Element-wise operations (sums, sigmoid) are computed in fp32 and rounded once:
  for +, -, x, / on fp16 operands that is the correctly rounded fp16 result (fp32's 24 bits are at
  least 2 x 11 + 2, so the double rounding is innocuous).
- the `ascend-nms` graph's post-processing in fp16: sigmoid scores, per-level top-k by the best
  class score, TBLR decode against fp16 anchors with each multiply/add/clamp rounded to fp16; the
  boxes [B, N, 4] and scores [B, N, C] handed to NMS are fp16 values, and the NMS outputs (boxes,
  scores) are rounded to fp16 before `dets` is cast to float32, as BatchMultiClassNMS's fp16
  outputs are.

What it cannot emulate (the figures are a stand-in, not a prediction of the om's numbers):
- the NPU's real kernels: their summation order inside a convolution (blocked over cube fractals),
  where exactly partial sums are rounded, and any fp16 intermediate a kernel keeps;
- AIPP (colour conversion / normalisation on the NPU): the input here is the float32 .bin tensor;
- fused operators: a convolution fused with a residual add (one rounding instead of two), or any
  other fusion and layout change atc applies; ReLU fusions are exact either way;
- the NPU's rounding and special-value modes (saturation instead of inf on overflow, flushing of
  subnormals, its sigmoid/exp approximations); this emulation follows IEEE fp16 round-to-nearest-even;
- the NMS operator's own arithmetic: BatchMultiClassNMS computes IoU in fp16 on the NPU, here it is
  the host NMS (fsaf_repro.decode.multiclass_nms, fp32 arithmetic) on the fp16 inputs; the score
  threshold is compared in fp32; ties in top-k and NMS may be broken differently;
- speed: its fps measures fp32 CPU convolutions plus rounding, nothing about the NPU.
"""
import numpy as np

from .base import MODEL_CHECKPOINT, Availability, Backend, normalise_outputs
from ..convert import DEFAULT_PRECISION_MODE
from ..errors import BackendError, ResultsError
from ..torch_threads import set_intra_op_threads

BACKEND_NAME = "fp16-emulated"
RECORD_DEVICE = "cpu (fp16 emulation, not an NPU)"
RECORD_PRECISION = "fp16-emulated (cpu)"
# Device labels a caller may pass for a CPU measurement; the record gets RECORD_DEVICE instead.
CPU_DEVICE_LABELS = ("cpu", "host", RECORD_DEVICE)


# ----------------------------------------------------------------------------------------------
# Rounding

def round_fp16(tensor):
    """The fp16 value nearest each element (ties to even), kept as float32 for fp32 arithmetic."""
    return tensor.half().float()


def fold_batch_norms(model):
    """Fold every BatchNorm2d into the convolution before it and replace the BN by Identity.

    The pairs are found by name, as the model names them: `<prefix>.bnK` follows `<prefix>.convK`, and
    in a Sequential (the downsample branch) `<prefix>.N` follows `<prefix>.N-1`. A BN without its
    convolution is an error, never skipped. Returns the folded (conv name, bn name) pairs.
    """
    import torch
    modules = dict(model.named_modules())
    pairs = []
    for name, module in list(modules.items()):
        if not isinstance(module, torch.nn.BatchNorm2d):
            continue
        prefix, _, last = name.rpartition(".")
        if last.startswith("bn") and last[2:].isdigit():
            conv_name = (prefix + "." if prefix else "") + "conv" + last[2:]
        elif last.isdigit() and int(last) > 0:
            conv_name = (prefix + "." if prefix else "") + str(int(last) - 1)
        else:
            conv_name = None
        conv = modules.get(conv_name)
        if not isinstance(conv, torch.nn.Conv2d) or conv.out_channels != module.num_features:
            raise BackendError(f"fp16 emulation: cannot fold BatchNorm {name}: no convolution {conv_name} with "
                               f"{module.num_features} output channels before it")
        with torch.no_grad():
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            bias = module.bias - module.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = torch.nn.Parameter(bias.clone())
        parent = modules[prefix] if prefix else model
        setattr(parent, last, torch.nn.Identity())
        pairs.append((conv_name, name))
    return pairs


class _OverflowLog:
    """Names of the layers whose fp16 output overflowed (inf) since the last reset."""

    def __init__(self):
        self.layers = []

    def note(self, name, tensor):
        import torch
        if bool(torch.isinf(tensor).any()) and name not in self.layers:
            self.layers.append(name)


def emulate_fp16(model, rounding=True):
    """Turn `model` (in place) into its fp16 emulation; returns an _OverflowLog.

    BN is folded (fold_batch_norms), conv weights and biases are rounded to fp16, and hooks round
    each convolution's input and output and each ReLU / max-pool output to fp16; the convolution
    itself runs in fp32 (the cube unit's fp32 accumulation). `rounding=False` folds BN only (for
    checking that folding alone keeps the fp32 results). A module whose computation these hooks do
    not cover (anything but Conv2d, ReLU, MaxPool2d, Identity and containers) is refused.
    """
    fold_batch_norms(model)
    overflow = _OverflowLog()
    _refuse_uncovered_layers(model)
    if not rounding:
        return overflow
    _round_conv_parameters(model)
    _add_rounding_hooks(model, overflow)
    return overflow


def _refuse_uncovered_layers(model):
    """BackendError for the first leaf module that is none of the layers the rounding hooks cover."""
    import torch
    covered = (torch.nn.Conv2d, torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.Identity)
    for name, module in model.named_modules():
        if list(module.children()):
            continue
        if not isinstance(module, covered):
            raise BackendError(f"fp16 emulation: layer {name} ({type(module).__name__}) has no fp16 emulation")


def _round_conv_parameters(model):
    """Every convolution's weight and bias rounded to fp16, in place."""
    import torch
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.copy_(round_fp16(module.weight))
                if module.bias is not None:
                    module.bias.copy_(round_fp16(module.bias))


def _add_rounding_hooks(model, overflow):
    """Hooks rounding each convolution's input and each convolution, ReLU and max-pool output to fp16;
    an output that overflows is noted in `overflow` under its layer's name."""
    import torch

    def round_input(module, inputs):
        return tuple(round_fp16(x) for x in inputs)

    def round_output_of(name):
        def hook(module, inputs, output):
            rounded = round_fp16(output)
            overflow.note(name, rounded)
            return rounded
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_pre_hook(round_input)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ReLU, torch.nn.MaxPool2d)):
            module.register_forward_hook(round_output_of(name))


def _fp16_fpn_forward(neck, rounding):
    """FPN.forward with the top-down sums rounded to fp16 (each sum feeds the next one unrounded
    otherwise, since an addition is no module a hook can see); the rest is the neck's own code."""
    from torch.nn import functional as F
    rnd = round_fp16 if rounding else (lambda t: t)

    def forward(inputs):
        laterals = [conv(x) for conv, x in zip(neck.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            finer_hw = (int(laterals[i - 1].shape[2]), int(laterals[i - 1].shape[3]))
            laterals[i - 1] = rnd(laterals[i - 1] + F.interpolate(laterals[i], size=finer_hw, mode="nearest"))
        outs = [neck.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        p6 = neck.fpn_convs[len(laterals)](inputs[-1])
        p7 = neck.fpn_convs[len(laterals) + 1](p6)
        return outs + [p6, p7]
    return forward


def emulated_detector(detector, rounding=True):
    """The FSAFDetector `detector` (modified in place) as its fp16 emulation; returns (model, overflow log)."""
    overflow = emulate_fp16(detector, rounding)
    detector.neck.forward = _fp16_fpn_forward(detector.neck, rounding)
    return detector, overflow


# ----------------------------------------------------------------------------------------------
# The ascend-nms graph's post-processing in fp16

def fp16_candidates(cls_scores, bbox_preds, clip_hw):
    """fsaf_repro.decode.select_candidates with every step in fp16: (boxes [B, N, 4], scores [B, N, C])
    holding fp16 values (as float32 tensors), the inputs of the graph's BatchMultiClassNMS."""
    import torch
    from ..decode import level_anchors
    from ..spec import model_constants
    constants = model_constants()
    nms_pre = int(constants["nms_pre"])
    normalizer = float(constants["bbox_normalizer"])
    max_h, max_w = float(clip_hw[0]), float(clip_hw[1])
    level_boxes = []
    level_scores = []
    for cls_score, bbox_pred, stride in zip(cls_scores, bbox_preds, constants["strides"]):
        batch, num_classes = int(cls_score.shape[0]), int(cls_score.shape[1])
        feat_h, feat_w = int(cls_score.shape[2]), int(cls_score.shape[3])
        scores = round_fp16(round_fp16(cls_score).permute(0, 2, 3, 1).reshape(batch, -1, num_classes).sigmoid())
        distances = round_fp16(bbox_pred).permute(0, 2, 3, 1).reshape(batch, -1, 4)
        anchors = round_fp16(level_anchors(feat_h, feat_w, stride))
        if feat_h * feat_w > nms_pre:
            _, top_index = scores.max(dim=2)[0].topk(nms_pre, dim=1)
            scores = torch.gather(scores, 1, top_index.unsqueeze(-1).expand(batch, nms_pre, num_classes))
            distances = torch.gather(distances, 1, top_index.unsqueeze(-1).expand(batch, nms_pre, 4))
            anchors = anchors[top_index]
        else:
            anchors = anchors.unsqueeze(0).expand(batch, -1, -1)
        # tblr_decode's operations in its order, each result rounded to fp16
        scaled = round_fp16(distances * normalizer)
        center_x = round_fp16(round_fp16(anchors[..., 0] + anchors[..., 2]) / 2)
        center_y = round_fp16(round_fp16(anchors[..., 1] + anchors[..., 3]) / 2)
        width = round_fp16(anchors[..., 2] - anchors[..., 0])
        height = round_fp16(anchors[..., 3] - anchors[..., 1])
        top = round_fp16(height * scaled[..., 0])
        bottom = round_fp16(height * scaled[..., 1])
        left = round_fp16(width * scaled[..., 2])
        right = round_fp16(width * scaled[..., 3])
        # the clamp bounds are fp16 too (the canvas sizes are integers below 2048: exact)
        x1 = round_fp16(center_x - left).clamp(min=0, max=max_w)
        y1 = round_fp16(center_y - top).clamp(min=0, max=max_h)
        x2 = round_fp16(center_x + right).clamp(min=0, max=max_w)
        y2 = round_fp16(center_y + bottom).clamp(min=0, max=max_h)
        level_boxes.append(round_fp16(torch.stack([x1, y1, x2, y2], dim=-1)))
        level_scores.append(scores)
    return torch.cat(level_boxes, dim=1), torch.cat(level_scores, dim=1)


def fp16_detect(cls_scores, bbox_preds, clip_hw):
    """Head outputs -> padded (dets [B, 100, 5], labels [B, 100]) the way the ascend-nms graph computes
    them in fp16: fp16 candidates, host NMS on those values, fp16 outputs cast to float32."""
    import torch
    from ..decode import host_nms
    from ..spec import model_constants
    constants = model_constants()
    with torch.no_grad():
        boxes, scores = fp16_candidates(cls_scores, bbox_preds, clip_hw)
    dets, labels = host_nms(boxes.numpy(), scores.numpy(), score_threshold=constants["score_threshold"],
                            iou_threshold=constants["iou_threshold"],
                            max_num=constants["ascend_max_total_size"])
    dets = dets.astype(np.float16).astype(np.float32)  # BatchMultiClassNMS emits fp16 boxes and scores
    return dets, labels


# ----------------------------------------------------------------------------------------------
# The backend

class Fp16EmulatedBackend(Backend):
    """Options: threads (torch intra-op threads), trusted (checkpoint loading). Model: the checkpoint."""

    name = BACKEND_NAME
    model_kind = MODEL_CHECKPOINT
    takes_threads = True

    # Record labels: an emulated figure never passes for an NPU one.

    @classmethod
    def device_label(cls, soc_version=None):
        return RECORD_DEVICE

    @classmethod
    def precision(cls, om_precision=DEFAULT_PRECISION_MODE):
        return RECORD_PRECISION

    @classmethod
    def record_labels(cls, device, precision):
        """RECORD_DEVICE and RECORD_PRECISION, whatever the caller passed; a device label other than a
        CPU one (310P, 310, ...) is refused, since the figure was measured on this CPU."""
        if str(device) not in CPU_DEVICE_LABELS:
            raise ResultsError(
                f"backend {cls.name} is an fp16 emulation on the CPU: its records are labelled device "
                f"{RECORD_DEVICE!r}, not {device!r} (an emulated figure is not an NPU measurement); measure "
                "without --device or with --device cpu")
        return RECORD_DEVICE, RECORD_PRECISION

    @classmethod
    def check_record(cls, record, origin):
        """Refuse a record of this backend that does not carry the emulation's labels."""
        if record.get("device") != RECORD_DEVICE or record.get("precision") != RECORD_PRECISION:
            raise ResultsError(
                "{}: a record of backend {} is labelled device {!r}, precision {!r}; an fp16 emulation on the "
                "CPU must be labelled device {!r}, precision {!r} (it is not an NPU measurement)".format(
                    origin, record.get("backend"), record.get("device"), record.get("precision"),
                    RECORD_DEVICE, RECORD_PRECISION))

    @classmethod
    def availability(cls):
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return Availability(False, f"PyTorch is not installed ({exc}); install torch (README): the fp16 "
                                       "emulation runs the checkpoint in torch on the CPU")
        return Availability(True, "")

    def load(self, model_path):
        import torch
        from ..checkpoint import load_detector
        model_path = str(model_path)
        if model_path.lower().endswith((".onnx", ".om")):
            raise BackendError(f"{self.name}: {model_path} is an exported model; the fp16 emulation runs the "
                               "checkpoint (.pth) it was exported from")
        threads = self.options.get("threads")
        # the count in effect, for records: torch 1.8.0 may keep a lower one (torch_threads)
        self.intra_op_threads = set_intra_op_threads(int(threads)) if threads else torch.get_num_threads()
        detector = load_detector(model_path, trusted=bool(self.options.get("trusted", False)))
        self.model, self.overflow = emulated_detector(detector)
        self.model_path = model_path
        self.batch_size = None  # eager PyTorch takes any batch size
        self.input_dtype = np.float32
        self.overflowed_layers = []
        return self

    def run(self, batch, image_hw=None):
        import torch
        if np.dtype(batch.dtype) == np.uint8:
            raise BackendError(f"{self.name}: takes the normalised float32 input; uint8 input is for models exported "
                               "with normalisation in the graph")
        size = self.check_batch(batch)
        self.overflow.layers = []
        x = torch.from_numpy(np.ascontiguousarray(batch))
        with torch.no_grad():
            cls_scores, bbox_preds = self.model(x)
        # layers whose fp16 output overflowed to inf in this batch (fp32 would not have): for records
        self.overflowed_layers = list(self.overflow.layers)
        dets, labels = fp16_detect(cls_scores, bbox_preds, (int(batch.shape[2]), int(batch.shape[3])))
        return normalise_outputs(dets, labels, size, self.model_path)

    def close(self):
        self.model = None
