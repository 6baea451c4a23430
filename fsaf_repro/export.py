"""Recipe step 3.1, "pth -> onnx", without mmcv/mmdetection: three NMS flavours at opset 11.

- `onnx-nms`: standard ONNX `NonMaxSuppression` per class (max 200 per class, IoU 0.5, score 0.05),
  then the top 100 (box, class) pairs; runs in ONNX Runtime.
- `ascend-nms`: one `BatchMultiClassNMS` custom node fed with fp16 boxes [B, N, 1, 4] and scores
  [B, N, 80], the node the recipe's `fsaf.diff` patch emits and ATC maps onto the NPU's NMS.
- `raw`: no NMS in the graph: `boxes` [B, N, 4] and `scores` [B, N, 80] after the per-level top-k;
  the host runs `fsaf_repro.decode.multiclass_nms`, the torch path's own NMS.

`onnx-nms` and `ascend-nms` output `dets` [B, 100, 5] float32 (x1, y1, x2, y2, score in network-input
pixels; padded rows have score 0) and `labels` [B, 100] int64. Every .onnx gets a JSON sidecar
(`<file>.onnx.json`) saying how it was made. The TorchScript exporter is used: torch 1.8 has only
that one, current torch keeps it behind `dynamo=False`.
"""
import inspect
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .checkpoint import load_detector
from .decode import _greedy_nms_order, multiclass_nms, pad_detections, select_candidates
from .errors import ExportError
from .fileio import atomic_output, atomic_write_json, file_sha256, new_temp_file, remove_stale_scratch
from .jsonio import load_json
from .spec import input_constants, model_constants

FLAVOURS = ("onnx-nms", "ascend-nms", "raw")
INPUT_DTYPES = ("float32", "uint8")


# ----------------------------------------------------------------------------------------------
# NMS nodes: autograd Functions whose forward computes the real result (so tracing sees realistic
# tensors) and whose symbolic emits the ONNX node.

class OnnxNonMaxSuppression(torch.autograd.Function):
    """ONNX `NonMaxSuppression`: boxes [B, N, 4], scores [B, C, N] -> selected [K, 3] (batch, class, box)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        selected = []
        boxes_np = boxes.detach().cpu().numpy().astype(np.float32)
        scores_np = scores.detach().cpu().numpy().astype(np.float32)
        for b in range(boxes_np.shape[0]):
            for c in range(scores_np.shape[1]):
                candidates = np.nonzero(scores_np[b, c] > np.float32(score_threshold))[0]
                if candidates.size == 0:
                    continue
                keep = _greedy_nms_order(boxes_np[b, candidates], scores_np[b, c, candidates],
                                         np.float32(iou_threshold), max_output_boxes_per_class)
                for index in candidates[keep]:
                    selected.append((b, c, int(index)))
        if not selected:
            return torch.zeros((0, 3), dtype=torch.long)
        return torch.tensor(selected, dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        max_out = g.op("Constant", value_t=torch.tensor([max_output_boxes_per_class], dtype=torch.long))
        iou = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float))
        score = g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float))
        return g.op("NonMaxSuppression", boxes, scores, max_out, iou, score, center_point_box_i=0)


class AscendBatchMultiClassNMS(torch.autograd.Function):
    """The Ascend `BatchMultiClassNMS` custom node (4 outputs: boxes, scores, classes, valid count)."""

    @staticmethod
    def forward(ctx, boxes, scores, score_threshold, iou_threshold, max_size_per_class, max_total_size):
        # boxes [B, N, 1, 4] fp16, scores [B, N, C] fp16; computed in float32 for the trace only.
        out_boxes, out_scores, out_classes, out_num = [], [], [], []
        for image_boxes, image_scores in zip(boxes.float()[:, :, 0, :], scores.float()):
            dets, labels = multiclass_nms(image_boxes, image_scores, score_threshold, iou_threshold,
                                          max_total_size)
            out_num.append(len(dets))
            dets, labels = pad_detections(dets, labels, max_total_size)
            out_boxes.append(dets[:, :4])
            out_scores.append(dets[:, 4])
            out_classes.append(labels.astype(np.float32))
        return (torch.from_numpy(np.stack(out_boxes)).half(), torch.from_numpy(np.stack(out_scores)).half(),
                torch.from_numpy(np.stack(out_classes)).half(), torch.tensor(out_num, dtype=torch.int32))

    @staticmethod
    def symbolic(g, boxes, scores, score_threshold, iou_threshold, max_size_per_class, max_total_size):
        return g.op("BatchMultiClassNMS", boxes, scores,
                    score_threshold_f=float(score_threshold), iou_threshold_f=float(iou_threshold),
                    max_size_per_class_i=int(max_size_per_class), max_total_size_i=int(max_total_size),
                    outputs=4)


def onnx_nms_top_k(boxes: torch.Tensor, scores: torch.Tensor, max_output_boxes_per_class: int, iou_threshold: float,
                   score_threshold: float, max_per_img: int,
                   static_batch: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-class ONNX NMS, then the top `max_per_img` kept (box, class) pairs, zero-padded."""
    batch = int(boxes.shape[0]) if static_batch else boxes.shape[0]
    num_boxes = int(boxes.shape[1])
    num_classes = int(scores.shape[2])
    scores_cn = scores.permute(0, 2, 1)  # [B, C, N], the layout NonMaxSuppression wants
    selected = OnnxNonMaxSuppression.apply(boxes, scores_cn.contiguous(), max_output_boxes_per_class,
                                           iou_threshold, score_threshold)
    # Keep the scores of selected (batch, class, box) triples, zero elsewhere, then take the top k.
    flat_scores = scores_cn.reshape(-1)
    flat_index = (selected[:, 0] * num_classes + selected[:, 1]) * num_boxes + selected[:, 2]
    kept = torch.zeros_like(flat_scores).scatter(0, flat_index, flat_scores.gather(0, flat_index))
    kept = kept.reshape(batch, -1)
    top_k = min(max_per_img, num_classes * int(num_boxes))
    top_scores, top_index = kept.topk(top_k, dim=1)
    labels = top_index // num_boxes
    box_index = top_index - labels * num_boxes
    top_boxes = torch.gather(boxes, 1, box_index.unsqueeze(-1).expand(-1, -1, 4))
    valid = (top_scores > 0).to(top_boxes.dtype)
    dets = torch.cat([top_boxes * valid.unsqueeze(-1), top_scores.unsqueeze(-1)], dim=-1)
    if top_k < max_per_img:  # tiny inputs only: keep the documented [B, 100, *] shapes
        pad = max_per_img - top_k
        dets = torch.cat([dets, dets.new_zeros((batch, pad, 5))], dim=1)
        labels = torch.cat([labels, labels.new_zeros((batch, pad))], dim=1)
    return dets, labels


def ascend_nms(boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float, iou_threshold: float,
               max_size_per_class: int, max_total_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    nmsed_boxes, nmsed_scores, nmsed_classes, _ = AscendBatchMultiClassNMS.apply(
        boxes.half().unsqueeze(2), scores.half(), score_threshold, iou_threshold,
        max_size_per_class, max_total_size)
    dets = torch.cat([nmsed_boxes, nmsed_scores.unsqueeze(-1)], dim=-1).float()
    return dets, nmsed_classes.long()


class ExportableFSAF(torch.nn.Module):
    """Detector + in-graph post-processing of one flavour; optionally normalises uint8 input in-graph."""

    def __init__(self, detector, flavour, height, width, input_dtype="float32", static_batch=False):
        super().__init__()
        if flavour not in FLAVOURS:
            raise ExportError(f"unknown flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
        if input_dtype not in INPUT_DTYPES:
            raise ExportError(f"unknown input dtype {input_dtype!r}; choose one of {', '.join(INPUT_DTYPES)}")
        self.detector = detector
        self.flavour = flavour
        self.input_hw = (int(height), int(width))
        self.input_dtype = input_dtype
        self.static_batch = static_batch
        constants = input_constants()
        self.register_buffer("mean", torch.tensor(constants["mean_rgb"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(constants["std_rgb"], dtype=torch.float32).view(1, 3, 1, 1))

    def normalise_uint8(self, image, image_hw):
        """(x - mean) / std inside the valid region [0:h, 0:w], 0 in the padding: the recipe's
        float input exactly, computed from the uint8 canvas and each image's resized size."""
        x = (image.float() - self.mean) / self.std
        rows = torch.arange(self.input_hw[0], dtype=torch.int32).view(1, -1, 1)
        cols = torch.arange(self.input_hw[1], dtype=torch.int32).view(1, 1, -1)
        hw = image_hw.to(torch.int32)
        inside = (rows < hw[:, 0].view(-1, 1, 1)) & (cols < hw[:, 1].view(-1, 1, 1))
        return x * inside.unsqueeze(1).to(x.dtype)

    def forward(self, image, image_hw=None):
        if self.input_dtype == "uint8":
            image = self.normalise_uint8(image, image_hw)
        cls_scores, bbox_preds = self.detector(image)
        boxes, scores = select_candidates(cls_scores, bbox_preds, self.input_hw, static_batch=self.static_batch)
        constants = model_constants()
        if self.flavour == "raw":
            return boxes, scores
        if self.flavour == "onnx-nms":
            return onnx_nms_top_k(boxes, scores, constants["onnx_max_output_boxes_per_class"],
                                  constants["iou_threshold"], constants["score_threshold"],
                                  constants["max_per_img"], self.static_batch)
        return ascend_nms(boxes, scores, constants["score_threshold"], constants["iou_threshold"],
                          constants["ascend_max_size_per_class"], constants["ascend_max_total_size"])


def output_spec(flavour: str, batch_dim: Union[int, str], num_candidates: int) -> List[Dict[str, Any]]:
    constants = model_constants()
    if flavour == "raw":
        return [{"name": "boxes", "shape": [batch_dim, num_candidates, 4], "dtype": "float32"},
                {"name": "scores", "shape": [batch_dim, num_candidates, constants["num_classes"]],
                 "dtype": "float32"}]
    return [{"name": "dets", "shape": [batch_dim, constants["max_per_img"], 5], "dtype": "float32"},
            {"name": "labels", "shape": [batch_dim, constants["max_per_img"]], "dtype": "int64"}]


def num_candidates(height: int, width: int) -> int:
    """N of the raw flavour: sum over levels of min(nms_pre, H_l * W_l) for the conv-arithmetic sizes."""
    constants = model_constants()
    total = 0
    h, w = height, width
    # conv1 (s2, p3, k7) then max-pool (s2, p1, k3): each halves with ceil; then one s2 3x3 conv per level.
    sizes = []
    h, w = (h + 1) // 2, (w + 1) // 2
    h, w = (h + 1) // 2, (w + 1) // 2
    for _ in constants["strides"]:
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    for h, w in sizes:
        total += min(constants["nms_pre"], h * w)
    return total


def _torch_export(module, args, path, input_names, output_names, dynamic_axes, opset, custom_ops=False):
    kwargs = {
        "opset_version": opset,
        "input_names": input_names,
        "output_names": output_names,
        "dynamic_axes": dynamic_axes or None,
        "do_constant_folding": True,
    }
    parameters = inspect.signature(torch.onnx.export).parameters
    if "dynamo" in parameters:
        kwargs["dynamo"] = False
    if custom_ops and "enable_onnx_checker" in parameters:
        # torch 1.8 checks the proto before writing it and rejects the Ascend custom node; the
        # recipe's patch disables that checker the same way. Current torch checks after writing.
        kwargs["enable_onnx_checker"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, path, **kwargs)


def declare_output_shapes(path: str, outputs: List[Dict[str, Any]]) -> None:
    """Write the documented output shapes into the graph (older exporters leave them symbolic).

    Only dims the exporter left unknown or symbolic are set; a conflicting known dim is an error.
    """
    import onnx

    model = onnx.load(path)
    declared = {o["name"]: o["shape"] for o in outputs}
    changed = False
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        wanted = declared.get(value.name)
        if wanted is None:
            raise ExportError(f"exported graph has an undocumented output {value.name!r}")
        if len(dims) == 0:
            for _ in wanted:
                dims.add()
        if len(dims) != len(wanted):
            raise ExportError(f"exported output {value.name} has rank {len(dims)}, documented {wanted}")
        for dim, size in zip(dims, wanted):
            if isinstance(size, int):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    found = [d.dim_value for d in dims]
                    raise ExportError(f"exported output {value.name} has shape {found} where {wanted} is documented")
                if not dim.HasField("dim_value"):
                    dim.dim_value = size
                    changed = True
            elif dim.dim_param != size:
                dim.dim_param = size
                changed = True
    if changed:
        onnx.save(model, path)


def check_exported_model(path: str, flavour: str) -> Any:
    """Structural checks of an exported file; `onnx.checker` for the standard flavours."""
    import onnx

    model = onnx.load(path)
    if flavour != "ascend-nms":
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker rejected the exported {flavour} model: {exc}")
    ops = {node.op_type for node in model.graph.node}
    wanted = {"onnx-nms": "NonMaxSuppression", "ascend-nms": "BatchMultiClassNMS"}.get(flavour)
    if wanted and wanted not in ops:
        raise ExportError(f"exported {flavour} graph lacks its {wanted} node")
    if flavour == "raw" and ops & {"NonMaxSuppression", "BatchMultiClassNMS"}:
        raise ExportError("exported raw graph unexpectedly contains an NMS node")
    return model


@dataclass
class ExportPlan:
    """What one export makes: the graph's flavour, input canvas and dtype, batch size (None: dynamic)
    and opset, resolved from the arguments and the spec's defaults."""
    flavour: str
    height: int
    width: int
    batch_size: Optional[int]
    opset: int
    input_dtype: str

    @property
    def batch_dim(self) -> Union[int, str]:
        """The batch dimension as the graph and the sidecar state it: a size or "batch"."""
        return self.batch_size if self.batch_size is not None else "batch"

    @property
    def input_names(self) -> List[str]:
        return ["input", "image_hw"] if self.input_dtype == "uint8" else ["input"]

    def outputs(self) -> List[Dict[str, Any]]:
        return output_spec(self.flavour, self.batch_dim, num_candidates(self.height, self.width))

    def dynamic_axes(self) -> Optional[Dict[str, Dict[int, str]]]:
        if self.batch_size is not None:
            return None
        return {name: {0: "batch"} for name in self.input_names + [o["name"] for o in self.outputs()]}

    def trace_inputs(self) -> Tuple[torch.Tensor, ...]:
        """Deterministic example inputs for the tracer (a batch of 1 for a dynamic batch)."""
        batch = self.batch_size if self.batch_size is not None else 1
        generator = torch.Generator().manual_seed(0)
        if self.input_dtype == "uint8":
            image = torch.randint(0, 256, (batch, 3, self.height, self.width), generator=generator,
                                  dtype=torch.uint8)
            return image, torch.tensor([[self.height, self.width]] * batch, dtype=torch.int32)
        return (torch.randn((batch, 3, self.height, self.width), generator=generator),)


def plan_export(flavour: str = "onnx-nms", height: Optional[int] = None, width: Optional[int] = None,
                batch_size: Optional[int] = 1, opset: Optional[int] = None,
                input_dtype: str = "float32") -> ExportPlan:
    """Check the export arguments and fill in the spec's defaults (input size, opset)."""
    if flavour not in FLAVOURS:
        raise ExportError(f"unknown flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    inputs = input_constants()
    height = int(height or inputs["height"])
    width = int(width or inputs["width"])
    if height < 32 or width < 32:
        raise ExportError(f"input {height}x{width} is too small: FSAF needs at least 32x32 (5 stride-2 levels)")
    if batch_size is not None and int(batch_size) < 1:
        raise ExportError(f"batch size must be >= 1 (or None for a dynamic batch), got {batch_size}")
    return ExportPlan(flavour=flavour, height=height, width=width,
                      batch_size=int(batch_size) if batch_size is not None else None,
                      opset=int(opset or model_constants()["opset"]), input_dtype=input_dtype)


def export_onnx(checkpoint_path: str, out_path: str, flavour: str = "onnx-nms", height: Optional[int] = None,
                width: Optional[int] = None, batch_size: Optional[int] = 1, opset: Optional[int] = None,
                input_dtype: str = "float32", trusted: bool = False) -> Dict[str, Any]:
    """Export the checkpoint to `out_path` (+ `<out_path>.json` sidecar); returns the sidecar dict.

    `batch_size` None exports a dynamic batch dimension. The file appears only once it is complete
    and checked: a failed export leaves no partial .onnx behind.
    """
    plan = plan_export(flavour, height, width, batch_size, opset, input_dtype)
    started = time.time()
    detector = load_detector(checkpoint_path, trusted=trusted)
    module = ExportableFSAF(detector, plan.flavour, plan.height, plan.width, plan.input_dtype,
                            static_batch=plan.batch_size is not None).eval()
    out_path = os.path.abspath(out_path)
    _export_checked(module, plan, out_path)
    sidecar = export_sidecar(plan, checkpoint_path, out_path)
    sidecar["export_seconds"] = round(time.time() - started, 3)
    sidecar.update(torch_version=torch.__version__, onnx_version=_onnx_version(),
                   exporter="torch.onnx TorchScript exporter")
    atomic_write_json(out_path + ".json", sidecar)
    return sidecar


def _onnx_version():
    import onnx
    return onnx.__version__


EXPORT_SCRATCH_PREFIX = ".export-"


def _export_checked(module, plan, out_path):
    """Trace `module` to a temporary file beside `out_path`, declare and check its outputs, then move
    it into place: `out_path` holds a complete, checked model or is left as it was."""
    directory = os.path.dirname(out_path)
    if not os.path.isdir(directory):
        os.makedirs(directory)
    # atomic_output removes this export's file on any exception (Ctrl-C included); a killed
    # export's file (no finally ran) is removed by the next export into the folder
    remove_stale_scratch(directory, EXPORT_SCRATCH_PREFIX)
    outputs = plan.outputs()
    with atomic_output(out_path, new_temp_file(directory, EXPORT_SCRATCH_PREFIX, ".onnx")) as tmp_path:
        with torch.no_grad():
            _trace_to(module, plan, tmp_path, [o["name"] for o in outputs])
        declare_output_shapes(tmp_path, outputs)
        check_exported_model(tmp_path, plan.flavour)


def _trace_to(module, plan, path, output_names):
    try:
        _torch_export(module, plan.trace_inputs(), path, plan.input_names, output_names, plan.dynamic_axes(),
                      plan.opset, custom_ops=plan.flavour == "ascend-nms")
    except Exception as exc:  # noqa: B902 - exporter errors have many types; re-raised typed
        checker_error = type(exc).__name__ == "CheckerError"
        # The custom Ascend node is not in the ONNX domain: current torch's post-export
        # checker rejects it after writing the file; the recipe disables the checker too.
        if not (checker_error and plan.flavour == "ascend-nms" and os.path.getsize(path) > 0):
            raise ExportError(f"ONNX export ({plan.flavour}, {plan.height}x{plan.width}, batch {plan.batch_dim}) "
                              f"failed: {type(exc).__name__}: {exc}")


_NMS_WHERE = {"onnx-nms": "graph (ONNX NonMaxSuppression)",
              "ascend-nms": "graph (BatchMultiClassNMS, fp16 on the NPU)",
              "raw": "host (fsaf_repro.decode.multiclass_nms)"}


def export_sidecar(plan: ExportPlan, checkpoint_path: str, out_path: str) -> Dict[str, Any]:
    """The sidecar of an exported file, up to its timing and tool versions (which export_onnx adds)."""
    constants = model_constants()
    inputs = input_constants()
    input_spec = [{"name": "input", "shape": [plan.batch_dim, 3, plan.height, plan.width],
                   "dtype": plan.input_dtype}]
    if plan.input_dtype == "uint8":
        input_spec.append({"name": "image_hw", "shape": [plan.batch_dim, 2], "dtype": "int32",
                           "meaning": "resized image height, width inside the zero-padded canvas"})
    max_per_class = {"onnx-nms": constants["onnx_max_output_boxes_per_class"],
                     "ascend-nms": constants["ascend_max_size_per_class"]}.get(plan.flavour)
    checkpoint_sha256 = file_sha256(checkpoint_path)
    return {
        "file": os.path.basename(out_path),
        "flavour": plan.flavour,
        "inputs": input_spec,
        "input": input_spec[0],
        "outputs": plan.outputs(),
        "batch_size": plan.batch_size if plan.batch_size is not None else "dynamic",
        "opset": plan.opset,
        "normalisation": {
            "mean_rgb": inputs["mean_rgb"], "std_rgb": inputs["std_rgb"], "channel_order": "RGB",
            "in_graph": plan.input_dtype == "uint8",
            "padding": "zero after normalising, right and bottom",
        },
        "nms": {
            "where": _NMS_WHERE[plan.flavour],
            "nms_pre": constants["nms_pre"],
            "score_threshold": constants["score_threshold"],
            "iou_threshold": constants["iou_threshold"],
            "max_per_img": constants["max_per_img"],
            "max_output_boxes_per_class": max_per_class,
            "clip": "network input shape",
        },
        "num_candidates": num_candidates(plan.height, plan.width) if plan.flavour == "raw" else None,
        "checkpoint": {"path": os.path.abspath(checkpoint_path), "sha256": checkpoint_sha256},
        "checkpoint_sha256": checkpoint_sha256,
        "onnx_sha256": file_sha256(out_path),
        "file_size": os.path.getsize(out_path),
    }


def read_sidecar(model_path: str) -> Optional[Dict[str, Any]]:
    """The JSON sidecar written beside an exported model (None when absent)."""
    path = model_path + ".json"
    if not os.path.exists(path):
        return None
    sidecar = load_json(path, ExportError, "sidecar")
    problem = _sidecar_problem(sidecar)
    if problem:
        raise ExportError(f"sidecar {path} is not an export sidecar: {problem}; export the model again with "
                          "`fsaf-repro export`")
    return sidecar


def _sidecar_problem(sidecar):
    """What makes a parsed sidecar unusable by its readers (input name and shape, extra inputs), or None."""
    if not isinstance(sidecar, dict):
        return f"it holds a {type(sidecar).__name__}, not an object"
    inputs = sidecar.get("inputs") if "inputs" in sidecar else []
    if not isinstance(inputs, list):
        return "'inputs' is not a list"
    for key, entry in [("input", sidecar.get("input"))] + [(f"inputs[{k}]", e) for k, e in enumerate(inputs)]:
        if entry is None and key == "input":
            continue
        # the main input's name defaults to "input"; every extra input needs its own
        default_name = "input" if key == "input" else None
        if not isinstance(entry, dict) or not isinstance(entry.get("name", default_name), str):
            return f"{key} must be an object with a string 'name'"
        shape = entry.get("shape")
        # the batch dimension may be symbolic ("batch" for a dynamic batch); the others are sizes
        if not isinstance(shape, list) or not shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape[1:]):
            return f"{key} 'shape' must be a list of positive integers after the batch dimension, got {shape!r}"
    return None
