"""The detector's test-time post-processing in torch: the oracle for every exported graph.

mmdetection 2.15's AnchorHead._get_bboxes with the test_cfg of configs/fsaf/fsaf_r50_fpn_1x_coco.py:
per level, sigmoid scores, keep the top `nms_pre` locations by their best class score when the level
has more, decode (top, bottom, left, right) distances against one square anchor per location, clip to
the image shape; then multiclass NMS over every (box, class) pair scoring above `score_thr`, sorted by
score, first `max_per_img` kept.

`select_candidates` is written with traceable tensor operations only, so the exported graphs
(`fsaf_repro.export`) embed exactly this code; `multiclass_nms` is the host NMS shared by the torch
path and the `raw` ONNX flavour.
"""
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .spec import model_constants


def level_anchors(feat_h: int, feat_w: int, stride: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Anchors [H*W, 4] of one level, row-major: at (i, j) `[j*s - s/2, i*s - s/2, j*s + s/2, i*s + s/2]`."""
    half = stride / 2.0
    shift_x = torch.arange(0, feat_w, dtype=dtype) * stride
    shift_y = torch.arange(0, feat_h, dtype=dtype) * stride
    xx = shift_x.repeat(feat_h)
    yy = shift_y.view(-1, 1).repeat(1, feat_w).view(-1)
    return torch.stack([xx - half, yy - half, xx + half, yy + half], dim=-1)


def tblr_decode(anchors: torch.Tensor, distances: torch.Tensor, max_hw: Tuple[int, int],
                normalizer: Optional[float] = None) -> torch.Tensor:
    """Boxes from (top, bottom, left, right) distances, normalised by 4 and by the anchor's w/h.

    `anchors` [..., 4] and `distances` [..., 4]; boxes clipped to x in [0, W], y in [0, H] of
    `max_hw` (the network input shape during export, the resized image shape in mmdetection's test).
    """
    if normalizer is None:
        normalizer = model_constants()["bbox_normalizer"]
    scaled = distances * normalizer
    center_x = (anchors[..., 0] + anchors[..., 2]) / 2
    center_y = (anchors[..., 1] + anchors[..., 3]) / 2
    width = anchors[..., 2] - anchors[..., 0]
    height = anchors[..., 3] - anchors[..., 1]
    top = height * scaled[..., 0]
    bottom = height * scaled[..., 1]
    left = width * scaled[..., 2]
    right = width * scaled[..., 3]
    max_h, max_w = float(max_hw[0]), float(max_hw[1])
    x1 = (center_x - left).clamp(min=0, max=max_w)
    y1 = (center_y - top).clamp(min=0, max=max_h)
    x2 = (center_x + right).clamp(min=0, max=max_w)
    y2 = (center_y + bottom).clamp(min=0, max=max_h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def select_candidates(cls_scores: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor], clip_hw: Tuple[int, int],
                      strides: Optional[Sequence[int]] = None, nms_pre: Optional[int] = None,
                      static_batch: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-level top-k and box decoding: (boxes [B, N, 4], scores [B, N, C]) before NMS.

    N is the sum over levels of min(nms_pre, H*W). Levels with at most `nms_pre` locations keep
    their row-major order; larger levels are reordered by descending best-class score.
    `static_batch` makes the batch size a constant when traced (static-shape graphs for ATC).
    """
    constants = model_constants()
    if strides is None:
        strides = constants["strides"]
    if nms_pre is None:
        nms_pre = constants["nms_pre"]
    level_boxes = []
    level_scores = []
    for cls_score, bbox_pred, stride in zip(cls_scores, bbox_preds, strides):
        batch = int(cls_score.shape[0]) if static_batch else cls_score.shape[0]
        num_classes = int(cls_score.shape[1])
        feat_h, feat_w = int(cls_score.shape[2]), int(cls_score.shape[3])
        scores = cls_score.permute(0, 2, 3, 1).reshape(batch, -1, num_classes).sigmoid()
        distances = bbox_pred.permute(0, 2, 3, 1).reshape(batch, -1, 4)
        anchors = level_anchors(feat_h, feat_w, stride, dtype=distances.dtype)
        if feat_h * feat_w > nms_pre:
            best_scores = scores.max(dim=2)[0]
            _, top_index = best_scores.topk(nms_pre, dim=1)
            # Explicit sizes (not -1) keep the traced graph's shapes static for static batches.
            scores = torch.gather(scores, 1, top_index.unsqueeze(-1).expand(batch, nms_pre, num_classes))
            distances = torch.gather(distances, 1, top_index.unsqueeze(-1).expand(batch, nms_pre, 4))
            anchors = anchors[top_index]
        else:
            anchors = anchors.unsqueeze(0).expand(batch, -1, -1)
        level_boxes.append(tblr_decode(anchors, distances, clip_hw))
        level_scores.append(scores)
    return torch.cat(level_boxes, dim=1), torch.cat(level_scores, dim=1)


def _greedy_nms_order(boxes, scores, iou_threshold, max_keep):
    """Indices kept by greedy NMS in descending score order, stopping after `max_keep`.

    A box is suppressed when its IoU with a kept box exceeds `iou_threshold` (the ONNX
    NonMaxSuppression rule). Arithmetic stays in float32 as in mmcv's kernel.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    remaining = np.arange(order.shape[0])
    keep = []
    while remaining.size and len(keep) < max_keep:
        current = remaining[0]
        keep.append(order[current])
        rest = remaining[1:]
        inter_w = np.maximum(np.float32(0), np.minimum(x2[current], x2[rest]) - np.maximum(x1[current], x1[rest]))
        inter_h = np.maximum(np.float32(0), np.minimum(y2[current], y2[rest]) - np.maximum(y1[current], y1[rest]))
        inter = inter_w * inter_h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[current] + areas[rest] - inter)
        # NaN (two empty boxes) is not "greater than": such boxes are kept, as mmcv and ONNX Runtime do.
        remaining = rest[~(iou > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def multiclass_nms(boxes: Any, scores: Any, score_threshold: Optional[float] = None,
                   iou_threshold: Optional[float] = None,
                   max_num: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Class-wise NMS of one image: boxes [N, 4], scores [N, C] -> (dets [K, 5], labels [K]), K <= max_num.

    Every (box, class) pair with score > score_threshold is a candidate. Classes are separated by
    offsetting each box by `label * (max coordinate + 1)`, as mmcv's batched_nms does, so one greedy
    pass over all candidates in score order gives each class's NMS; stopping at `max_num` kept pairs
    yields exactly the top `max_num` of the union.
    """
    constants = model_constants()
    if score_threshold is None:
        score_threshold = constants["score_threshold"]
    if iou_threshold is None:
        iou_threshold = constants["iou_threshold"]
    if max_num is None:
        max_num = constants["max_per_img"]
    boxes_np = boxes.detach().cpu().numpy().astype(np.float32, copy=False)
    scores_np = scores.detach().cpu().numpy().astype(np.float32, copy=False)
    box_index, labels = np.nonzero(scores_np > np.float32(score_threshold))
    if box_index.size == 0:
        return np.zeros((0, 5), np.float32), np.zeros((0,), np.int64)
    cand_boxes = boxes_np[box_index]
    cand_scores = scores_np[box_index, labels]
    offsets = labels.astype(np.float32) * (cand_boxes.max() + np.float32(1))
    keep = _greedy_nms_order(cand_boxes + offsets[:, None], cand_scores, np.float32(iou_threshold), max_num)
    dets = np.concatenate([cand_boxes[keep], cand_scores[keep, None]], axis=1).astype(np.float32)
    return dets, labels[keep].astype(np.int64)


def pad_detections(dets: np.ndarray, labels: np.ndarray,
                   max_num: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Zero-pad one image's detections to the exported graphs' fixed [max_num, 5] / [max_num] layout."""
    if max_num is None:
        max_num = model_constants()["max_per_img"]
    padded_dets = np.zeros((max_num, 5), np.float32)
    padded_labels = np.zeros((max_num,), np.int64)
    count = min(len(dets), max_num)
    padded_dets[:count] = dets[:count]
    padded_labels[:count] = labels[:count]
    return padded_dets, padded_labels


def host_nms(boxes: Any, scores: Any, box_scale: Optional[Sequence[float]] = None,
             **nms_options: Any) -> Tuple[np.ndarray, np.ndarray]:
    """NMS of a batch on the host: boxes [B, N, 4], scores [B, N, C] (numpy or torch) -> padded
    (dets float32 [B, 100, 5], labels int64 [B, 100]), the layout of the exported graphs' outputs.

    `box_scale` (scalar or 4 values per box coordinate) divides the boxes before NMS, as
    mmdetection's test path does with `rescale=True`; the exported graphs run NMS in input pixels.
    """
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    if box_scale is not None:
        boxes = boxes / torch.as_tensor(np.asarray(box_scale, dtype=np.float32))
    out_dets = []
    out_labels = []
    for image_boxes, image_scores in zip(boxes, scores):
        dets, labels = multiclass_nms(image_boxes, image_scores, **nms_options)
        dets, labels = pad_detections(dets, labels, nms_options.get("max_num"))
        out_dets.append(dets)
        out_labels.append(labels)
    return np.stack(out_dets), np.stack(out_labels)


def detect(cls_scores: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor], clip_hw: Tuple[int, int],
           box_scale: Optional[Sequence[float]] = None, **nms_options: Any) -> Tuple[np.ndarray, np.ndarray]:
    """The torch reference path: raw head outputs -> padded (dets [B, 100, 5], labels [B, 100]) numpy."""
    with torch.no_grad():
        boxes, scores = select_candidates(cls_scores, bbox_preds, clip_hw)
    return host_nms(boxes, scores, box_scale=box_scale, **nms_options)


def count_candidates(cls_scores: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor], clip_hw: Tuple[int, int],
                     score_threshold: Optional[float] = None) -> List[int]:
    """Number of (box, class) pairs above the score threshold per image (how busy NMS is)."""
    if score_threshold is None:
        score_threshold = model_constants()["score_threshold"]
    with torch.no_grad():
        _, scores = select_candidates(cls_scores, bbox_preds, clip_hw)
    return [int((s > score_threshold).sum()) for s in scores]
