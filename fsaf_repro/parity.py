"""Comparing two stages' detections (torch vs ONNX Runtime vs om): the numbers of the parity table.

Both sides are the padded network outputs of one batch: dets [B, 100, 5] and labels [B, 100], rows with
score 0 being padding. Detections are paired in rank order (both sides sort by score); a pair matches
when its labels agree and its boxes overlap with IoU >= `match_iou`.
"""
import enum
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .spec import parity_tolerances


def valid_rows(dets: np.ndarray) -> np.ndarray:
    """Indices of the non-padding rows (score > 0) of one image's dets [100, 5]."""
    return np.nonzero(dets[:, 4] > 0)[0]


def box_iou_pairs(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of row i of `boxes_a` with row i of `boxes_b` (both [K, 4])."""
    inter_w = np.clip(np.minimum(boxes_a[:, 2], boxes_b[:, 2]) - np.maximum(boxes_a[:, 0], boxes_b[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(boxes_a[:, 3], boxes_b[:, 3]) - np.maximum(boxes_a[:, 1], boxes_b[:, 1]), 0, None)
    inter = inter_w * inter_h
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        # Degenerate (zero-area) boxes have no IoU: they match when their corners agree within the
        # fp32 box tolerance.
        corners_agree = np.abs(boxes_a - boxes_b).max(axis=1) <= parity_tolerances()["box_abs_tol_px"]
        iou = np.where(union > 0, inter / union, corners_agree.astype(float))
    return iou


def _pair_rows(ref, ref_labels, other, other_labels):
    """Pair each reference row with the unused same-label row closest in (box, score).

    Pairing by closeness rather than by rank keeps the comparison meaningful when scores tie
    (two runtimes may order equal scores differently). Returns (ref_index, other_index) pairs;
    reference rows without a same-label partner are left out.
    """
    unused = list(range(len(other)))
    pairs = []
    for i in range(len(ref)):
        candidates = [j for j in unused if other_labels[j] == ref_labels[i]]
        if not candidates:
            continue
        distances = np.abs(other[candidates] - ref[i]).max(axis=1)
        best = candidates[int(np.argmin(distances))]
        unused.remove(best)
        pairs.append((i, best))
    return pairs


def compare_detections(ref_dets: np.ndarray, ref_labels: np.ndarray, dets: np.ndarray, labels: np.ndarray,
                       match_iou: Optional[float] = None) -> Dict[str, Any]:
    """Per-batch comparison record of two stages' padded outputs.

    Returns counts per image, whether counts and labels agree, the largest box and score
    differences over paired rows, and the match rate (reference detections paired with a
    same-label detection at IoU >= match_iou).
    """
    if match_iou is None:
        match_iou = parity_tolerances()["match_iou"]
    ref_dets = np.asarray(ref_dets, dtype=np.float64)
    dets = np.asarray(dets, dtype=np.float64)
    ref_labels = np.asarray(ref_labels)
    labels = np.asarray(labels)
    counts_ref, counts_other = [], []
    max_box_diff = 0.0
    max_score_diff = 0.0
    matched = 0
    paired = 0
    for image in range(ref_dets.shape[0]):
        rows_ref = valid_rows(ref_dets[image])
        rows_other = valid_rows(dets[image])
        counts_ref.append(int(rows_ref.size))
        counts_other.append(int(rows_other.size))
        a_all = ref_dets[image][rows_ref]
        b_all = dets[image][rows_other]
        pairs = _pair_rows(a_all, ref_labels[image][rows_ref], b_all, labels[image][rows_other])
        if not pairs:
            continue
        a = a_all[[i for i, _ in pairs]]
        b = b_all[[j for _, j in pairs]]
        iou = box_iou_pairs(a[:, :4], b[:, :4])
        max_box_diff = max(max_box_diff, float(np.abs(a[:, :4] - b[:, :4]).max()))
        max_score_diff = max(max_score_diff, float(np.abs(a[:, 4] - b[:, 4]).max()))
        matched += int(np.sum(iou >= match_iou))
        paired += len(pairs)
    total_ref = int(sum(counts_ref))
    return {
        "images": int(ref_dets.shape[0]),
        "detections_ref": total_ref,
        "detections_other": int(sum(counts_other)),
        "counts_equal": counts_ref == counts_other,
        "labels_equal": paired == total_ref and counts_ref == counts_other,
        "label_agreement": (paired / float(total_ref)) if total_ref else 1.0,
        "max_box_abs_diff": max_box_diff,
        "max_score_abs_diff": max_score_diff,
        "match_rate": (matched / float(total_ref)) if total_ref else 1.0,
        "match_iou": match_iou,
    }


def within_tolerances(record: Dict[str, Any], box_tol: Optional[float] = None,
                      score_tol: Optional[float] = None) -> bool:
    """True when a comparison record shows the same detections within the parity tolerances."""
    tolerances = parity_tolerances()
    if box_tol is None:
        box_tol = tolerances["box_abs_tol_px"]
    if score_tol is None:
        score_tol = tolerances["score_abs_tol"]
    return (record["counts_equal"] and record["labels_equal"]
            and record["max_box_abs_diff"] <= box_tol and record["max_score_abs_diff"] <= score_tol)


def fp16_agreement(ref_dets: np.ndarray, ref_labels: np.ndarray, dets: np.ndarray, labels: np.ndarray,
                   box_tol: Optional[float] = None, score_tol: Optional[float] = None) -> Dict[str, Any]:
    """How many reference detections an fp16 side reproduces: those with an unused same-label detection
    within both `box_tol` px (largest corner difference) and `score_tol` (default: the spec's fp16_om_*).

    The rule for an fp16 side (the om, its CPU stand-in), where the largest difference over all rows
    means nothing: a detection near the score threshold or the top-100 cut-off may be kept on one side
    only, and is then paired with another object. Returns {"found", "total", "rate", "box_tol", "score_tol"}.
    """
    tolerances = parity_tolerances()
    box_tol = tolerances["fp16_om_box_abs_tol_px"] if box_tol is None else box_tol
    score_tol = tolerances["fp16_om_score_abs_tol"] if score_tol is None else score_tol
    found = total = 0
    for image in range(np.asarray(ref_dets).shape[0]):
        free = list(valid_rows(dets[image]))
        for i in valid_rows(ref_dets[image]):
            total += 1
            for j in free:
                if (labels[image][j] == ref_labels[image][i]
                        and np.abs(np.asarray(dets[image][j][:4], np.float64)
                                   - np.asarray(ref_dets[image][i][:4], np.float64)).max() <= box_tol
                        and abs(float(dets[image][j][4]) - float(ref_dets[image][i][4])) <= score_tol):
                    found += 1
                    free.remove(j)
                    break
    return {"found": found, "total": total, "rate": (found / float(total)) if total else 1.0,
            "box_tol": box_tol, "score_tol": score_tol}


# --- the sides of reproduce's parity batch, told apart by role (never by their labels) --------------


class SideRole(str, enum.Enum):
    """What a parity side is: it decides what the side is paired with and whether its mAP (from the
    data set run of its backend) is the mAP of the model it ran here."""

    REFERENCE = "reference"  # torch on the checkpoint
    ONNX_NMS = "onnx-nms"  # an ONNX Runtime backend on the onnx-nms export (NMS in the graph)
    RAW_HOST_NMS = "raw-host-nms"  # onnxruntime on the raw export, NMS on the host
    OM = "om"  # the first om backend (ascend-nms export, converted by atc)
    CHECKPOINT = "checkpoint"  # another backend on the checkpoint (the om's fp16 CPU stand-in)

    @property
    def runs_the_dataset_model(self) -> bool:
        # the raw export is run only here: its backend's data set metrics are of the onnx-nms export
        return self is not SideRole.RAW_HOST_NMS


@dataclass(frozen=True)
class ParitySide:
    """One side of the parity batch: its role, the label it is reported under, the backend that runs it."""

    role: SideRole
    label: str
    backend: str

    def as_record(self) -> Dict[str, str]:
        return {"role": self.role.value, "label": self.label, "backend": self.backend}

    @classmethod
    def from_record(cls, record: Dict[str, str]) -> "ParitySide":
        return cls(SideRole(record["role"]), record["label"], record["backend"])


def pairs_wanted(sides: Sequence[ParitySide]) -> List[Tuple[ParitySide, ParitySide]]:
    """(reference, other) pairs compared: the reference against every other side, and the first ONNX
    Runtime side on the onnx-nms export against the om (both with NMS in the graph)."""
    reference = next(side for side in sides if side.role is SideRole.REFERENCE)
    wanted = [(reference, other) for other in sides if other is not reference]
    onnx = next((side for side in sides if side.role is SideRole.ONNX_NMS), None)
    om = next((side for side in sides if side.role is SideRole.OM), None)
    if onnx is not None and om is not None:
        wanted.append((onnx, om))
    return wanted
