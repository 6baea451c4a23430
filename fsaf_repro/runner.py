"""The streaming runner: images -> backend -> COCO results json, resumable (CLI verb `infer`).

Pipeline: `fsaf_repro.data.iter_batches` decodes and letterboxes images on worker threads and keeps
`prefetch` batches ready, so the backend is not starved; the backend turns each batch into padded
detections; `fsaf_repro.postprocess` maps them to COCO result records in original-image pixels.

Resume. Every finished batch is appended to a journal (`<results>.journal`, JSON lines, flushed and
fsynced) whose first line holds the run key: a hash of everything that decides the results (the
annotation file's sha256, the image directory, the image count, canvas size, input dtype, backend and
its options, model file sha256, batch size). Options that change no finished batch's results (skip
policy, workers, prefetch, progress) are not in it, so a run stopped by a bad image can be resumed
with --skip-bad as its message advises. Each batch line names the entries it covers ([first, next))
and the sha256 of every image file it read there, skipped ones included (null: unreadable).

Started again with the same key, the runner keeps a finished batch only when the images behind it
still have those bytes and, if it skipped an image, only under skip_bad (a run without it must stop
on that image, as the user asked); a later line for the same entries supersedes an earlier one. It
redoes the other batches and the entries no line covers, then writes the results json from the
journal in image order: the same bytes as an uninterrupted run (redone batches keep their original
boundaries, so a per-image backend gives each image the same result). A line cut by a kill is
dropped; a line damaged in the middle is an error naming the line. A journal of other arguments,
or of the earlier format without image digests (nothing in it can be checked), is refused naming
the journal and --restart.

Each batch goes through the backend's `run_padded` (fsaf_repro.backends.base): a static-batch model
gets the last partial batch padded with zero images and the padding's outputs discarded. Unreadable
images stop the run with the file named (finished batches stay in the journal), or, with skip_bad,
are skipped and listed in the summary and `<results>.skipped.json`.
"""
import bisect
import json
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from . import __version__
from .data import iter_batches
from .errors import BackendError, ImageReadError, JournalMismatch, ResultsError
from .fileio import atomic_write_text, file_sha256, naming_os_errors
from .locking import run_lock
from .perf import dataset_records
from .postprocess import detections_to_coco
from .jsonio import (any_value, array, canonical_json, canonical_sha256, check, integer, nullable, obj, parse_json,
                     text_value, validate)
from .results_json import detection_problem, write_results_streaming
from .shards import shard_range, write_shard_record
from .spec import load_recipe_spec, section_digest

# 2: batch lines name the entries they cover and the sha256 of each image read there. Format-1
# journals have no digests: their batches cannot be checked against the images and are refused.
JOURNAL_FORMAT = 2
INFER_SPEC_SECTIONS = ("input", "model", "coco_classes", "coco_category_ids")


def run_key_fields(image_set, backend_name, backend_options, model_path, batch_size, input_dtype):
    """Everything that decides the results of a run, and nothing that does not: the skip policy,
    workers, prefetch and progress change no finished batch, so a run resumed with other values of
    them keeps its journal (each batch line says for itself whether it skipped an image)."""
    model = None
    if model_path:
        if not os.path.isfile(str(model_path)):
            raise BackendError(f"model file {model_path} does not exist")
        model = {"path": os.path.abspath(str(model_path)), "sha256": file_sha256(str(model_path))}
    return {
        "format": JOURNAL_FORMAT,
        "annotation_sha256": image_set.annotation_sha256,
        "image_dir": os.path.abspath(image_set.image_dir),
        "num_images": len(image_set),
        "first_last_image_ids": [image_set.metas[0].image_id, image_set.metas[-1].image_id],
        "canvas": [image_set.height, image_set.width],
        "input_dtype": input_dtype,
        "backend": backend_name,
        "backend_options": backend_options,
        "model": model,
        "batch_size": int(batch_size),
        # what decides each image's detections besides the model: normalisation (input), decoding and
        # thresholds (model), label -> category id (coco_category_ids), and the code and decoder
        "spec": dict((name, section_digest(load_recipe_spec()[name])) for name in INFER_SPEC_SECTIONS),
        "fsaf_repro": __version__,
        "opencv": cv2.__version__,
    }


class Journal:
    """Append-only JSON-lines record of finished batches; line 1 is the header with the run key.

    Each batch line covers the entries [first, next) of the image set. In memory the journal keeps,
    per batch in force, its range, the byte offset of its line, its result count and skipped images
    (and, until `check_images`, its image digests): the detections stay on disk until `iter_results`
    streams them into the results json, so memory does not grow with the detections. A line whose
    range overlaps a later line's is superseded by it (a redone batch).
    """

    def __init__(self, path, fields):
        self.path = str(path)
        self.fields = fields
        self.key = canonical_sha256(fields)
        self._by_first = {}  # first entry index -> summary of the batch line in force there
        self._firsts = []  # sorted keys of _by_first
        self._size = 0  # bytes of complete lines: the offset of the next line
        self._lines = 0  # complete lines: the next line's number is one more
        self._handle = None

    def open(self):
        """Read an existing journal of the same run (dropping a torn last line) or start a new one."""
        if os.path.exists(self.path):
            self._read_existing()
            self._handle = open(self.path, "ab")
        else:
            self._handle = open(self.path, "wb")
            self._write_line({"run_key": self.key, "fields": self.fields})
        return self

    def _read_existing(self):
        with open(self.path, "rb") as handle:
            data = handle.read()
        lines = data.split(b"\n")
        # Everything after the last newline is a line the previous run was killed while writing.
        complete, torn = lines[:-1], lines[-1]
        if not complete:
            raise ResultsError(f"journal {self.path} has no complete header line; delete it to start the run again"
                               )
        try:
            header = parse_json(complete[0], ResultsError, "header")
        except ResultsError as exc:
            raise ResultsError(f"journal {self.path} has an unreadable header ({exc}); delete it to start "
                               "again") from None
        if not isinstance(header, dict):
            raise ResultsError(f"journal {self.path} line 1 is not a journal header (a JSON object with the run key); "
                               "delete it to start again")
        # a header of an earlier format (no fields object) is refused below by its format, naming --restart
        old = header.get("fields") if isinstance(header.get("fields"), dict) else {}
        if old.get("format") != JOURNAL_FORMAT:
            raise JournalMismatch(
                "journal {} was written by an earlier fsaf-repro (journal format {}, this one writes {}) that "
                "did not record which image bytes each batch read, so none of its batches can be checked "
                "against the images now in the folder; pass --restart (or delete it) to run again".format(
                    self.path, old.get("format", "unknown"), JOURNAL_FORMAT))
        if header.get("run_key") != self.key:
            changed = sorted(k for k in set(old) | set(self.fields) if old.get(k) != self.fields.get(k))
            raise JournalMismatch(
                "journal {} belongs to a run with other arguments (differs in: {}); use the same arguments "
                "to resume it, or delete it (or pass --restart) to start a new run".format(
                    self.path, ", ".join(changed) or "run key"))
        offset = len(complete[0]) + 1
        for number, raw in enumerate(complete[1:], start=2):
            entry = _parse_entry(raw, self.path, number, self.fields["num_images"])
            self._install(_summary_of(entry, offset, number, keep_digests=True))
            offset += len(raw) + 1
        self._size = offset
        self._lines = len(complete)
        if torn:
            with open(self.path, "r+b") as handle:
                handle.truncate(self._size)

    def _install(self, summary):
        """Put a batch line in force, superseding every earlier line whose range overlaps it."""
        first, end = summary["first"], summary["next"]
        position = bisect.bisect_left(self._firsts, first)
        if position and self._by_first[self._firsts[position - 1]]["next"] > first:
            position -= 1
        while position < len(self._firsts) and self._firsts[position] < end:
            del self._by_first[self._firsts.pop(position)]
        self._firsts.insert(position, first)
        self._by_first[first] = summary

    def check_images(self, image_set, skip_bad, workers=2):
        """Take out of force each batch whose images changed since it was run, or that skipped an
        image while this run does not skip (it must stop on that image); returns how many."""
        from concurrent.futures import ThreadPoolExecutor
        paths = [meta.path for meta in image_set.metas]
        stale = []
        with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            for first in self._firsts:
                summary = self._by_first[first]
                digests = summary.pop("image_sha256", None)
                if digests is None:
                    continue  # a line of this session: just written from the bytes the loader read
                if summary["skipped"] and not skip_bad:
                    stale.append(first)
                elif list(pool.map(_current_sha256, paths[first:summary["next"]])) != digests:
                    stale.append(first)
        for first in stale:
            self._firsts.remove(first)
            del self._by_first[first]
        return len(stale)

    def gaps(self, total, start=0):
        """The maximal ranges of entries in [start, total) no batch in force covers, in order."""
        ranges, position = [], start
        for first in self._firsts:
            if first > position:
                ranges.append((position, first))
            position = self._by_first[first]["next"]
        if position < total:
            ranges.append((position, total))
        return ranges

    @property
    def entries(self):
        """Summaries of the batches in force, in image order."""
        return [self._by_first[first] for first in self._firsts]

    def _write_line(self, obj):
        line = (canonical_json(obj) + "\n").encode("utf-8")
        offset = self._size
        with naming_os_errors(self.path):
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        self._size += len(line)
        self._lines += 1
        return offset

    def append(self, entry):
        offset = self._write_line(entry)
        self._install(_summary_of(entry, offset, self._lines))

    def iter_results(self):
        """The journaled COCO results of the batches in force, in image order, read back from the file
        (as a resumed run reads them, so an interrupted and an uninterrupted run write identical bytes)."""
        with open(self.path, "rb") as handle:
            for summary in self.entries:
                handle.seek(summary["offset"])
                entry = _parse_entry(handle.readline(), self.path, summary["line"], self.fields["num_images"])
                yield from entry["results"]

    def close(self):
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _current_sha256(path):
    """sha256 of the image file's bytes now; None when it cannot be read (as recorded for such a file)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def _detections_to_coco(outputs, metas, category_ids):
    return detections_to_coco(outputs["dets"], outputs["labels"], metas, category_ids)


# A journal's batch line as Journal writes it; the results of a batch are checked by the
# results format's own rule, since they are copied into the results json as they stand.
JOURNAL_BATCH = obj({"first": integer(minimum=0), "next": integer(minimum=0),
                     "results": array(check(any_value, detection_problem)),
                     "skipped": array(obj({"index": integer(minimum=0), "image_id": integer(),
                                           "path": text_value(), "reason": text_value()})),
                     "image_sha256": array(nullable(text_value()))})


def _parse_entry(raw, path, number, num_images):
    """One batch line of a journal, checked: a damaged line (two writers, a disk error) is an error
    naming the file and the line, never a raw decoder error or a silently shorter result."""
    try:
        entry = validate(parse_json(raw, ResultsError, "the line"), JOURNAL_BATCH, ResultsError, "not a batch record")
    except ResultsError as exc:
        entry, problem = None, str(exc)
    else:
        problem = (f"not a batch record (an object with first < next <= {num_images} and one image_sha256 per "
                   "entry covered)")
    if entry is not None and entry["first"] < entry["next"] <= num_images \
            and len(entry["image_sha256"]) == entry["next"] - entry["first"]:
        return entry
    raise ResultsError(f"journal {path} line {number} is damaged ({problem}); its other batches cannot be trusted "
                       "either: delete the journal (or pass --restart) to run again")


def _summary_of(entry, offset, line, keep_digests=False):
    summary = {"first": entry["first"], "next": entry["next"], "count": len(entry["results"]),
               "skipped": entry["skipped"], "offset": offset, "line": line}
    if keep_digests:
        summary["image_sha256"] = entry["image_sha256"]
    return summary


def _skipped_dict(item):
    return {"index": int(item.index), "image_id": int(item.image_id), "path": item.path, "reason": item.reason}


@dataclass(frozen=True)
class InferOptions:
    """How infer_dataset runs: the loading (batch size, prefetch, workers, skip_bad, input_dtype), what
    enters the journal key (backend_name, backend_options, model_path), the journal's handling
    (keep_journal, restart), the shard (index, count) and its device, and the progress bar."""
    batch_size: Optional[int] = None
    prefetch: int = 2
    workers: int = 2
    skip_bad: bool = False
    progress: bool = True
    input_dtype: str = "float32"
    backend_name: Optional[str] = None
    backend_options: Optional[Dict[str, Any]] = None
    model_path: Optional[str] = None
    keep_journal: bool = False
    restart: bool = False
    shard: Optional[Tuple[int, int]] = None
    device: Optional[Any] = None


def infer_dataset(image_set, backend, results_path, **options):
    """Run `backend` (loaded) over `image_set` into `results_path`, resumably; returns a summary dict.

    The run holds the lock of `results_path` (fsaf_repro.locking) throughout: a second run on the same
    results refuses at once instead of tearing the journal. Options: InferOptions' fields (an unknown
    one is a TypeError naming it).
    """
    checked = InferOptions(**options)
    with run_lock(results_path, "infer"):
        return _infer_dataset(image_set, backend, results_path, checked)


def _checked_batch_size(backend, batch_size):
    """The batch size to run with: the model's static one when it has one (a different request is an
    error), else `batch_size` (default 1)."""
    static = backend.batch_size
    if batch_size is None:
        batch_size = static or 1
    if static is not None and int(batch_size) != int(static):
        raise BackendError(f"the model {backend.model_path} has a static batch size of {static}; run with batch "
                           f"size {static} (not {batch_size})")
    return int(batch_size)


def _open_journal(results_path, fields, restart):
    """The journal beside `results_path` (its folder made if missing), emptied first when `restart`."""
    journal_path = str(results_path) + ".journal"
    results_dir = os.path.dirname(os.path.abspath(str(results_path)))
    if not os.path.isdir(results_dir):
        os.makedirs(results_dir)
    if restart and os.path.exists(journal_path):
        os.remove(journal_path)
    return Journal(journal_path, fields).open()


def _write_skipped(results_path, skipped):
    """`<results>.skipped.json` lists the skipped images; without any, no such file is left."""
    skipped_path = str(results_path) + ".skipped.json"
    if skipped:
        atomic_write_text(skipped_path, json.dumps(skipped, indent=1))
    elif os.path.exists(skipped_path):
        os.remove(skipped_path)


def _session_records(session, wall_seconds, backend_label, input_dtype, batch_size, images_total):
    """The fsaf_repro.perf dataset records of this session's images; none when it ran no inference.

    A resumed session ran only some of the `images_total` images (the rest were timed, if at all, by
    an earlier session that was killed): its records say so (partial), rather than passing a
    figure over part of the data set for one over all of it."""
    done_images, inference_seconds = session["images"], session["inference_seconds"]
    if not (done_images and inference_seconds > 0):
        return []
    return dataset_records(
        done_images, wall_seconds, inference_seconds, session["latencies"], "host", backend_label,
        "fp32" if input_dtype == "float32" else input_dtype, batch_size,
        source=f"measured: fsaf-repro infer, {done_images} images", images_total=images_total)


def _infer_dataset(image_set, backend, results_path, options):
    """Run `backend` (loaded) over `image_set` as `options` (InferOptions) say, resumably; returns a summary dict.

    The summary holds the images done in this session, the entries reused from the journal, the
    skipped images, the timings and the two fsaf_repro.perf dataset records (e2e and inference fps)
    of this session. `shard` (index, count) runs only that part of the set (fsaf_repro.shards) and
    writes its shard record beside the results; `device` is the device it ran on, for that record.
    """
    batch_size = _checked_batch_size(backend, options.batch_size)
    options = replace(options, batch_size=batch_size)
    input_dtype, shard, device = options.input_dtype, options.shard, options.device
    backend_label = options.backend_name or backend.name
    fields = run_key_fields(image_set, backend_label, options.backend_options or {}, options.model_path, batch_size,
                            input_dtype)
    begin, total = 0, len(image_set)
    if shard is not None:
        begin, total = shard_range(total, shard[0], shard[1], batch_size)
        # the shard's journal is its own: another shard's (or the whole run's) is refused by the key
        fields["shard"] = {"index": int(shard[0]), "count": int(shard[1]), "entries": [begin, total]}
        # which device a shard runs on decides none of its results: the parts of one run share their key
        fields["backend_options"] = dict((key, value) for key, value in fields["backend_options"].items()
                                         if key != type(backend).device_option)
    journal = _open_journal(results_path, fields, options.restart)
    session = {"images": 0, "inference_seconds": 0.0, "latencies": []}
    wall_start = time.perf_counter()
    bar = None
    try:
        redone_batches = journal.check_images(image_set, options.skip_bad, options.workers)
        gaps = journal.gaps(total, begin)
        reused = total - begin - sum(end - start for start, end in gaps)
        bar = tqdm(total=total - begin, initial=reused, unit="img", desc="infer", dynamic_ncols=True,
                   disable=not options.progress)
        for start, end in gaps:
            _run_range(image_set, backend, journal, (start, end), options, bar, session)
        skipped = [item for entry in journal.entries for item in entry["skipped"]]
        detections = write_results_streaming(str(results_path), journal.iter_results())
        wall_seconds = time.perf_counter() - wall_start
    finally:
        if bar is not None:
            bar.close()
        journal.close()
    _write_skipped(results_path, skipped)
    if shard is not None:
        write_shard_record(results_path, shard, (begin, total), fields,
                           [m.image_id for m in image_set.metas[begin:total]], image_set.image_ids, skipped,
                           device)
    if not options.keep_journal:
        os.remove(journal.path)
    return {"results": str(results_path), "images": total - begin - len(skipped),
            "images_this_session": session["images"],
            "resumed_from": gaps[0][0] if gaps else total, "reused_images": reused,
            "redone_batches": redone_batches, "skipped": skipped, "detections": detections,
            "batch_size": batch_size, "wall_seconds": wall_seconds, "inference_seconds": session["inference_seconds"],
            "records": _session_records(session, wall_seconds, backend_label, input_dtype, batch_size,
                                        total - begin - len(skipped)), "entries": [begin, total]}


def _run_range(image_set, backend, journal, span, options, bar, session):
    """Run entries [start, end) = `span` batch by batch (loading as `options` say, its batch size checked),
    journaling each batch with the digests of its images."""
    start, end = span
    input_dtype = options.input_dtype
    index_of = dict((meta.image_id, i) for i, meta in enumerate(image_set.metas[start:end], start))
    # Recycled buffers: memory is a fixed pool whatever the run's length; each batch is finished
    # (journaled) before the next is asked for, as recycling requires.
    stream = iter_batches(image_set, options.batch_size, prefetch=options.prefetch, workers=options.workers,
                          skip_bad=options.skip_bad,
                          start=start, stop=end, input_dtype=input_dtype, recycle_buffers=True, hash_images=True)
    try:
        first = start  # the first entry the next batch line covers
        journaled_skips = 0
        while True:
            try:
                batch, metas = next(stream)
            except StopIteration:
                break
            except ImageReadError as exc:
                kept = sum(entry["next"] - entry["first"] for entry in journal.entries)
                raise ImageReadError(
                    f"{exc}; the {kept} images of the finished batches are kept in {journal.path}: run the same "
                    "command again to resume once the image is fixed, or add --skip-bad to skip and list unreadable "
                    "images "
                    "(the finished batches are kept either way)") from None
            count = len(metas)
            # a uint8 model also takes each image's resized height, width
            image_hw = (np.array([[m.new_h, m.new_w] for m in metas], dtype=np.int32)
                        if input_dtype == "uint8" else None)
            t0 = time.perf_counter()
            outputs = backend.run_padded(batch, image_hw=image_hw)  # pads to a static batch size
            elapsed = time.perf_counter() - t0
            session["inference_seconds"] += elapsed
            session["latencies"].append(elapsed)
            last = index_of[metas[-1].image_id]
            new_skips = [s for s in stream.skipped[journaled_skips:] if s.index < last]
            journaled_skips += len(new_skips)
            journal.append(_batch_line(first, last + 1, metas, stream, new_skips,
                                       _detections_to_coco(outputs, metas, image_set.category_ids)))
            bar.update(last + 1 - first)
            first = last + 1
            session["images"] += count
            # drop this batch before waiting for the next one: holding it would add one batch to the
            # peak memory (queue + producer + consumer) whenever the loader is ahead
            del batch, outputs
        if first < end:  # the range ends with images that were all skipped
            leftover = stream.skipped[journaled_skips:]
            journal.append(_batch_line(first, end, [], stream, leftover, []))
            bar.update(end - first)
    finally:
        stream.close()


def _batch_line(first, end, metas, stream, skipped, results):
    """The journal line of entries [first, end): the ids run, the digests of every file read there
    (the bytes the loader decoded; None for a file it could not read) and the results."""
    return {"first": first, "next": end, "image_ids": [int(m.image_id) for m in metas],
            "image_sha256": [stream.image_sha256.pop(i, None) for i in range(first, end)],
            "results": results, "skipped": [_skipped_dict(s) for s in skipped]}
