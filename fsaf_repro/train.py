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
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

from .errors import FitError, OptionError
from .fileio import remove_stale_scratch, scratch_stem
from .fit_progress import BAR_AND_TIMED_LINES, FitProgress, progress_bar
from .fsaf_loss import fsaf_batch_loss, image_targets
from .options import (BATCH_SIZE, COUNT, IMAGE_SIDE, NON_NEGATIVE_INT, POSITIVE_INT, Choice, Integer, Real,
                      check_options)
from .spec import model_constants
from .thin_head import ThinNeckHead, embed_thin_state_dict
from .torch_threads import set_intra_op_threads


# The fit's implementation version: part of reproduce's checkpoint-stage key, so a change to the training rule,
# the generator's classes style or the defaults below refits instead of reusing weights fitted the old way.
FIT_VERSION = 1

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
        bar = progress_bar(count, desc, progress, "img")
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
    "height": 256, "width": 384,      # reproduce_options.EMBEDDED_INPUT_HW
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


def fit_generated(output, seed=0, data_seed=1000, eval_seed=None, eval_images=0, threads=None,
                  reporting=BAR_AND_TIMED_LINES, workdir=None, **overrides):
    """Fit neck and head on a generated set and write a checkpoint in the official layout to `output`.

    seed: the seeded weights (backbone) and the trained layers' init and batch order; data_seed: the
    training set's generator seed (evaluate on another). eval_images > 0 generates a held-out set with
    eval_seed (default data_seed + 1) and scores the thin network on it every `reporting.eval_every` steps
    (and at the end). The running loss, elapsed time and ETA are said to `reporting.log` every
    `reporting.interval_s` seconds (FitProgress) and, with `reporting.log_every` > 0, every so many steps
    too. Deterministic for a seed and thread count. Returns a summary dict (history of loss, AP).
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
                                       eval_images, reporting.bar)
        say = reporting.log or (lambda message: print(message, file=sys.stderr))
        fit = _Fit(params, sets, seed, started, say)
        features_s = time.time() - started
        train_s = fit.run(reporting)
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

    def run(self, reporting):
        """All the steps (evaluating and logging as `reporting` asks); returns the training seconds."""
        steps = int(self.params["steps"])
        eval_every, log_every = reporting.eval_every, reporting.log_every
        bar = progress_bar(steps, "fit", reporting.bar, "step")
        # by time, into the log (a progress bar shows only on a terminal, and is not in a log file)
        timed = FitProgress(steps, self.say, reporting.interval_s)
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
