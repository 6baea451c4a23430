"""FSAF's training targets and losses: CenterRegionAssigner per level, focal and IoU losses, and the
online feature selection that keeps each box at its lowest-loss level (mmdetection 2.15 `FSAFHead.loss`;
the rule is spelled out in train.py's docstring and docs/fitted-weights.md)."""
import math

import torch
from torch.nn import functional as F

from .spec import model_constants

# CenterRegionAssigner settings of mmdetection 2.15's configs/fsaf/fsaf_r50_fpn_1x_coco.py
POS_SCALE = 0.2
NEG_SCALE = 0.2
MIN_POS_IOF = 0.01
FOCAL_GAMMA = 2.0
FOCAL_ALPHA = 0.25
IOU_EPS = 1e-6
# the selection loss of a box that has no positive cell at a level
NO_CELL_LOSS = 1e6
# gt_inds values of cells that are not positive
NEGATIVE = -1
IGNORED = -2


def level_priors(feat_h, feat_w, stride):
    """Cell centres [N, 2] (x, y) and prior boxes [N, 4] of one level, row-major (decode.level_anchors)."""
    xs = torch.arange(feat_w, dtype=torch.float32) * stride
    ys = torch.arange(feat_h, dtype=torch.float32) * stride
    cx = xs.repeat(feat_h)
    cy = ys.view(-1, 1).repeat(1, feat_w).view(-1)
    half = stride / 2.0
    return torch.stack([cx, cy], 1), torch.stack([cx - half, cy - half, cx + half, cy + half], 1)


def scale_boxes(boxes, factor):
    """Boxes [G, 4] shrunk (or grown) about their centres to `factor` of their width and height."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    half_w = (boxes[:, 2] - boxes[:, 0]) * factor / 2
    half_h = (boxes[:, 3] - boxes[:, 1]) * factor / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1)


def intersection_over_prior(priors, boxes):
    """[N, G]: area(prior & box) / area(prior) (mmdetection's 'iof' with the priors as foreground)."""
    lt = torch.max(priors[:, None, :2], boxes[None, :, :2])
    rb = torch.min(priors[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    prior_area = (priors[:, 2] - priors[:, 0]) * (priors[:, 3] - priors[:, 1])
    return inter / prior_area[:, None]


def assign_level(gt_boxes, gt_labels, feat_h, feat_w, stride, num_classes):
    """Targets of one level: (gt_inds [N] long, class_weight [N, C] float).

    gt_inds: the index of the box a cell is positive for, NEGATIVE, or IGNORED. class_weight: 1 where
    the cell's class loss counts, 0 for the labels of boxes whose shadow it lies in (all labels of an
    ignored cell).
    """
    centres, priors = level_priors(feat_h, feat_w, stride)
    count = centres.shape[0]
    gt_inds = torch.full((count,), NEGATIVE, dtype=torch.long)
    class_weight = torch.ones((count, num_classes))
    if gt_boxes.shape[0] == 0:
        return gt_inds, class_weight
    cx, cy = centres[:, 0:1], centres[:, 1:2]
    centre_in_box = ((cx > gt_boxes[None, :, 0]) & (cx < gt_boxes[None, :, 2])
                     & (cy > gt_boxes[None, :, 1]) & (cy < gt_boxes[None, :, 3]))
    in_core = centre_in_box & (intersection_over_prior(priors, scale_boxes(gt_boxes, POS_SCALE)) > MIN_POS_IOF)
    in_shadow = (intersection_over_prior(priors, scale_boxes(gt_boxes, NEG_SCALE)) > MIN_POS_IOF) & ~in_core
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    # a cell in several cores goes to the smallest box
    masked_area = torch.where(in_core, areas[None, :].expand_as(in_core), torch.full_like(in_core, math.inf,
                                                                                          dtype=areas.dtype))
    smallest = masked_area.argmin(dim=1)
    positive = in_core.any(dim=1)
    gt_inds[positive] = smallest[positive]
    cells, boxes = torch.nonzero(in_shadow, as_tuple=True)
    if cells.numel():
        shadow_labels = gt_labels[boxes]
        class_weight[cells, shadow_labels] = 0.0
        owner = gt_inds[cells]
        same_label = (owner >= 0) & (gt_labels[owner.clamp(min=0)] == shadow_labels)
        gt_inds[cells[same_label]] = IGNORED
    class_weight[gt_inds == IGNORED] = 0.0
    return gt_inds, class_weight


def image_targets(gt_boxes, gt_labels, level_shapes, strides, num_classes):
    """Per image, all levels concatenated (the head's flattening order): gt_inds [N], class_weight [N, C],
    level index [N], priors [N, 4]."""
    inds, weights, levels, priors = [], [], [], []
    for level, ((feat_h, feat_w), stride) in enumerate(zip(level_shapes, strides)):
        level_inds, level_weight = assign_level(gt_boxes, gt_labels, feat_h, feat_w, stride, num_classes)
        inds.append(level_inds)
        weights.append(level_weight)
        levels.append(torch.full((level_inds.shape[0],), level, dtype=torch.long))
        priors.append(level_priors(feat_h, feat_w, stride)[1])
    return torch.cat(inds), torch.cat(weights), torch.cat(levels), torch.cat(priors)


def sigmoid_focal_loss(logits, targets, gamma=FOCAL_GAMMA, alpha=FOCAL_ALPHA):
    """Elementwise sigmoid focal loss (mmcv's definition): alpha_t (1 - p_t)^gamma * BCE(logits, targets)."""
    prob = logits.sigmoid()
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return alpha_t * (1 - p_t).pow(gamma) * bce


def tblr_decode_unclipped(priors, distances, normalizer):
    """Boxes from (top, bottom, left, right) distances, as decode.tblr_decode but without clipping
    (mmdetection decodes without an image shape in the loss)."""
    cx = (priors[:, 0] + priors[:, 2]) / 2
    cy = (priors[:, 1] + priors[:, 3]) / 2
    w = priors[:, 2] - priors[:, 0]
    h = priors[:, 3] - priors[:, 1]
    d = distances * normalizer
    return torch.stack([cx - w * d[:, 2], cy - h * d[:, 0], cx + w * d[:, 3], cy + h * d[:, 1]], 1)


def iou_loss(pred, target, eps=IOU_EPS):
    """-log IoU per row of aligned boxes [K, 4] (IoU clamped at eps)."""
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    union = (area_p + area_t - inter).clamp(min=eps)
    return -(inter / union).clamp(min=eps).log()


def select_levels(cell_loss, gt_inds, levels, num_gts, num_levels):
    """Online feature selection: per box, the level whose positive cells have the lowest mean loss.

    cell_loss [N] (class loss summed over classes plus box loss), gt_inds [N], levels [N]. Returns
    (chosen level [G], mean loss [G, L] with NO_CELL_LOSS where a box has no positive cell).
    """
    positive = gt_inds >= 0
    slot = gt_inds[positive] * num_levels + levels[positive]
    sums = torch.zeros(num_gts * num_levels, dtype=cell_loss.dtype).index_add_(0, slot, cell_loss[positive])
    counts = torch.zeros(num_gts * num_levels, dtype=cell_loss.dtype).index_add_(
        0, slot, torch.ones_like(slot, dtype=cell_loss.dtype))
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, NO_CELL_LOSS))
    means = means.view(num_gts, num_levels)
    return means.argmin(dim=1), means


def fsaf_image_loss(logits, distances, gt_boxes, gt_labels, targets, num_levels, normalizer):
    """(class loss sum, box loss sum, positive cells kept) of one image; logits [N, C], distances [N, 4]."""
    gt_inds, class_weight, levels, priors = targets
    positive = gt_inds >= 0
    onehot = torch.zeros_like(logits)
    pos_cells = torch.nonzero(positive, as_tuple=True)[0]
    onehot[pos_cells, gt_labels[gt_inds[pos_cells]]] = 1.0
    focal_raw = sigmoid_focal_loss(logits, onehot)
    focal = focal_raw * class_weight
    box_loss = iou_loss(tblr_decode_unclipped(priors[pos_cells], distances[pos_cells], normalizer),
                        gt_boxes[gt_inds[pos_cells]])
    if pos_cells.numel() == 0:
        return focal.sum(), box_loss.sum(), 0
    with torch.no_grad():
        cell_loss = focal.sum(dim=1)
        cell_loss[pos_cells] += box_loss
        chosen, _ = select_levels(cell_loss, gt_inds, levels, gt_boxes.shape[0], num_levels)
    keep = levels[pos_cells] == chosen[gt_inds[pos_cells]]
    dropped = pos_cells[~keep]
    weight = class_weight.clone()
    weight[dropped, gt_labels[gt_inds[dropped]]] = 0.0
    cls_sum = (focal_raw * weight).sum()
    return cls_sum, box_loss[keep].sum(), int(keep.sum())


def fsaf_batch_loss(cls_scores, bbox_preds, batch_gts, batch_targets, normalizer=None):
    """FSAF loss of a batch: (class loss, box loss), each divided by the number of kept positive cells.

    cls_scores / bbox_preds: per level [B, C, H, W] / [B, 4, H, W]; batch_gts: per image (boxes [G, 4]
    in input pixels x1y1x2y2, labels [G]); batch_targets: per image `image_targets(...)`.
    """
    if normalizer is None:
        normalizer = model_constants()["bbox_normalizer"]
    num_classes = int(cls_scores[0].shape[1])
    logits = torch.cat([c.permute(0, 2, 3, 1).reshape(c.shape[0], -1, num_classes) for c in cls_scores], 1)
    distances = torch.cat([b.permute(0, 2, 3, 1).reshape(b.shape[0], -1, 4) for b in bbox_preds], 1)
    cls_total, box_total, positives = 0.0, 0.0, 0
    for index, ((boxes, labels), targets) in enumerate(zip(batch_gts, batch_targets)):
        cls_sum, box_sum, kept = fsaf_image_loss(logits[index], distances[index], boxes, labels, targets,
                                                 len(cls_scores), normalizer)
        cls_total = cls_total + cls_sum
        box_total = box_total + box_sum
        positives += kept
    denominator = float(max(1, positives))
    return cls_total / denominator, box_total / denominator
