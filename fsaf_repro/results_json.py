"""COCO results json files: the list of detections postprocess and infer write and evaluate reads.

Its own module because three stages share the format (postprocess and the streaming runner write it,
evaluate and reproduce read it) and none of them should import another to get at it.
"""
import json
import os
from typing import Any, Dict, Iterable, List

from .errors import ResultsError
from .fileio import atomic_write_text, naming_os_errors, part_suffix, read_json


def write_results_json(path: str, results: List[Dict[str, Any]]) -> str:
    """Write COCO results atomically (temporary file + rename): no half-written json on failure."""
    return atomic_write_text(os.fspath(path), json.dumps(results))


def write_results_streaming(path: str, results: Iterable[Dict[str, Any]]) -> int:
    """Write an iterable of COCO results as a JSON list without holding them all in memory.

    The bytes are those of `json.dump(list(results), f)` (write_results_json's format); written to a
    temporary file and renamed, so a kill never leaves a half-written json.
    """
    path = str(path)
    tmp = path + part_suffix()
    count = 0
    try:
        with naming_os_errors(path), open(tmp, "w") as handle:
            handle.write("[")
            for result in results:
                handle.write((", " if count else "") + json.dumps(result))
                count += 1
            handle.write("]")
        with naming_os_errors(path):
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count


def read_results_json(path: str) -> List[Dict[str, Any]]:
    """Load a COCO results json (a list of detections); ResultsError naming the file when malformed."""
    path = os.fspath(path)
    results = read_json(path, ResultsError, "results file")
    if not isinstance(results, list):
        raise ResultsError(f"results file {path} must hold a JSON list of detections")
    return results
