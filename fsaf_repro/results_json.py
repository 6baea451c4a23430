"""COCO results json files: the list of detections postprocess and infer write and evaluate reads.

Its own module because three stages share the format (postprocess and the streaming runner write it,
evaluate and reproduce read it) and none of them should import another to get at it.
"""
import json
import math
import numbers
import os
from typing import Any, Dict, Iterable, List, Optional

from .errors import ResultsError
from .fileio import atomic_output, atomic_write_text, naming_os_errors, read_json
from .jsonio import short_repr


def write_results_json(path: str, results: List[Dict[str, Any]]) -> str:
    """Write COCO results atomically (temporary file + rename): no half-written json on failure."""
    return atomic_write_text(os.fspath(path), json.dumps(results))


def write_results_streaming(path: str, results: Iterable[Dict[str, Any]]) -> int:
    """Write an iterable of COCO results as a JSON list without holding them all in memory.

    The bytes are those of `json.dump(list(results), f)` (write_results_json's format); written to a
    temporary file and renamed, so a kill never leaves a half-written json.
    """
    count = 0
    with atomic_output(path) as tmp, naming_os_errors(path), open(tmp, "w") as handle:
        handle.write("[")
        for result in results:
            handle.write((", " if count else "") + json.dumps(result))
            count += 1
        handle.write("]")
    return count


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def detection_problem(det: Any) -> Optional[str]:
    """What keeps `det` from being a COCO detection, or None: the one rule for results from a file or
    in memory. Integer ids (a boolean is not an id: json reads true as an int subclass, which a scorer
    would count as 1), a bbox of 4 finite numbers (not a string of digits) and a finite numeric score."""
    if not isinstance(det, dict) or not all(key in det for key in ("image_id", "category_id", "bbox", "score")):
        return "needs image_id, category_id, bbox [x, y, w, h] and score"
    if not (_is_int(det["image_id"]) and _is_int(det["category_id"])):
        return "needs an integer image id and category id (image_id, category_id; not booleans, not text)"
    bbox = det["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_finite(v) for v in bbox):
        return "needs a bbox of 4 finite numbers [x, y, w, h]"
    if not _is_finite(det["score"]):
        return "needs a finite numeric score"
    return None


def check_detections(results: Any, source: str) -> List[Dict[str, Any]]:
    """`results` when it is a list of detections (`detection_problem`); ResultsError naming `source` and
    the first bad detection (0-based) otherwise."""
    if not isinstance(results, list):
        raise ResultsError(f"{source}: results must be a JSON list of detections, got {type(results).__name__}")
    for number, det in enumerate(results):
        problem = detection_problem(det)
        if problem:
            raise ResultsError(f"{source}: detection {number} (0-based) {problem}, got {short_repr(det)}")
    return results


def read_results_json(path: str) -> List[Dict[str, Any]]:
    """Load a COCO results json (a list of detections, each checked by `detection_problem`);
    ResultsError naming the file and the first offending detection when malformed."""
    path = os.fspath(path)
    return check_detections(read_json(path, ResultsError, "results file"), f"results file {path}")
