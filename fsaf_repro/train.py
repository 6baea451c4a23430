"""Fitting FSAF weights on a generated set with FSAF's own training rule (docs/fitted-weights.md).

The rule (mmdetection 2.15 `FSAFHead.loss` with `CenterRegionAssigner`), implemented here:
- one prior per cell at strides 8..128, the stride-sized square centred on the cell;
- per level, a cell is positive for a box when its centre lies inside the box and its prior overlaps
  the box's core (the box shrunk to 0.2 of its sides) by intersection-over-prior > 0.01; a cell in
  several cores goes to the smallest box; a cell overlapping a box's shadow (same 0.2 region) without
  being in its core has that box's label switched off, and is ignored altogether when it was positive
  for a box of that label (foreground_dominate False);
- sigmoid focal loss (gamma 2, alpha 0.25) over the 80 classes on every cell that counts, IoU loss
  (-log IoU, eps 1e-6) between the decoded TBLR box (normaliser 4) and the box on positive cells;
- online feature selection: per box, the mean (class + box) loss of its positive cells at each level,
  computed without gradient (1e6 where it has none); the lowest-loss level keeps the box, at the other
  levels its cells lose their box loss and the class loss of its label; the sums are divided by the
  number of remaining positive cells.

What is trained (a choice by cost; benchmarks/results/fit_generated*.json hold the partial curves): a CPU cannot train
ResNet-50 in minutes, so the backbone keeps the seeded weights (`checkpoint.seeded_state_dict`) and
its C3-C5 features are computed once per training image. The neck and head are trained in a
`channels`-wide subspace of their 256 channels (`ThinNeckHead`): the same layers with fewer channels,
which `embed_thin_state_dict` writes into the official layout with zeros elsewhere, so the full
detector computes exactly the thin network's outputs (the zero channels stay zero through the FPN sums
and the ReLUs). The head's 3x3 convolutions over 256 channels are ~16x the cost at 64 channels.
"""
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import FsafReproError, OptionError
from .fileio import remove_stale_scratch, scratch_stem
from .options import (BATCH_SIZE, COUNT, IMAGE_SIDE, NON_NEGATIVE_INT, POSITIVE_INT, Choice, Integer, Real,
                      check_options)
from .spec import model_constants
from .torch_threads import set_intra_op_threads

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

BACKBONE_CHANNELS = (512, 1024, 2048)
# The fit's implementation version: part of reproduce's checkpoint-stage key, so a change to the training rule,
# the generator's classes style or the defaults below refits instead of reusing weights fitted the old way.
FIT_VERSION = 1


class FitError(FsafReproError):
    """A fit that cannot run as asked (bad parameters, no objects to learn from)."""


# ----------------------------------------------------------------------------------------------
# Assignment (CenterRegionAssigner) and losses


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


# ----------------------------------------------------------------------------------------------
# The trained part: neck and head in a subspace of their channels


class _Conv(nn.Module):
    """A conv wrapped as `<name>.conv` (the checkpoint's ConvModule key layout)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)

    def forward(self, x):
        return self.conv(x)


class ThinNeckHead(nn.Module):
    """model.FPN + model.FSAFHead with `channels` channels instead of 256; the same parameter names."""

    def __init__(self, channels, num_classes, stacked_convs=4):
        super().__init__()
        self.channels = channels
        self.lateral_convs = nn.ModuleList(_Conv(c, channels, 1) for c in BACKBONE_CHANNELS)
        fpn = [_Conv(channels, channels, 3, padding=1) for _ in BACKBONE_CHANNELS]
        fpn.append(_Conv(BACKBONE_CHANNELS[-1], channels, 3, stride=2, padding=1))
        fpn.append(_Conv(channels, channels, 3, stride=2, padding=1))
        self.fpn_convs = nn.ModuleList(fpn)
        self.cls_convs = nn.ModuleList(_Conv(channels, channels, 3, padding=1) for _ in range(stacked_convs))
        self.reg_convs = nn.ModuleList(_Conv(channels, channels, 3, padding=1) for _ in range(stacked_convs))
        self.retina_cls = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(channels, 4, 3, padding=1)

    def init_weights(self, generator):
        """FPN: Xavier-uniform; towers: He-normal (keeps the signal through four narrow layers where
        mmdetection's Normal(0, 0.01) at 64 channels would shrink it ~4x per layer); retina_cls /
        retina_reg: Normal(0, 0.01), biases -log(99) and 0.25 (mmdetection's)."""
        with torch.no_grad():
            for name, module in self.named_modules():
                if not isinstance(module, nn.Conv2d):
                    continue
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                if name.startswith(("lateral_convs", "fpn_convs")):
                    bound = math.sqrt(6.0 / (fan_in + fan_out))
                    weight = (torch.rand(module.weight.shape, generator=generator) * 2 - 1) * bound
                elif name.startswith(("cls_convs", "reg_convs")):
                    weight = torch.randn(module.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in)
                else:
                    weight = torch.randn(module.weight.shape, generator=generator) * 0.01
                module.weight.copy_(weight)
                module.bias.zero_()
            self.retina_cls.bias.fill_(-math.log(99.0))
            self.retina_reg.bias.fill_(0.25)

    def forward(self, c3, c4, c5):
        inputs = (c3, c4, c5)
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            finer_hw = (int(laterals[i - 1].shape[2]), int(laterals[i - 1].shape[3]))
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=finer_hw, mode="nearest")
        feats = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        p6 = self.fpn_convs[len(laterals)](c5)
        feats += [p6, self.fpn_convs[len(laterals) + 1](p6)]
        cls_scores, bbox_preds = [], []
        for feat in feats:
            cls_feat, reg_feat = feat, feat
            for conv in self.cls_convs:
                cls_feat = F.relu(conv(cls_feat))
            for conv in self.reg_convs:
                reg_feat = F.relu(conv(reg_feat))
            cls_scores.append(self.retina_cls(cls_feat))
            bbox_preds.append(F.relu(self.retina_reg(reg_feat)))
        return cls_scores, bbox_preds


def _full_key(thin_key):
    return ("bbox_head." if thin_key.startswith(("cls_convs", "reg_convs", "retina_")) else "neck.") + thin_key


def embed_thin_state_dict(full_state_dict, thin):
    """A copy of `full_state_dict` whose neck and head hold `thin`'s weights, zeros elsewhere.

    Output channels beyond `thin.channels` get zero weights and biases (so they stay 0 through the
    FPN's sums and the towers' ReLUs); input channels beyond it get zero weights (they read zeros).
    """
    out = dict(full_state_dict)
    for key, value in thin.state_dict().items():
        full_key = _full_key(key)
        if full_key not in out:
            raise FitError(f"thin network key {key} has no place in the checkpoint layout")
        target = torch.zeros_like(out[full_key])
        index = tuple(slice(0, size) for size in value.shape)
        target[index] = value.detach()
        out[full_key] = target
    return out


# ----------------------------------------------------------------------------------------------
# Data: a generated set, its backbone features and targets


def read_image_boxes(annotation_file, image_set):
    """Per entry of `image_set`: (boxes [G, 4] x1y1x2y2 in network-input pixels, labels [G] 0..79)."""
    from .data import read_annotation_file
    # the one check of an annotation file (ids, finite boxes, known categories), not a raw json.load
    data = read_annotation_file(annotation_file, need_annotations=True).data
    label_of = {cid: k for k, cid in enumerate(image_set.category_ids)}
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = []
    for meta in image_set.metas:
        anns = by_image.get(meta.image_id, [])
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).view(-1, 4) * float(meta.scale)
        labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.long)
        out.append((boxes, labels))
    return out


class FeatureSet:
    """Backbone features (float16, to halve the memory), boxes and FSAF targets of a generated set."""

    def __init__(self, annotation_file, image_dir, backbone, height, width, batch_size=4, progress=False,
                 desc="features"):
        from .data import CocoImageSet
        self.image_set = CocoImageSet(annotation_file, image_dir, height=height, width=width)
        self.gts = read_image_boxes(annotation_file, self.image_set)
        self.features = [[], [], []]
        count = len(self.image_set)
        bar = _bar(count, desc, progress, "img")
        with torch.no_grad():
            for start in range(0, count, batch_size):
                indices = range(start, min(count, start + batch_size))
                batch = torch.from_numpy(np.stack([self.image_set.load(i)[0] for i in indices]))
                for store, feat in zip(self.features, backbone(batch)):
                    store.extend(f.half() for f in feat)
                if bar is not None:
                    bar.update(len(indices))
        if bar is not None:
            bar.close()
        self.level_shapes = None
        self.targets = None

    def __len__(self):
        return len(self.gts)

    def prepare_targets(self, level_shapes, strides, num_classes):
        self.level_shapes = [tuple(shape) for shape in level_shapes]
        self.targets = [image_targets(boxes, labels, self.level_shapes, strides, num_classes)
                        for boxes, labels in self.gts]

    def batch(self, indices):
        feats = [torch.stack([store[i] for i in indices]).float() for store in self.features]
        return feats, [self.gts[i] for i in indices], [self.targets[i] for i in indices]


# Seconds between the fit's progress lines (its log, and the console without a progress bar): a line
# every 125 steps came 17 minutes apart on a loaded host; time, not steps, is what a watcher waits on.
PROGRESS_INTERVAL_S = 30.0


class FitProgress:
    """Progress lines of the fit by time: one when `interval_s` seconds have passed since the last (and
    at the last step), each with the step, the running loss, the elapsed time and an ETA from the mean
    step time so far. `clock` (seconds, monotonic) is injectable, so that tests need not wait."""

    def __init__(self, steps, say, interval_s=PROGRESS_INTERVAL_S, clock=time.monotonic):
        if not interval_s > 0:
            raise FitError(f"the progress interval must be > 0 seconds, got {interval_s!r}")
        self.steps, self.say, self.interval_s, self.clock = int(steps), say, float(interval_s), clock
        self.started = self.last = clock()

    def update(self, step, loss, cls_loss, box_loss):
        """Say a line for `step` if the interval has passed or it is the last step; returns the line or None."""
        now = self.clock()
        if now - self.last < self.interval_s and step != self.steps:
            return None
        self.last = now
        elapsed = now - self.started
        eta = elapsed / step * (self.steps - step)
        line = (f"fit step {step}/{self.steps}: loss {loss:.3f} (class {cls_loss:.3f}, box {box_loss:.3f}), "
                f"elapsed {_duration(elapsed)}, ETA {_duration(eta)}")
        self.say(line)
        return line


def _duration(seconds):
    """`42 s`, `3 min 05 s`, `1 h 02 min`: what a person reads at a glance."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _bar(total, desc, enabled, unit):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


def level_shapes_for(thin, features):
    """The head's level sizes for features of one image (a forward on it)."""
    with torch.no_grad():
        cls_scores, _ = thin(*[f[:1].float() for f in features])
    return [(int(c.shape[2]), int(c.shape[3])) for c in cls_scores]


# ----------------------------------------------------------------------------------------------
# Evaluation through the project's pipeline


def detections_on(feature_set, thin, batch_size=8):
    """COCO results of the thin network on a FeatureSet: decode.detect at the input size, then
    postprocess.detections_to_coco (the same steps the torch backend and postprocess take)."""
    from .decode import detect
    from .postprocess import detections_to_coco
    image_set = feature_set.image_set
    results = []
    clip_hw = (image_set.height, image_set.width)
    with torch.no_grad():
        for start in range(0, len(feature_set), batch_size):
            indices = list(range(start, min(len(feature_set), start + batch_size)))
            feats, _, _ = feature_set.batch(indices) if feature_set.targets is not None else (
                [torch.stack([store[i] for i in indices]).float() for store in feature_set.features], None, None)
            cls_scores, bbox_preds = thin(*feats)
            dets, labels = detect(cls_scores, bbox_preds, clip_hw)
            results.extend(detections_to_coco(dets, labels, [image_set.metas[i] for i in indices],
                                              image_set.category_ids))
    return results


def score(annotation_file, results):
    """(AP@[.50:.95], AP50) with the project's scorer (pycocotools, the recipe's settings).

    Boxes of zero width or height (a cell whose ReLU'd distances are exactly 0 on one axis) are left
    out, as `evaluate --drop-degenerate` does: they cannot match any box, and the scorer refuses them.
    """
    from .evaluate import evaluate_results
    stats = evaluate_results(annotation_file, results, drop_degenerate=True)["stats"]
    return max(0.0, stats[0]), max(0.0, stats[1])


def evaluate_detector(model, annotation_file, image_dir, height, width, batch_size=4):
    """(AP, AP50) of a full FSAFDetector on a generated set at height x width, through the pipeline:
    CocoImageSet.load, forward, decode.detect, postprocess.detections_to_coco, evaluate_results."""
    from .data import CocoImageSet
    from .decode import detect
    from .postprocess import detections_to_coco
    image_set = CocoImageSet(annotation_file, image_dir, height=height, width=width)
    results = []
    with torch.no_grad():
        for start in range(0, len(image_set), batch_size):
            indices = list(range(start, min(len(image_set), start + batch_size)))
            batch = torch.from_numpy(np.stack([image_set.load(i)[0] for i in indices]))
            cls_scores, bbox_preds = model(batch)
            dets, labels = detect(cls_scores, bbox_preds, (height, width))
            results.extend(detections_to_coco(dets, labels, [image_set.metas[i] for i in indices],
                                              image_set.category_ids))
    return score(annotation_file, results)


def heldout_loss(model, annotation_file, image_dir, height, width, batch_size=4):
    """(class loss, box loss) of FSAF's training rule for a full FSAFDetector on a generated set, no gradient."""
    from .data import CocoImageSet
    image_set = CocoImageSet(annotation_file, image_dir, height=height, width=width)
    gts = read_image_boxes(annotation_file, image_set)
    num_classes = model_constants()["num_classes"]
    cls_sum, box_sum = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(image_set), batch_size):
            indices = list(range(start, min(len(image_set), start + batch_size)))
            batch = torch.from_numpy(np.stack([image_set.load(i)[0] for i in indices]))
            cls_scores, bbox_preds = model(batch)
            shapes = [(int(c.shape[2]), int(c.shape[3])) for c in cls_scores]
            targets = [image_targets(gts[i][0], gts[i][1], shapes, model_constants()["strides"], num_classes)
                       for i in indices]
            cls_loss, box_loss = fsaf_batch_loss(cls_scores, bbox_preds, [gts[i] for i in indices], targets)
            cls_sum += float(cls_loss) * len(indices)
            box_sum += float(box_loss) * len(indices)
    return cls_sum / len(image_set), box_sum / len(image_set)


# ----------------------------------------------------------------------------------------------
# The fit


DEFAULTS = {
    "height": 256, "width": 384,      # reproduce.EMBEDDED_INPUT_HW
    # Chosen by measurement (benchmarks/results/fit_generated*.json, held-out AP on 48 images of another seed):
    # Adam at 1e-3 with the 1x schedule's two decays reached AP 0.117 / AP50 0.394 at 1000 steps on 160 images
    # (0.095 / 0.338 at 800); SGD at 0.01 was at 0.003 after 600. More images (240, 320 with channel dropout)
    # learnt slower within 1000 steps (0.108, 0.068), and 1000 steps are what ~5 minutes on 2 cores allow.
    "train_images": 160, "steps": 1000, "batch_size": 4, "channels": 64,
    "optimizer": "adam", "lr": 0.001, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 10.0,
    "warmup_steps": 20,
    "max_objects": 6,
    # channel dropout on the cached backbone features during the fit (a regulariser: the head otherwise
    # memorises a few hundred images; benchmarks/results/fit_generated*.json); 0 at inference, always
    "feature_dropout": 0.0,
}


OPTIMIZERS = ("adam", "sgd")

# Each fit parameter's declared kind (fsaf_repro.options): make-checkpoint's options and fit_parameters
# check the same declaration.
PARAMETER_KINDS = {
    "height": IMAGE_SIDE, "width": IMAGE_SIDE, "train_images": COUNT, "steps": COUNT, "batch_size": BATCH_SIZE,
    "channels": Integer(1, lambda: model_constants()["fpn_channels"], what="a channel count"),
    "optimizer": Choice(OPTIMIZERS), "lr": Real(0.0, low_open=True), "momentum": Real(0.0, 1.0, high_open=True),
    "weight_decay": Real(0.0), "grad_clip": Real(0.0, low_open=True), "warmup_steps": NON_NEGATIVE_INT,
    "max_objects": POSITIVE_INT, "feature_dropout": Real(0.0, 1.0, high_open=True),
}
# What each fit parameter is, in words (make-checkpoint's help, beside the kind's range and the default).
PARAMETER_HELP = {
    "height": "input height of the generated images the fit sees",
    "width": "input width of the generated images the fit sees",
    "train_images": "generated training images (the backbone's features are computed once for them)",
    "steps": "optimiser steps",
    "batch_size": "images per step",
    "channels": "width of the subspace of the 256 FPN/head channels that is trained",
    "optimizer": "optimiser",
    "lr": "learning rate after the warm-up (x0.1 from 2/3 of the steps, x0.01 from 11/12: the 1x schedule)",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "grad_clip": "gradient clipping at this max-norm",
    "warmup_steps": "linear learning-rate warm-up steps (0: none)",
    "max_objects": "at most this many objects per generated image",
    "feature_dropout": "channel dropout on the cached backbone features during the fit (0: none)",
}


def fit_meta(seed, data_seed, params, history):
    from .spec import load_recipe_spec
    return {
        "mmdet_version": "2.15.0",
        "CLASSES": tuple(load_recipe_spec()["coco_classes"]),
        "seeded": False,
        "trained_on": "generated shapes (fsaf_repro.synthetic style='classes'), not COCO",
        "seed": int(seed),
        "data_seed": int(data_seed),
        "fit": dict(params),
        "history": list(history),
        "note": ("fitted by fsaf-repro with FSAF's training rule on generated images; backbone = seeded "
                 "weights (not trained), neck and head trained in a {}-channel subspace; its detections "
                 "mean something on generated images only".format(params["channels"])),
    }


FIT_SCRATCH_PREFIX = "fsaf_fit_"


def fit_generated(output, seed=0, data_seed=1000, eval_seed=None, eval_images=0, threads=None, progress=True,
                  eval_every=0, workdir=None, log=None, log_every=0, progress_interval_s=PROGRESS_INTERVAL_S,
                  **overrides):
    """Fit neck and head on a generated set and write a checkpoint in the official layout to `output`.

    seed: the seeded weights (backbone) and the trained layers' init and batch order; data_seed: the
    training set's generator seed (evaluate on another). eval_images > 0 generates a held-out set with
    eval_seed (default data_seed + 1) and scores the thin network on it every `eval_every` steps (and at
    the end). The running loss, elapsed time and ETA are said to `log` every `progress_interval_s`
    seconds (FitProgress) and, with `log_every` > 0, every so many steps too. Deterministic for a seed
    and thread count. Returns a summary dict (history of loss, AP).
    """
    from .checkpoint import save_checkpoint, seeded_state_dict
    from .model import build_detector
    params = fit_parameters(overrides)
    eval_seed = data_seed + 1 if eval_seed is None else eval_seed
    if eval_images and int(eval_seed) == int(data_seed):
        raise FitError(f"the held-out set must come from another seed than the training set ({data_seed})")
    if threads:
        threads = set_intra_op_threads(threads)
    started = time.time()
    full_state = seeded_state_dict(seed)
    detector = build_detector()
    detector.load_state_dict(full_state)
    own_workdir = workdir is None
    if own_workdir:
        # removed by the finally below on any exception (Ctrl-C included); a killed fit's folder (no
        # finally ran) is removed by the next fit
        remove_stale_scratch(tempfile.gettempdir(), FIT_SCRATCH_PREFIX)
        workdir = tempfile.mkdtemp(prefix=scratch_stem(FIT_SCRATCH_PREFIX))
    try:
        sets = _generated_feature_sets(workdir, params, detector.backbone.eval(), data_seed, eval_seed,
                                       eval_images, progress)
        fit = _Fit(params, sets, seed, started, log or (lambda message: print(message, file=sys.stderr)))
        features_s = time.time() - started
        train_s = fit.run(progress, eval_every, log_every, progress_interval_s)
        save_checkpoint(embed_thin_state_dict(full_state, fit.thin), output,
                        fit_meta(seed, data_seed, params, fit.history))
        steps = int(params["steps"])
        return {"output": output, "params": params, "seed": seed, "data_seed": data_seed, "eval_seed": eval_seed,
                "history": fit.history, "features_s": round(features_s, 2), "train_s": round(train_s, 2),
                "steps_per_s": round(steps / max(train_s, 1e-9), 3), "wall_s": round(time.time() - started, 2),
                "threads": torch.get_num_threads(),
                "final_loss": None if fit.running is None else round(fit.running, 4)}
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def fit_parameters(overrides):
    """DEFAULTS with `overrides`, checked: unknown names and out-of-range values are a FitError."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise FitError(f"unknown fit parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    params = dict(DEFAULTS, **overrides)
    try:
        return dict(params, **check_options(PARAMETER_KINDS, params, "fit"))
    except OptionError as exc:
        raise FitError(str(exc)) from None


def _generated_feature_sets(workdir, params, backbone, data_seed, eval_seed, eval_images, progress):
    """(training FeatureSet, held-out FeatureSet or None, held-out annotation file or None) of generated sets
    (the classes style) under `workdir`, with the backbone's features at the fit's input size."""
    from .synthetic import make_synthetic_coco
    height, width, max_objects = int(params["height"]), int(params["width"]), int(params["max_objects"])
    ann, images = make_synthetic_coco(os.path.join(workdir, "train"), num_images=int(params["train_images"]),
                                      seed=data_seed, max_objects=max_objects, style="classes")
    train = FeatureSet(ann, images, backbone, height, width, progress=progress, desc="train features")
    if not eval_images:
        return train, None, None
    eval_ann, eval_dir = make_synthetic_coco(os.path.join(workdir, "eval"), num_images=int(eval_images),
                                             seed=eval_seed, max_objects=max_objects, style="classes")
    held_out = FeatureSet(eval_ann, eval_dir, backbone, height, width, progress=progress, desc="held-out features")
    return train, held_out, eval_ann


class _Fit:
    """One fit's state: the thin network, its optimizer, batch order and history. The generator draws, in
    order, the thin network's init, then per step the batch order (when it runs out) and the dropout."""

    def __init__(self, params, sets, seed, started, say):
        self.params = params
        self.train, self.held_out, self.eval_ann = sets
        self.started = started
        self.say = say
        self.generator = torch.Generator().manual_seed(int(seed))
        num_classes = model_constants()["num_classes"]
        self.thin = ThinNeckHead(int(params["channels"]), num_classes)
        self.thin.init_weights(self.generator)
        self.train.prepare_targets(level_shapes_for(self.thin, [s[0][None] for s in self.train.features]),
                                   model_constants()["strides"], num_classes)
        if not any(len(labels) for _, labels in self.train.gts):
            raise FitError("the generated training set has no objects")
        self.optimizer = _optimizer(self.thin, params)
        self.order = []
        self.running = None
        self.history = []

    def run(self, progress, eval_every, log_every, progress_interval_s=PROGRESS_INTERVAL_S):
        """All the steps (evaluating and logging as asked); returns the training seconds."""
        steps = int(self.params["steps"])
        bar = _bar(steps, "fit", progress, "step")
        # by time, into the log (a progress bar shows only on a terminal, and is not in a log file)
        timed = FitProgress(steps, self.say, progress_interval_s)
        train_started = time.time()
        if eval_every and self.held_out is not None:
            self.evaluate(0)
        for step in range(1, steps + 1):
            cls_loss, box_loss = self.step(step)
            if bar is not None:
                bar.set_postfix(loss=f"{self.running:.3f}", cls=f"{cls_loss:.3f}", box=f"{box_loss:.3f}")
                bar.update(1)
            if eval_every and step % eval_every == 0 and step != steps:
                self.evaluate(step)
            elif log_every and step % log_every == 0:
                self.say(f"fit step {step}/{steps}: loss {self.running:.3f} (class {cls_loss:.3f}, "
                         f"box {box_loss:.3f}), {time.time() - self.started:.0f} s")
            timed.update(step, self.running, cls_loss, box_loss)
        if bar is not None:
            bar.close()
        train_s = time.time() - train_started
        self.evaluate(steps)
        self.thin.eval()
        return train_s

    def step(self, step):
        """One optimizer step on the next batch; returns its (class loss, box loss)."""
        params, batch_size = self.params, int(self.params["batch_size"])
        if len(self.order) < batch_size:
            self.order.extend(torch.randperm(len(self.train), generator=self.generator).tolist())
        indices, self.order = self.order[:batch_size], self.order[batch_size:]
        lr = _learning_rate(params, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        feats, gts, targets = self.train.batch(indices)
        if params["feature_dropout"]:
            feats = drop_channels(feats, float(params["feature_dropout"]), self.generator)
        cls_scores, bbox_preds = self.thin(*feats)
        cls_loss, box_loss = fsaf_batch_loss(cls_scores, bbox_preds, gts, targets)
        loss = cls_loss + box_loss
        if not torch.isfinite(loss):
            raise FitError(f"the loss became {float(loss)} at step {step} (lr {lr}): lower --lr")
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.thin.parameters(), params["grad_clip"])
        self.optimizer.step()
        value = loss.item()
        self.running = value if self.running is None else 0.9 * self.running + 0.1 * value
        return float(cls_loss.detach()), float(box_loss.detach())

    def evaluate(self, step):
        """A history entry for `step`: time, running loss and, with a held-out set, its AP and AP50."""
        entry = {"step": step, "wall_s": round(time.time() - self.started, 2),
                 "loss": None if self.running is None else round(self.running, 4)}
        if self.held_out is not None:
            self.thin.eval()
            entry["ap"], entry["ap50"] = score(self.eval_ann, detections_on(self.held_out, self.thin))
            self.thin.train()
            self.say(f"step {step}: AP {entry['ap']:.3f} AP50 {entry['ap50']:.3f} ({entry['wall_s']:.0f} s)")
        self.history.append(entry)


def drop_channels(features, rate, generator):
    """Channel dropout (whole feature maps zeroed with probability `rate`, the rest scaled by 1 / (1 - rate)),
    drawn from the fit's own generator so that the fit stays deterministic for a seed."""
    if not 0.0 <= rate < 1.0:
        raise FitError(f"feature_dropout must be in [0, 1), got {rate}")
    out = []
    for feat in features:
        keep = (torch.rand(feat.shape[0], feat.shape[1], 1, 1, generator=generator) >= rate).to(feat.dtype)
        out.append(feat * keep / (1.0 - rate))
    return out



def _optimizer(thin, params):
    """mmdetection's SGD (momentum 0.9, weight decay 1e-4; the default), or Adam (an option for short
    fits; the partial curves in benchmarks/results/fit_generated*.json do not yet show either ahead)."""
    if params["optimizer"] == "sgd":
        return torch.optim.SGD(thin.parameters(), lr=params["lr"], momentum=params["momentum"],
                               weight_decay=params["weight_decay"])
    return torch.optim.Adam(thin.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])


def _learning_rate(params, step):
    """Linear warm-up from 0.001 of the rate (mmdetection's), then a step down x0.1 at 2/3 and 11/12
    of the steps (the 1x schedule's epochs 8 and 11 of 12)."""
    warmup = int(params["warmup_steps"])
    rate = float(params["lr"])
    steps = int(params["steps"])
    if warmup and step <= warmup:
        return rate * (0.001 + (1 - 0.001) * step / float(warmup))
    if step > steps * 11 // 12:
        return rate * 0.01
    if step > steps * 2 // 3:
        return rate * 0.1
    return rate
