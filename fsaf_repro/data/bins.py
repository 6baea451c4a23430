"""The `.bin` files and info files of the recipe's step 4, for the benchmark tool and ais_bench.

`write_bins` writes one float32 CHW `<stem>.bin` per image in parallel, keeping a `.bin` only when
the folder's record (`bin_inputs.jsonl`) says it was made from the image's current bytes with this
transform; `write_info_files` writes the tools' info files (get_info.py), `write_manifest` the
record of a run. Files are written through a temporary name and renamed, so an interrupted run
leaves no truncated `.bin`.
"""
import contextlib
import hashlib
import json
import math
import os
import sys
import warnings
from collections import namedtuple
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import DataError, ImageReadError
from ..fileio import (PART_MARK, atomic_write_array, atomic_write_text, file_sha256, is_stale_part,
                      naming_os_errors)
from ..jsonio import SchemaFault, array, integer, load_json, obj, parse_json, real_number, text_value
from ..spec import input_constants
from .coco import CocoImageSet, SkippedImage, is_json_int, rotated_image_ids
from .transform import decode_bgr, letterbox_to_canvas, read_image_bytes, scaled_size

# A preprocessing run: the .bin files listed (image-id order), how many were written and how many kept,
# the images skipped (SkippedImage), and `metas`: the ImageMeta each listed .bin was transformed with
# (aligned with bin_paths; an EXIF-rotated image has its decoded size and scale there).
PreprocessReport = namedtuple("PreprocessReport", "bin_paths written reused skipped metas")


def bin_bytes(height: int, width: int) -> int:
    return 3 * int(height) * int(width) * 4


BIN_MISSING = "missing"


def bin_file_problem(path: str, height: int, width: int) -> Optional[str]:
    """None when `path` is a complete float32 3 x height x width .bin; else BIN_MISSING or its size fault."""
    if not os.path.isfile(path):
        return BIN_MISSING
    size, expected = os.path.getsize(path), bin_bytes(height, width)
    if size != expected:
        return f"has {size} bytes, expected {expected} (float32 3x{height}x{width})"
    return None


# The record of what each .bin of a folder was made from. A .bin is reused only when its entry
# matches: the source image's bytes (size and sha256; hashing a JPEG costs a small fraction of
# decoding it) and the transform (`bin_transform_key`), and the .bin itself is still the file that
# was written then: by default its size and mtime_ns (anything that rewrites it through the file
# system changes them; a .bin is 11.7 MB at 800x1216, and hashing every one on each rerun would cost
# about what redoing it does), or with `verify` also the sha256 of its content, recorded when it was
# written (an in-place edit that restores the mtime, or disk damage, is then caught). A byte size alone
# would keep the old pixels of a replaced image while the manifest takes the new image's scale.
# docs/preprocess-reuse.md states this promise.
# JSON lines: a header with the transform, then one line per .bin written (the last line of a name
# wins; {"bin": name, "forget": true} drops it). Appended as each .bin lands, so a killed run loses
# at most the entries in flight (those .bin files are redone, never trusted unrecorded).
BIN_RECORD_NAME = "bin_inputs.jsonl"
_BIN_RECORD_FORMAT = 1
# Bump when a code change alters what a .bin holds for the same image: every .bin is then redone.
_TRANSFORM_REVISION = 1


def bin_transform_key(height: int, width: int) -> Dict[str, Any]:
    """Everything a .bin's bytes depend on besides its image: the transform's parameters (canvas,
    mean/std, dtype, layout) and implementation (this code's revision, OpenCV's resize)."""
    const = input_constants()
    return {"revision": _TRANSFORM_REVISION, "canvas": [int(height), int(width)],
            "mean_rgb": [float(v) for v in const["mean_rgb"]], "std_rgb": [float(v) for v in const["std_rgb"]],
            "dtype": "float32", "layout": "CHW", "resize": "keep-ratio floor INTER_LINEAR, top-left, zero pad",
            "opencv": cv2.__version__}


def read_bin_record(bin_dir: str, height: int, width: int) -> Dict[str, Dict[str, Any]]:
    """{bin name: entry} of the folder's record, only if it was made with this transform; else {}.

    A damaged line (a kill mid-append) is skipped with a warning naming the file and line: its .bin
    then has no entry, or an older one its mtime no longer matches, and is redone.
    """
    path = os.path.join(os.fspath(bin_dir), BIN_RECORD_NAME)
    try:
        with open(path, "rb") as handle:
            lines = handle.read().split(b"\n")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DataError(f"cannot read the .bin record {path}: {exc}")
    entries = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = parse_json(line, DataError, f"{path} line {number}")
        except DataError:
            item = None  # a line cut by a kill: handled below as damaged (its .bin is redone)
        if number == 1:
            if not (isinstance(item, dict) and item.get("format") == _BIN_RECORD_FORMAT):
                warnings.warn(f"{path} is not a .bin record of this version: its .bin files are redone",
                              RuntimeWarning, stacklevel=2)
                return {}
            if item.get("transform") != bin_transform_key(height, width):
                return {}  # made with another canvas, normalisation or OpenCV: nothing in it is reusable
            continue
        if not (isinstance(item, dict) and isinstance(item.get("bin"), str)):
            warnings.warn(f"{path} line {number} is damaged: skipped (its .bin is redone)",
                          RuntimeWarning, stacklevel=2)
            continue
        if item.get("forget"):
            entries.pop(item["bin"], None)
        else:
            entries[item["bin"]] = item
    return entries


class _BinRecordWriter:
    """Appends to a folder's .bin record; opening it rewrites the file with only `entries`."""

    def __init__(self, bin_dir, height, width, entries):
        self.path = os.path.join(os.fspath(bin_dir), BIN_RECORD_NAME)
        header = {"format": _BIN_RECORD_FORMAT, "transform": bin_transform_key(height, width)}
        lines = [header] + [dict(entry, bin=name) for name, entry in sorted(entries.items())]
        atomic_write_text(self.path, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
        self._handle = open(self.path, "a")

    def add(self, name, entry):
        self._write(dict(entry, bin=name))

    def forget(self, name):
        self._write({"bin": name, "forget": True})

    def _write(self, item):
        with naming_os_errors(self.path):
            self._handle.write(json.dumps(item, sort_keys=True) + "\n")
            self._handle.flush()

    def close(self):
        self._handle.close()


def _bin_entry(meta, used, image_data, bin_path, bin_sha256):
    stat = os.stat(bin_path)
    return {"image_id": meta.image_id, "file_name": meta.file_name, "image_bytes": len(image_data),
            "image_sha256": hashlib.sha256(image_data).hexdigest(), "decoded": [used.orig_w, used.orig_h],
            "bin_bytes": stat.st_size, "bin_mtime_ns": stat.st_mtime_ns, "bin_sha256": bin_sha256}


def _recorded_source_problem(entry, bin_path, image_data, height, width, verify=False):
    """None when `entry` says the .bin at `bin_path` was made from `image_data` (and, with `verify`, its
    content still has the recorded sha256); else why not."""
    if not isinstance(entry, dict):
        return f"has no entry in {BIN_RECORD_NAME} for this transform"
    decoded = entry.get("decoded")
    if not (isinstance(decoded, list) and len(decoded) == 2 and all(is_json_int(v) and v > 0 for v in decoded)):
        return f"has a malformed entry in {BIN_RECORD_NAME}"
    if (entry.get("image_bytes"), entry.get("image_sha256")) != (
            len(image_data), hashlib.sha256(image_data).hexdigest()):
        return "was made from other image bytes than the file holds now"
    try:
        stat = os.stat(bin_path)
    except OSError:
        return BIN_MISSING
    if (entry.get("bin_bytes"), entry.get("bin_mtime_ns")) != (stat.st_size, stat.st_mtime_ns) \
            or stat.st_size != bin_bytes(height, width):
        return "was changed after preprocess wrote it"
    if verify and entry.get("bin_sha256") != file_sha256(bin_path):
        return ("has other content than preprocess wrote (sha256 differs, or none was recorded by an earlier "
                "version)")
    return None


_WORKER_STATE = {}


def _init_worker(image_set, out_dir, record, verify=False):
    # one process per core already; OpenCV's own thread pool would only oversubscribe the cores
    cv2.setNumThreads(1)
    _WORKER_STATE["set"] = image_set
    _WORKER_STATE["out_dir"] = out_dir
    _WORKER_STATE["record"] = record
    _WORKER_STATE["verify"] = verify
    _WORKER_STATE["buffer"] = None


def _preprocess_one(index):
    """Worker: write entry `index` as a .bin.

    Returns (index, 'written'|'reused'|'bad', message, meta, record entry): `meta` is the ImageMeta
    the image was (or, for a kept .bin, would be) transformed with, so that an EXIF rotation found
    in a worker process reaches the parent's report, manifest and info files; the entry is the parent's to
    record (None for a bad image). The bytes hashed are the bytes decoded: an image replaced during
    the run cannot be recorded under the other image's hash.
    """
    image_set = _WORKER_STATE["set"]
    meta = image_set.metas[index]
    path = os.path.join(_WORKER_STATE["out_dir"], image_set.bin_name(meta))
    try:
        data = read_image_bytes(meta.path)
        entry = _WORKER_STATE["record"].get(os.path.basename(path))
        if _recorded_source_problem(entry, path, data, image_set.height, image_set.width,
                                    _WORKER_STATE["verify"]) is None:
            # same bytes, same transform, untouched .bin: kept without decoding; the recorded decoded
            # size is still checked against this annotation file
            return index, "reused", "", image_set.meta_for_decoded(index, *entry["decoded"]), entry
        bgr = decode_bgr(data, meta.path)
        used = image_set.meta_for_decoded(index, bgr.shape[1], bgr.shape[0])
        if _WORKER_STATE["buffer"] is None:
            _WORKER_STATE["buffer"] = np.empty((3, image_set.height, image_set.width), dtype=np.float32)
        letterbox_to_canvas(bgr, image_set.height, image_set.width, out=_WORKER_STATE["buffer"])
    except ImageReadError as exc:
        return index, "bad", str(exc), None, None
    atomic_write_array(path, _WORKER_STATE["buffer"])
    content_sha256 = hashlib.sha256(memoryview(_WORKER_STATE["buffer"]).cast("B")).hexdigest()
    return index, "written", "", used, _bin_entry(meta, used, data, path, content_sha256)


def _remove_stale_parts(out_dir):
    """Remove `.bin` part files left by killed runs; another live run's part files are kept."""
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if PART_MARK in name and name.split(PART_MARK)[0].endswith(".bin") and is_stale_part(path):
            try:
                os.remove(path)
            except OSError:
                pass  # removed meanwhile by another run's cleanup


def write_bins(image_set: CocoImageSet, out_dir: str, workers: Optional[int] = None, skip_bad: bool = False,
               progress: bool = True, chunksize: int = 2, verify: bool = False) -> PreprocessReport:
    """Write one `<stem>.bin` per image (float32 CHW, as the recipe's Fsaf_preprocess.py writes it)
    into `out_dir`, in parallel.

    A `.bin` is kept only when the folder's record (BIN_RECORD_NAME) says it was made from the
    image's current bytes with this transform and it is unchanged since (size and mtime; with `verify`
    also its content's sha256); any other is redone. Every
    file is written under a temporary name and renamed, so an interrupted run leaves no truncated
    `.bin`, and its record entry is appended as it lands, so a killed or stopped run keeps its
    finished work. A bad image raises ImageReadError
    naming it (after the files finished so far are safely in place), or with `skip_bad` is listed in
    the report's `skipped`. Returns PreprocessReport(bin_paths in image-id order, written, reused,
    skipped, metas as transformed).
    """
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    _remove_stale_parts(out_dir)
    workers = max(1, min(len(image_set), int(workers or os.cpu_count() or 1)))
    record = read_bin_record(out_dir, image_set.height, image_set.width)
    recorder = _BinRecordWriter(out_dir, image_set.height, image_set.width, record)
    bar = tqdm(total=len(image_set), desc="preprocess", unit="img", file=sys.stderr, disable=not progress)
    caller_threads = cv2.getNumThreads()
    try:
        with _worker_results(image_set, out_dir, record, workers, chunksize, verify) as outcomes:
            results = _record_outcomes(outcomes, image_set, record, recorder, bar, skip_bad)
    finally:
        recorder.close()
        cv2.setNumThreads(caller_threads)  # the in-process path set it to 1
        bar.close()
    return _preprocess_report(image_set, out_dir, results)


@contextlib.contextmanager
def _worker_results(image_set, out_dir, record, workers, chunksize, verify):
    """The `_preprocess_one` outcome of every entry, in order: computed in this process for one
    worker, else by a pool of spawned processes, which is stopped on leaving the block."""
    if workers == 1:
        _init_worker(image_set, out_dir, record, verify)
        yield (_preprocess_one(i) for i in range(len(image_set)))
        return
    import multiprocessing
    # spawn, not fork: a child forked after OpenCV started its thread pool can deadlock in
    # cv2.resize
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=_init_worker, initargs=(image_set, out_dir, dict(record), verify))
    try:
        yield pool.imap(_preprocess_one, range(len(image_set)), chunksize)
    finally:
        pool.terminate()
        pool.join()


def _record_outcomes(outcomes, image_set, record, recorder, bar, skip_bad):
    """{index: (status, message, meta used)} of the outcomes, each written .bin recorded as it lands;
    ImageReadError at the first bad image unless `skip_bad`."""
    results = {}
    for index, status, message, used, entry in outcomes:
        if status == "bad" and not skip_bad:
            raise ImageReadError(message + " (use --skip-bad to continue past bad images)")
        results[index] = (status, message, used)
        name = image_set.bin_name(image_set.metas[index])
        if status == "written":
            recorder.add(name, entry)
        elif status == "bad" and name in record:
            recorder.forget(name)  # a skipped image's old .bin is moved aside below
        bar.update(1)
    return results


def _preprocess_report(image_set, out_dir, results):
    bin_paths, skipped, used_metas = [], [], []
    written = reused = 0
    for index, meta in enumerate(image_set.metas):
        status, message, used = results[index]
        if status == "bad":
            skipped.append(SkippedImage(index, meta.image_id, meta.path, message))
            # A .bin kept from an earlier run whose image is now bad: moved out of the tools' view
            # (ais_bench takes every *.bin of the folder), not deleted.
            stale = os.path.join(out_dir, image_set.bin_name(meta))
            if os.path.isfile(stale):
                os.replace(stale, stale + ".skipped")
            continue
        written += status == "written"
        reused += status == "reused"
        bin_paths.append(os.path.join(out_dir, image_set.bin_name(meta)))
        used_metas.append(used)
    return PreprocessReport(bin_paths, written, reused, skipped, used_metas)


def write_info_files(image_set: CocoImageSet, bin_dir: Optional[str] = None, bin_info: Optional[str] = None,
                     jpg_info: Optional[str] = None, exclude_ids: Sequence[int] = (),
                     report: Optional[PreprocessReport] = None,
                     metas: Optional[Sequence[Any]] = None) -> Dict[str, List[str]]:
    """Write the tools' info files (the recipe's get_info.py layout) in image-id order; returns the lines written.

    bin:  `<index> <bin_dir>/<stem>.bin <model width> <model height>`: each .bin must exist, full
          size, and be the one the folder's record says was made from the image's current bytes
          with this transform (as `write_bins` reuses them); `report`, the PreprocessReport of a
          `write_bins` run over this folder in this process, spares checking its .bin files again
    jpg:  `<index> <image path> <original width> <original height>`, the decoded size as the
          recipe's cv2.imread gives it (an EXIF-rotated image has its sizes swapped)
    The images listed are `metas` (ImageMeta as transformed, in image-id order) when given, else the
    report's, else, for a jpg info file, the set's `decoded_metas()` (read from the image headers);
    a bin info file alone needs no image size and lists the set's `metas`.
    Paths are written as given (relative paths stay relative to where the tool runs).
    Images in `exclude_ids` (skipped bad images) are left out; indices stay consecutive.
    """
    if metas is None:
        if report is not None:
            metas = report.metas
        elif jpg_info is not None:
            metas = image_set.decoded_metas()
        else:
            metas = image_set.metas
    exclude = set(exclude_ids)
    metas = [meta for meta in metas if meta.image_id not in exclude]
    written = {}
    if bin_info is not None:
        if bin_dir is None:
            raise DataError("a bin info file needs the .bin directory")
        checked = set(report.bin_paths) if report is not None else set()
        lines = _bin_info_lines(image_set, os.fspath(bin_dir), bin_info, metas, checked)
        atomic_write_text(os.fspath(bin_info), "\n".join(lines) + "\n")
        written["bin"] = lines
    if jpg_info is not None:
        lines = [_info_line(jpg_info, index, meta.path, meta.orig_w, meta.orig_h, meta)
                 for index, meta in enumerate(metas)]
        atomic_write_text(os.fspath(jpg_info), "\n".join(lines) + "\n")
        written["jpg"] = lines
    return written


def _bin_info_lines(image_set, bin_dir, bin_info, metas, checked):
    """The bin info file's lines; every .bin not in `checked` is verified first (present, full size,
    made from the image's current bytes with this transform)."""
    lines = []
    record = None
    for index, meta in enumerate(metas):
        path = os.path.join(bin_dir, image_set.bin_name(meta))
        if path not in checked:
            problem = bin_file_problem(path, image_set.height, image_set.width)
            if problem == BIN_MISSING:
                raise DataError(f"{path} is missing: run `fsaf-repro preprocess` first")
            if problem:
                raise DataError(f"{path} {problem}")
            if record is None:
                record = read_bin_record(bin_dir, image_set.height, image_set.width)
            problem = _recorded_source_problem(record.get(os.path.basename(path)), path,
                                               read_image_bytes(meta.path), image_set.height, image_set.width)
            if problem:
                raise DataError(f"{path} {problem} (image {meta.path}, id {meta.image_id}): rerun "
                                f"`fsaf-repro preprocess` on {bin_dir}")
        lines.append(_info_line(bin_info, index, path, image_set.width, image_set.height, meta))
    return lines


def _info_line(info_path, index, path, width, height, meta):
    # the tools split info lines at whitespace: a path holding any would be read as other fields
    if any(c.isspace() for c in path):
        raise DataError(f"{info_path}: cannot list {path!r} (image id {meta.image_id}): info files separate their "
                        "fields by white space; rename the file or folder")
    return f"{index} {path} {width} {height}"


def read_info_file(path: str) -> List[Tuple[int, str, int, int]]:
    """Parse an info file into a list of (index, path, width, height); DataError naming the file and line."""
    path = os.fspath(path)
    entries = []
    try:
        with open(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                parts = line.split()
                text = line.rstrip("\n")
                if len(parts) != 4:
                    raise DataError(f"{path} line {number}: expected '<index> <path> <width> <height>', got {text!r}")
                try:
                    entries.append((int(parts[0]), parts[1], int(parts[2]), int(parts[3])))
                except ValueError:
                    raise DataError(f"{path} line {number}: index, width and height must be integers: {text!r}")
    except FileNotFoundError:
        raise DataError(f"info file not found: {path}")
    return entries


def write_manifest(path: str, image_set: CocoImageSet, report: PreprocessReport) -> Dict[str, Any]:
    """A json record of a preprocessing run: what was read, from which annotation file, what failed."""
    record = {
        "annotation_file": image_set.annotation_file,  # None for a bare image folder (`source` says so)
        "source": image_set.source,
        "annotation_sha256": image_set.annotation_sha256,
        "image_dir": image_set.image_dir,
        "num_images": len(image_set) - len(report.skipped),
        "num_listed": len(image_set),
        "height": image_set.height,
        "width": image_set.width,
        "written": report.written,
        "reused": report.reused,
        "skipped": [dict(s._asdict()) for s in report.skipped],
        # as transformed: an EXIF-rotated image has its decoded size and scale here
        "exif_rotated": rotated_image_ids(image_set, report.metas),
        "images": [dict(meta._asdict()) for meta in report.metas],
    }
    atomic_write_text(os.fspath(path), json.dumps(record, indent=1) + "\n")
    return record


# preprocess_manifest.json as write_manifest writes it, as far as postprocess reads it: the annotation
# file's sha256, the canvas and, per image, the ImageMeta its .bin was transformed with.
_MANIFEST_IMAGE = obj({"image_id": integer(), "file_name": text_value(), "path": text_value(),
                       "orig_w": integer(minimum=1), "orig_h": integer(minimum=1),
                       "scale": real_number(positive=True), "new_w": integer(minimum=1),
                       "new_h": integer(minimum=1)})
_MANIFEST_SHAPE = obj({"annotation_sha256": text_value(non_empty=True), "height": integer(minimum=1),
                       "width": integer(minimum=1), "images": array(_MANIFEST_IMAGE)})


def _manifest_schema(value, where):
    """The manifest's shape, then its semantics: each image's scale and resized size are the ones its own
    size and the canvas give (a contradicting scale would silently rescale that image's boxes)."""
    record = _MANIFEST_SHAPE(value, where)
    for number, image in enumerate(record["images"]):
        scale, new_w, new_h = scaled_size(image["orig_w"], image["orig_h"], record["height"], record["width"])
        same_size = (image["new_w"], image["new_h"]) == (new_w, new_h)
        if not (same_size and math.isclose(image["scale"], scale, rel_tol=1e-9)):
            raise SchemaFault(f"images[{number}]", "scale {!r} and resized size {}x{} contradict its size {}x{} on the "
                              "{}x{} canvas (expected scale {!r}, {}x{}); rerun `fsaf-repro preprocess`".format(
                                  image["scale"], image["new_w"], image["new_h"], image["orig_w"], image["orig_h"],
                                  record["width"], record["height"], scale, new_w, new_h))
    return record


def read_manifest(path: str) -> Dict[str, Any]:
    """A preprocess manifest, checked for shape and for scales consistent with its sizes; DataError naming
    the file and the image otherwise."""
    return load_json(os.fspath(path), DataError, "preprocess manifest", _manifest_schema)
