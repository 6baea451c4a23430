"""COCO bbox scoring (recipe step 6, second half): the 12-stat table and per-class AP.

The reference scorer is pycocotools with `maxDets = [100, 300, 1000]`, as mmdetection's evaluation
sets it (spec `evaluation`). faster-coco-eval is an optional, faster scorer with the same
accumulation arrays. Both scorers' arrays go through one summariser that follows pycocotools'
`summarize()` line by line (spec `evaluation.stats`), because faster-coco-eval's own summary reads
the first AP line at maxDets[-1] instead of 100 and would not give the recipe's table.

Every metrics record carries the annotation file's sha256 and the number of images scored, so a
run on a different or partial val2017 cannot pass for the recipe's. The annotation file is read and
checked once (`data.read_annotation_file`, the check every verb shares) and the scorer is given
that very content, not the path to read again.
"""
import contextlib
import copy
import io
import numbers
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .data import read_annotation_file
from .errors import ResultsError
from .fileio import read_json
from .jsonio import array, integer, nullable, obj, real_number, short_repr, text_value
from .results_json import detection_problem, read_results_json
from .spec import accuracy_reference, load_recipe_spec

PYCOCOTOOLS = "pycocotools"
# the scorers every verb offers (--scorer), derived from here; pycocotools is the recipe's own
SCORERS = (PYCOCOTOOLS, "faster-coco-eval")
DEFAULT_SCORER = PYCOCOTOOLS


def evaluation_spec() -> Dict[str, Any]:
    return load_recipe_spec()["evaluation"]


def stat_names() -> List[str]:
    return list(accuracy_reference()["stat_names"])


def _check_results(results, gt_image_ids, gt_category_ids, source, drop_degenerate=False):
    """Validate detections before a scorer sees them (pycocotools only asserts, without saying why).

    A box with width or height <= 0 cannot be scored (pycocotools takes a negative size into its
    areas and overlaps as it is): an error naming the first such detection, or with
    `drop_degenerate` left out. Returns (the detections to score, how many were dropped).
    """
    if not isinstance(results, list):
        raise ResultsError(f"{source}: results must be a list of detections")
    unknown_images, unknown_cats = set(), set()
    kept = []
    for number, det in enumerate(results):
        bbox, image_id, category_id = _checked_detection(det, number, source)
        if bbox[2] <= 0 or bbox[3] <= 0:
            if not drop_degenerate:
                raise ResultsError(
                    f"{source}: detection {number} (0-based) has a box of width {bbox[2]} and height {bbox[3]}: "
                    "a box with no area cannot be scored; fix the results, or drop such rows with --drop-degenerate "
                    f"(they are counted in the metrics record): {det!r}")
            continue
        kept.append(det)
        if not isinstance(image_id, numbers.Integral) or image_id not in gt_image_ids:
            unknown_images.add(repr(image_id))
        if not isinstance(category_id, numbers.Integral) or category_id not in gt_category_ids:
            unknown_cats.add(repr(category_id))
    if unknown_images:
        raise ResultsError(f"{source}: {len(unknown_images)} image id(s) not in the annotation file, "
                           f"e.g. {sorted(unknown_images)[:5]}")
    if unknown_cats:
        raise ResultsError(f"{source}: category id(s) {sorted(unknown_cats)[:10]} not in the annotation file "
                           "(wrong label -> category map?)")
    return kept, len(results) - len(kept)


def _checked_detection(det, number, source):
    """(bbox as 4 floats, image_id, category_id) of detection `number`, checked by the results format's
    one rule (fsaf_repro.results_json.detection_problem)."""
    problem = detection_problem(det)
    if problem:
        raise ResultsError(f"{source}: detection {number} (0-based) {problem}, got {short_repr(det)}")
    return [float(v) for v in det["bbox"]], det["image_id"], det["category_id"]


def _empty_results_coco(coco_cls, gt):
    """A detections object with no detections: scoring it gives AP 0, where loadRes([]) would crash."""
    dt = coco_cls()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                  "annotations": []}
    dt.createIndex()
    return dt


def _accumulate(coco_cls, cocoeval_cls, dataset, results, image_ids, max_dets):
    """Run one scorer's evaluate + accumulate on the parsed ground truth; both scorers take the same calls."""
    with contextlib.redirect_stdout(io.StringIO()):  # both scorers narrate every step
        gt = coco_cls()
        # the scorers add keys ("ignore") to the ground-truth records: `dataset` is this call's own parse
        gt.dataset = dataset
        gt.createIndex()
        # loadRes adds keys to each detection: give it copies, the caller's list stays as it was
        dt = gt.loadRes([dict(det) for det in results]) if results else _empty_results_coco(coco_cls, gt)
        evaluator = cocoeval_cls(gt, dt, "bbox")
        evaluator.params.maxDets = list(max_dets)
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _accumulate_pycocotools(dataset, results, image_ids, max_dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    return _accumulate(COCO, COCOeval, dataset, results, image_ids, max_dets)


def faster_coco_eval_availability() -> Tuple[bool, str]:
    """(ok, reason): whether the optional faster-coco-eval scorer can run here."""
    try:
        import faster_coco_eval  # noqa: F401
        from faster_coco_eval import COCO, COCOeval_faster  # noqa: F401
    except ImportError as exc:
        return False, f"faster-coco-eval is not installed (pip install 'fsaf-repro[fast-eval]'): {exc}"
    return True, ""


def _accumulate_faster(dataset, results, image_ids, max_dets):
    ok, reason = faster_coco_eval_availability()
    if not ok:
        raise ResultsError(reason)
    # The 1.7.x (Python 3.7) and 1.8.x APIs agree on these calls: COCO, loadRes, COCOeval_faster
    # (gt, dt, iouType), params, evaluate(), accumulate(), eval["precision"/"recall"].
    from faster_coco_eval import COCO, COCOeval_faster
    return _accumulate(COCO, COCOeval_faster, dataset, results, image_ids, max_dets)


def summarize(precision: np.ndarray, recall: np.ndarray, params: Any,
              stat_defs: Optional[Sequence[Dict[str, Any]]] = None) -> List[float]:
    """The 12 stats from accumulated arrays, exactly as pycocotools' summarize() computes them.

    precision [T, R, K, A, M], recall [T, K, A, M]; a stat with no ground truth in its range is -1.
    """
    stat_defs = stat_defs or evaluation_spec()["stats"]
    area_labels = list(params.areaRngLbl)
    max_dets = list(params.maxDets)
    iou_thrs = np.asarray(params.iouThrs)
    stats = []
    for definition in stat_defs:
        area = area_labels.index(definition["area"])
        md = max_dets.index(definition["max_dets"])
        values = precision if definition["kind"] == "AP" else recall
        if definition["iou"] is not None:
            values = values[np.where(np.isclose(iou_thrs, definition["iou"]))[0]]
        values = values[..., area, md]
        valid = values[values > -1]
        stats.append(float(np.mean(valid)) if valid.size else -1.0)
    return stats


def per_class_ap(precision: np.ndarray, category_ids: Sequence[int], names: Sequence[str]) -> List[Dict[str, Any]]:
    """AP@[.5:.95] per category (area all, largest maxDets), None where the class has no ground truth."""
    table = []
    for k, (cid, name) in enumerate(zip(category_ids, names)):
        values = precision[:, :, k, 0, -1]
        valid = values[values > -1]
        table.append({"name": name, "category_id": int(cid), "ap": float(np.mean(valid)) if valid.size else None})
    return table


def evaluate_results(annotation_file: str, results: Union[str, List[Dict[str, Any]]], scorer: str = DEFAULT_SCORER,
                     image_ids: Optional[Sequence[int]] = None, drop_degenerate: bool = False) -> Dict[str, Any]:
    """Score COCO bbox results (a list, or the path of a results json) against `annotation_file`.

    image_ids: the images the run covered (default: every image of the file). A detection whose box
    has width or height <= 0 is an error naming it, or with `drop_degenerate` is left out and
    counted. Returns a dict with "stats" (12 floats in the recipe's order), "stat_names",
    "per_class", "annotation_file", "annotation_sha256", "num_images", "num_detections" (scored),
    "degenerate_dropped", "scorer", "max_dets".
    """
    if scorer not in SCORERS:
        raise ResultsError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
    annotation_file = os.fspath(annotation_file)
    # the ground truth first: a fault in it must not be blamed on the results
    annotations = read_annotation_file(annotation_file, need_annotations=True)
    source = "results"
    if not isinstance(results, list):
        source = os.fspath(results)
        results = read_results_json(source)
    data, sha = annotations.data, annotations.sha256
    gt_image_ids = {image.image_id for image in annotations.images}
    categories = sorted(data["categories"], key=lambda cat: cat["id"])
    results, dropped = _check_results(results, gt_image_ids, {cat["id"] for cat in categories}, source,
                                      drop_degenerate=drop_degenerate)
    image_ids = _scored_image_ids(image_ids, gt_image_ids, results, annotation_file, source)
    max_dets = evaluation_spec()["max_dets"]
    accumulate = _accumulate_pycocotools if scorer == PYCOCOTOOLS else _accumulate_faster
    evaluator = accumulate(data, results, image_ids, max_dets)
    precision = np.asarray(evaluator.eval["precision"])
    recall = np.asarray(evaluator.eval["recall"])
    return {
        "stats": summarize(precision, recall, evaluator.params),
        "stat_names": stat_names(),
        "per_class": per_class_ap(precision, [cat["id"] for cat in categories],
                                  [cat["name"] for cat in categories]),
        "annotation_file": annotation_file,
        "annotation_sha256": sha,
        "num_images": len(image_ids),
        "num_detections": len(results),
        "degenerate_dropped": dropped,
        "scorer": scorer,
        "max_dets": list(max_dets),
        "_precision": precision,
        "_recall": recall,
    }


def _scored_image_ids(image_ids, gt_image_ids, results, annotation_file, source):
    """The ids to score, sorted: `image_ids` (all of the file's when None), each in the file, and no
    detection outside them."""
    if image_ids is None:
        image_ids = sorted(gt_image_ids)
    else:
        image_ids = sorted(set(image_ids))
        missing = [i for i in image_ids if i not in gt_image_ids]
        if missing:
            raise ResultsError(f"image ids {missing[:5]} are not in {annotation_file}")
        outside = {det["image_id"] for det in results} - set(image_ids)
        if outside:
            raise ResultsError(f"{source}: detections for {len(outside)} image(s) outside the scored image ids, "
                               f"e.g. {sorted(outside)[:5]}")
    if not image_ids:
        raise ResultsError(f"no images to score in {annotation_file}")
    return image_ids


def metrics_record(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The json-safe part of `evaluate_results`' answer (drops the raw arrays)."""
    return {key: value for key, value in metrics.items() if not key.startswith("_")}


def format_recipe_table(stats: Sequence[float], stat_defs: Optional[Sequence[Dict[str, Any]]] = None) -> str:
    """The 12 lines pycocotools prints, in the recipe's section 6.1 wording."""
    stat_defs = stat_defs or evaluation_spec()["stats"]
    if len(stats) != len(stat_defs):
        raise ResultsError(f"expected {len(stat_defs)} stats, got {len(stats)}")
    lines = []
    for definition, value in zip(stat_defs, stats):
        title, kind = ("Average Precision", "(AP)") if definition["kind"] == "AP" else ("Average Recall", "(AR)")
        iou = "0.50:0.95" if definition["iou"] is None else f"{definition['iou']:0.2f}"
        area, max_dets = definition["area"], definition["max_dets"]
        lines.append(f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {value:0.3f}")
    return "\n".join(lines)


# one (category, AP) cell of the per-class table: the header's and every row's
_PER_CLASS_CELL = "{:<{w}} | {:>5}"


def format_per_class_table(per_class: Sequence[Dict[str, Any]], columns: int = 3) -> str:
    """Per-class AP in a text table, `columns` (category, AP) pairs per row, as mmdetection prints it."""
    cells = [(row["name"], "nan" if row["ap"] is None else f"{row['ap']:0.3f}") for row in per_class]
    name_width = max([len("category")] + [len(name) for name, _ in cells])
    header = " | ".join(_PER_CLASS_CELL.format("category", "AP", w=name_width) for _ in range(columns))
    rule = "-" * len(header)
    lines = [rule, header, rule]
    for start in range(0, len(cells), columns):
        row = cells[start:start + columns]
        lines.append(" | ".join(_PER_CLASS_CELL.format(name, ap, w=name_width) for name, ap in row))
    lines.append(rule)
    return "\n".join(lines)


# A metrics record as `evaluate --metrics-out` and reproduce's evaluate stage write it (metrics_record);
# its readers use the stats (the report also the per-class rows).
METRICS = obj({"stats": array(real_number(), min_length=1)},
              {"per_class": array(obj({"name": text_value(), "ap": nullable(real_number())})),
               "num_images": integer(minimum=0), "num_detections": integer(minimum=0)})


def load_metrics(path: str) -> Dict[str, Any]:
    """A metrics record, checked by METRICS; ResultsError naming the file and field otherwise."""
    return read_json(path, ResultsError, "metrics file", METRICS)


def accuracy_gate(ap: float) -> Tuple[bool, str]:
    """The recipe's accuracy claim on a full COCO val2017 score: AP@[.5:.95] at least the design card's
    minimum and within the recipe's drop of the PyTorch value (spec `accuracy`). (passed, one line)."""
    ref = accuracy_reference()
    minimum, pytorch, drop = ref["min_map"]["value"], ref["pytorch_map"]["value"], ref["max_drop_vs_pytorch"]["value"]
    passed = ap >= minimum and pytorch - ap <= drop
    return passed, ("{} accuracy gate: AP {:.4f} (needs >= {} [{}] and within {} of PyTorch's {} [{}])".format(
        "PASS" if passed else "FAIL", ap, minimum, ref["min_map"]["source"], drop, pytorch,
        ref["max_drop_vs_pytorch"]["source"]))
