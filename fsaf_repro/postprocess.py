"""Network outputs -> COCO results json (recipe step 6, first half).

Readers for the three ways outputs arrive, all matched to images by exact stem (never a suffix
glob, which in the recipe's script can pick another image's file). The stem of an image is the one
its .bin was written under (`CocoImageSet.output_stems`: the file name's, or a derived one where two
images share it), so the readers take those stems from the image set:
- benchmark tool: `<dir>/<stem>_1.bin` dets float32 [100, 5], `<dir>/<stem>_2.bin` labels int64 [100]
- ais_bench: `<dir>/<stem>_0.bin|.npy` dets, `<stem>_1.bin|.npy` labels (stem of the first input of
  each batch), plus `<...>_summary.json` with its timings
- npy: two stacked arrays, dets [N, 100, 5] and labels [N, 100], in image-id order

`detections_to_coco` then drops padded rows (score 0) and rows under the score threshold, divides
boxes by the image's scale (no offset: the image sits top-left), optionally clips to the original
image (off by default, as in the recipe) and maps label k to the k-th COCO category id.

The scale of each image is the one it was preprocessed with: from the preprocess manifest when one
is given (it records the images actually written, EXIF rotations and skipped images included), else
from the image headers when the image folder is given, else from the annotation sizes alone.
"""
import glob
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .data import CocoImageSet, ImageMeta, boxes_to_original, read_manifest
from .errors import DataError, OutputFormatError
from .fileio import read_json
# re-exported: callers import them from here
from .results_json import read_results_json, write_results_json  # noqa: F401
from .spec import model_constants

DETS_COLUMNS = 5


def _max_dets():
    return int(model_constants()["max_per_img"])


def _stem(stems, meta):
    """The output stem of `meta`'s image; `stems`: image id -> stem (`CocoImageSet.output_stems`)."""
    try:
        return stems[meta.image_id]
    except KeyError:
        raise OutputFormatError(f"image id {meta.image_id} ({meta.file_name}) has no output name: not in the "
                                "annotation file the image set was read from")


def _read_exact(path, dtype, count, what):
    """Read exactly `count` items of `dtype` from a raw .bin; OutputFormatError naming the file."""
    expected = count * np.dtype(dtype).itemsize
    if not os.path.isfile(path):
        raise OutputFormatError(f"missing output file {path} ({what})")
    size = os.path.getsize(path)
    if size != expected:
        raise OutputFormatError(f"{path} has {size} bytes, expected {expected} "
                                f"({what}: {count} x {np.dtype(dtype).name})")
    return np.fromfile(path, dtype=dtype)


def _load_npy(path, dtype, shape_tail, what):
    if not os.path.isfile(path):
        raise OutputFormatError(f"missing output file {path} ({what})")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise OutputFormatError(f"{path} is not a readable .npy file: {exc}")
    if tuple(array.shape[-len(shape_tail):]) != tuple(shape_tail) or array.dtype != np.dtype(dtype):
        tail = ", ".join(str(s) for s in shape_tail)
        raise OutputFormatError(f"{path} holds {array.dtype} {list(array.shape)}, expected {np.dtype(dtype).name} "
                                f"[..., {tail}] ({what})")
    return array.reshape((-1,) + tuple(shape_tail))


def _check_finite(dets, path):
    """Refuse a dets array (of one output file) with a non-finite value in a detection row.

    A row is a detection unless its score is 0 (padding); a NaN score or an infinite coordinate would
    otherwise be dropped silently (NaN fails every score comparison) or written into the results.
    """
    rows = np.asarray(dets).reshape(-1, DETS_COLUMNS)
    damaged = np.flatnonzero((rows[:, 4] != 0) & ~np.isfinite(rows).all(axis=1))
    if damaged.size:
        row = int(damaged[0])
        raise OutputFormatError(f"{path}: detection row {row} (0-based) holds a non-finite value "
                                f"{rows[row].tolist()} ({damaged.size} such rows): the output is damaged; "
                                "rerun the inference")
    return dets


def read_benchmark_outputs(out_dir: str, metas: Sequence[ImageMeta], stems: Dict[int, str],
                           label_dtype: str = "int64") -> Tuple[np.ndarray, np.ndarray]:
    """(dets float32 [N, 100, 5], labels [N, 100]) from a benchmark tool dumpOutput directory.

    stems: image id -> output stem (`CocoImageSet.output_stems`).
    """
    max_dets = _max_dets()
    dets = np.empty((len(metas), max_dets, DETS_COLUMNS), dtype=np.float32)
    labels = np.empty((len(metas), max_dets), dtype=np.int64)
    for i, meta in enumerate(metas):
        stem = _stem(stems, meta)
        dets_path = os.path.join(out_dir, stem + "_1.bin")
        image_dets = _read_exact(dets_path, np.float32, max_dets * DETS_COLUMNS, f"dets of image id {meta.image_id}")
        dets[i] = _check_finite(image_dets.reshape(max_dets, DETS_COLUMNS), dets_path)
        labels[i] = _read_exact(os.path.join(out_dir, stem + "_2.bin"), label_dtype, max_dets,
                                f"labels of image id {meta.image_id}")
    return dets, labels


def read_ais_bench_outputs(out_dir: str, metas: Sequence[ImageMeta], stems: Dict[int, str], batch_size: int = 1,
                           outfmt: str = "BIN", label_dtype: str = "int64") -> Tuple[np.ndarray, np.ndarray]:
    """(dets, labels) from an ais_bench output directory (`<stem>_0`, `<stem>_1`, BIN or NPY).

    stems: image id -> output stem (`CocoImageSet.output_stems`).

    With `batch_size` b > 1 ais_bench names each output after the first input of its batch and
    stores the b images together; the last batch holds either the remaining images or b (padded).
    """
    max_dets = _max_dets()
    ext = {"BIN": ".bin", "NPY": ".npy"}.get(outfmt.upper())
    if ext is None:
        raise OutputFormatError(f"ais_bench outfmt must be BIN or NPY, got {outfmt!r}")
    batch_size = max(1, int(batch_size))
    dets_parts, label_parts = [], []
    for first in range(0, len(metas), batch_size):
        group = metas[first:first + batch_size]
        stem = _stem(stems, group[0])
        what = "image ids " + ", ".join(str(m.image_id) for m in group)
        dets_path = os.path.join(out_dir, stem + "_0" + ext)
        labels_path = os.path.join(out_dir, stem + "_1" + ext)
        if ext == ".npy":
            group_dets = _load_npy(dets_path, np.float32, (max_dets, DETS_COLUMNS), "dets of " + what)
            group_labels = _load_npy(labels_path, label_dtype, (max_dets,), "labels of " + what)
        else:
            group_dets = _read_group_bin(dets_path, np.float32, max_dets * DETS_COLUMNS, len(group),
                                         batch_size, "dets of " + what).reshape(-1, max_dets, DETS_COLUMNS)
            group_labels = _read_group_bin(labels_path, label_dtype, max_dets, len(group), batch_size,
                                           "labels of " + what).reshape(-1, max_dets)
        for array, path in ((group_dets, dets_path), (group_labels, labels_path)):
            if array.shape[0] not in (len(group), batch_size):
                raise OutputFormatError(f"{path} holds {array.shape[0]} images, expected {len(group)}")
        dets_parts.append(_check_finite(group_dets[:len(group)], dets_path))
        label_parts.append(group_labels[:len(group)].astype(np.int64))
    return np.concatenate(dets_parts), np.concatenate(label_parts)


def _read_group_bin(path, dtype, per_image, count, batch_size, what):
    if not os.path.isfile(path):
        raise OutputFormatError(f"missing output file {path} ({what})")
    unit = per_image * np.dtype(dtype).itemsize
    size = os.path.getsize(path)
    if size not in (count * unit, batch_size * unit):
        raise OutputFormatError(f"{path} has {size} bytes, expected {count * unit} "
                                f"({what}: {count} image(s) x {per_image} {np.dtype(dtype).name})")
    return np.fromfile(path, dtype=dtype)


def read_npy_outputs(dets_path: str, labels_path: str, num_images: int) -> Tuple[np.ndarray, np.ndarray]:
    """(dets, labels) from two stacked .npy arrays in image-id order."""
    max_dets = _max_dets()
    dets = _load_npy(dets_path, np.float32, (max_dets, DETS_COLUMNS), "stacked dets")
    labels = _load_npy(labels_path, np.int64, (max_dets,), "stacked labels")
    for array, path in ((dets, dets_path), (labels, labels_path)):
        if array.shape[0] != num_images:
            raise OutputFormatError(f"{path} holds {array.shape[0]} images, expected {num_images}")
    return _check_finite(dets, dets_path), labels


_SUMMARY_TIMINGS = ("NPU_compute_time", "H2D_latency", "D2H_latency")


def read_ais_bench_summary(path: str) -> Dict[str, Any]:
    """Parse an ais_bench `*_summary.json` (a file, or the directory holding exactly one)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "*_summary.json")))
        if len(found) != 1:
            raise OutputFormatError(f"expected one *_summary.json in {path}, found {len(found) if found else 'none'}")
        path = found[0]
    summary = read_json(path, OutputFormatError, "ais_bench summary")
    if not isinstance(summary, dict) or "throughput" not in summary:
        raise OutputFormatError(f"ais_bench summary {path} has no 'throughput'")
    for key in _SUMMARY_TIMINGS:
        if key in summary and not (isinstance(summary[key], dict) and "mean" in summary[key]):
            raise OutputFormatError(f"ais_bench summary {path}: '{key}' needs min/max/mean/... fields")
    try:
        summary["throughput"] = float(summary["throughput"])
    except (TypeError, ValueError):
        raise OutputFormatError(f"ais_bench summary {path}: throughput {summary['throughput']!r} is not a number")
    summary["_path"] = path
    return summary


def detections_to_coco(dets: Any, labels: Any, metas: Sequence[ImageMeta], category_ids: Sequence[int],
                       score_threshold: Optional[float] = None, clip: bool = False) -> List[Dict[str, Any]]:
    """COCO results (list of dicts) from network outputs in network-input pixels.

    dets float32 [N, K, 5] (x1, y1, x2, y2, score), labels [N, K], metas: N ImageMeta in the same
    order, category_ids: label k -> COCO category id. Rows with score 0 (padding) and rows with
    score < score_threshold (default: spec model.score_threshold, 0.05) are dropped; boxes are
    divided by the image's scale; with `clip` they are clipped to the original image. bbox is
    [x1, y1, x2 - x1, y2 - y1] (no +1).

    The recipe's script keeps every row. Dropping score-0 padding changes no COCO metric (those rows
    rank after every real detection); the default threshold is the model's own NMS threshold
    (spec model.score_threshold), so it drops nothing a float32 graph emits. An fp16 NMS compares
    against fp16(0.05) = 0.049988, so a row it kept could sit just under 0.05 here: pass
    score_threshold=0 to keep such rows exactly as the recipe does.
    """
    if score_threshold is None:
        score_threshold = float(model_constants()["score_threshold"])
    dets = np.asarray(dets)
    labels = np.asarray(labels)
    if dets.ndim != 3 or dets.shape[2] != DETS_COLUMNS:
        raise OutputFormatError(f"dets must be [N, K, 5], got shape {list(dets.shape)}")
    if labels.shape != dets.shape[:2]:
        raise OutputFormatError(f"labels shape {list(labels.shape)} does not match dets shape {list(dets.shape)}")
    if len(metas) != dets.shape[0]:
        raise OutputFormatError(f"{dets.shape[0]} images of outputs but {len(metas)} image records")
    results = []
    for i, meta in enumerate(metas):
        results += _image_results(dets[i], labels[i], meta, category_ids, score_threshold, clip)
    return results


def _image_results(dets, labels, meta, category_ids, score_threshold, clip):
    """The COCO results of one image's rows (dets [K, 5], labels [K])."""
    scores = dets[:, 4]
    keep = (scores > 0) & (scores >= score_threshold)
    if not keep.any():
        return []
    kept_labels = labels[keep]
    num_classes = len(category_ids)
    bad = kept_labels[(kept_labels < 0) | (kept_labels >= num_classes)]
    if bad.size:
        raise OutputFormatError(f"image id {meta.image_id} ({meta.file_name}): label {int(bad[0])} "
                                f"outside 0..{num_classes - 1}")
    boxes = boxes_to_original(dets[keep, :4], meta.scale)
    if clip:
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, meta.orig_w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, meta.orig_h)
    return [{"image_id": int(meta.image_id), "category_id": int(category_ids[label]),
             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            for (x1, y1, x2, y2), label, score in zip(boxes.tolist(), kept_labels.tolist(), scores[keep].tolist())]


def read_outputs(kind: str, outputs: str, metas: Sequence[ImageMeta], stems: Dict[int, str], batch_size: int = 1,
                 labels_path: Optional[str] = None, outfmt: str = "BIN") -> Tuple[np.ndarray, np.ndarray]:
    """Dispatch to the reader for `kind` in ('benchmark', 'ais_bench', 'npy'); stems: image id -> output stem."""
    if kind == "benchmark":
        return read_benchmark_outputs(outputs, metas, stems)
    if kind == "ais_bench":
        return read_ais_bench_outputs(outputs, metas, stems, batch_size=batch_size, outfmt=outfmt)
    if kind == "npy":
        if labels_path is None:
            raise OutputFormatError("npy outputs need both the dets and the labels .npy files")
        return read_npy_outputs(outputs, labels_path, len(metas))
    raise OutputFormatError(f"unknown output kind {kind!r} (benchmark, ais_bench, npy)")


def metas_from_manifest(path: str, image_set: CocoImageSet, record: Optional[Dict[str, Any]] = None) -> List[ImageMeta]:
    """The ImageMetas a preprocessing run used (`preprocess_manifest.json`), checked against `image_set`.

    The manifest must come from the same annotation file (sha256) and canvas, and list a subset of
    the set's images in id order (skipped bad images are absent, and so are their outputs).
    `record`: the manifest's content when the caller has already read `path`.
    """
    if record is None:
        record = read_manifest(path)  # shape and scales checked
    sha, canvas = record["annotation_sha256"], [record["height"], record["width"]]
    metas = [ImageMeta(**dict((field, entry[field]) for field in ImageMeta._fields)) for entry in record["images"]]
    if sha != image_set.annotation_sha256:
        raise DataError(f"{path} was written for annotations with sha256 {sha[:12]}..., but "
                        f"{image_set.annotation_file} has {image_set.annotation_sha256[:12]}...: postprocess "
                        "with the annotation file the .bin files came from")
    if canvas != [image_set.height, image_set.width]:
        raise DataError(f"{path}: preprocessed at {canvas[0]}x{canvas[1]}, but postprocess is set to "
                        f"{image_set.height}x{image_set.width}")
    ids = [m.image_id for m in metas]
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise DataError(f"{path}: images are not in increasing id order (or an id repeats): not written by "
                        "`fsaf-repro preprocess`")
    known = set(image_set.image_ids)
    strangers = [m.image_id for m in metas if m.image_id not in known]
    if strangers:
        raise DataError(f"{path} lists image ids not among the {len(known)} images selected from "
                        f"{image_set.annotation_file} (first: {strangers[:3]}); is --limit the one preprocess used?")
    return metas
