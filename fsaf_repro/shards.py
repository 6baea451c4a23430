"""Shards of an image set: the deterministic split, each part's record, and the merge of the parts.

A run of `infer --shard i/n` (0 <= i < n) takes the i-th of n contiguous ranges of the image set's
entries (image-id order). The boundaries fall on multiples of the batch size, so every batch of a
shard is a batch of the one-device run: the same images, the same padding. A backend whose result
for an image depends on its batch companions (a batched kernel's summation order) still gives each
image the bytes it gives in a one-device run, and the merged results json is byte-identical to it.

Each part writes its COCO results json and, beside it, `<results>.shard.json` (SHARD_RECORD): which
shard of which run it is (the run key without the shard, so parts of different arguments are never
merged), the entries it covers, the id of every image it covers (an image without a detection leaves
no trace in the results json, so coverage cannot be read from the results), the full set's image ids
(to name the images no part covers), its skipped images and the sha256 of its results file.

`merge_parts` refuses a set of parts that does not cover the image set exactly once, naming the
images missing and the images given twice (with the parts that hold them), and otherwise writes the
parts' results in entry order: the bytes of a one-device run.
"""
import json
import os
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from .errors import OptionError, ResultsError
from .fileio import atomic_write_text, file_sha256
from .jsonio import array, canonical_sha256, integer, load_json, nullable, obj, text_value
from .results_json import read_results_json, write_results_streaming

SHARD_FORMAT = 1
SHARD_SUFFIX = ".shard.json"
# how many ids an error lists before it says "and N more": enough to find them, short enough to read
NAMED_IDS = 20

SHARD_RECORD = obj({
    "format": integer(minimum=SHARD_FORMAT, maximum=SHARD_FORMAT),
    "shard": obj({"index": integer(minimum=0), "count": integer(minimum=1)}),
    "entries": array(integer(minimum=0), length=2),
    "run_key": text_value(non_empty=True),
    "image_ids": array(integer()),
    "set_image_ids": array(integer(), min_length=1),
    "skipped": array(obj({"index": integer(minimum=0), "image_id": integer(), "path": text_value(),
                          "reason": text_value()})),
    "results": text_value(non_empty=True),
    "results_sha256": text_value(non_empty=True),
}, {"device": nullable(text_value())})


def shard_range(total: int, index: int, count: int, batch_size: int) -> Tuple[int, int]:
    """Entries [first, next) of shard `index` of `count` over `total` entries: contiguous, boundaries on
    multiples of `batch_size`, batches shared out as evenly as whole batches allow."""
    batches = -(-int(total) // int(batch_size))
    if count > batches:
        raise OptionError(f"{count} shards of {total} images at batch size {batch_size} ({batches} batches): "
                          f"give at most {batches} shards, or a smaller batch size")
    first_batch, next_batch = index * batches // count, (index + 1) * batches // count
    return min(first_batch * batch_size, total), min(next_batch * batch_size, total)


def run_digest(fields: Dict[str, Any]) -> str:
    """The run key of a shard's journal fields without the shard: equal for the parts of one run."""
    return canonical_sha256(dict((k, v) for k, v in fields.items() if k != "shard"))


def shard_record_path(results_path: str) -> str:
    return str(results_path) + SHARD_SUFFIX


def write_shard_record(results_path, shard, entries, fields, image_ids, set_image_ids, skipped, device=None):
    """`<results>.shard.json` of a finished part (see the module docstring)."""
    record = {"format": SHARD_FORMAT, "shard": {"index": int(shard[0]), "count": int(shard[1])},
              "entries": [int(entries[0]), int(entries[1])], "run_key": run_digest(fields),
              "image_ids": [int(i) for i in image_ids], "set_image_ids": [int(i) for i in set_image_ids],
              "skipped": list(skipped), "results": os.path.basename(str(results_path)),
              "results_sha256": file_sha256(str(results_path)), "device": device}
    atomic_write_text(shard_record_path(results_path), json.dumps(record))
    return shard_record_path(results_path)


def _named(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:NAMED_IDS])
    return shown + (f" and {len(ids) - NAMED_IDS} more" if len(ids) > NAMED_IDS else "")


def load_part(path: str) -> Dict[str, Any]:
    """A part's shard record, given the record or its results json, checked against its results file."""
    path = str(path)
    record_path = path if path.endswith(SHARD_SUFFIX) else shard_record_path(path)
    if not os.path.isfile(record_path):
        raise ResultsError(f"{record_path} does not exist: a part is the results json of `infer --shard i/n` with "
                           f"the {SHARD_SUFFIX} record it writes beside it")
    record = load_json(record_path, ResultsError, "shard record", schema=SHARD_RECORD)
    results = os.path.join(os.path.dirname(record_path), record["results"])
    if not os.path.isfile(results) or file_sha256(results) != record["results_sha256"]:
        raise ResultsError(f"{results} is missing or not the results file its shard record {record_path} was "
                           "written with; run that shard again")
    record["record_path"], record["results_path"] = record_path, results
    return record


def _check_one_run(parts: List[Dict[str, Any]]) -> None:
    first = parts[0]
    for part in parts[1:]:
        if part["run_key"] != first["run_key"] or part["set_image_ids"] != first["set_image_ids"]:
            raise ResultsError(f"{part['record_path']} is a part of another run than {first['record_path']} "
                               "(other arguments, model or images): merge parts of one run only")


def check_coverage(parts: List[Dict[str, Any]]) -> None:
    """ResultsError unless the parts cover the set's images exactly once, naming the missing images and
    the doubled ones with the parts holding them."""
    holders = {}  # type: Dict[int, List[str]]
    for part in parts:
        for image_id in part["image_ids"]:
            holders.setdefault(image_id, []).append(
                "{}/{} ({})".format(part["shard"]["index"], part["shard"]["count"], part["record_path"]))
    expected = parts[0]["set_image_ids"]
    missing = [i for i in expected if i not in holders]
    doubled = [i for i in expected if len(holders.get(i, ())) > 1]
    strange = sorted(set(holders) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} image(s) in no part: ids {_named(missing)}")
    if doubled:
        problems.append("{} image(s) in more than one part: ids {} (first: id {} in shards {})".format(
            len(doubled), _named(doubled), doubled[0], ", ".join(holders[doubled[0]])))
    if strange:
        problems.append(f"{len(strange)} image(s) not in the set: ids {_named(strange)}")
    if problems:
        raise ResultsError("refusing to merge {} part(s) of a {}-image set: {}".format(
            len(parts), len(expected), "; ".join(problems)))


def iter_parts_results(parts: Iterable[Dict[str, Any]]):
    for part in parts:
        yield from read_results_json(part["results_path"])


def merge_parts(paths: Sequence[str], out: str) -> Dict[str, Any]:
    """Merge the parts (results jsons of `infer --shard`, or their shard records) into `out`; returns a
    summary (parts, images, detections, skipped). `<out>.skipped.json` lists the parts' skipped images."""
    if not paths:
        raise ResultsError("merge: no part given")
    parts = [load_part(p) for p in paths]
    if any(os.path.abspath(p["results_path"]) == os.path.abspath(str(out)) for p in parts):
        raise ResultsError(f"merge: the output {out} is one of the parts; write the merged results elsewhere")
    _check_one_run(parts)
    check_coverage(parts)
    parts.sort(key=lambda p: p["entries"][0])
    detections = write_results_streaming(str(out), iter_parts_results(parts))
    skipped = [item for part in parts for item in part["skipped"]]
    skipped_path = str(out) + ".skipped.json"
    if skipped:
        atomic_write_text(skipped_path, json.dumps(skipped, indent=1))
    elif os.path.exists(skipped_path):
        os.remove(skipped_path)
    return {"results": str(out), "parts": len(parts), "images": len(parts[0]["set_image_ids"]) - len(skipped),
            "detections": detections, "skipped": skipped}
