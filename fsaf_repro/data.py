"""The recipe's data path (step 4): COCO images -> network inputs.

One transform, the recipe's (facts sheet section 2), used by every consumer:

    OpenCV colour read (BGR uint8) -> scale = min(W / w, H / h) -> floor-sized cv2.resize INTER_LINEAR
    -> BGR->RGB -> (x - mean) / std in float32 -> zero pad right/bottom to H x W -> CHW float32

It feeds two outlets: `.bin` files plus info files for the benchmark tool / ais_bench (`write_bins`,
`write_info_files`), and a streaming loader that yields batches straight to a backend
(`iter_batches`) with no file on disk and memory bounded by a small prefetch queue.

Differences from the recipe's scripts, all on purpose: images are taken from the annotation file in
image-id order (not the first 5000 names `os.listdir` returns); a bad image is an error naming the
file (or, with `skip_bad`, a recorded skip), never a swallowed worker exception; files are written
through a temporary name and renamed, so an interrupted run leaves no truncated `.bin`.
"""
import argparse
import hashlib
import json
import math
import os
import queue
import sys
import threading
import warnings
import weakref
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from .errors import AnnotationError, DataError, ImageReadError
from .fileio import (PART_MARK, atomic_write_array, atomic_write_text, file_sha256,  # noqa: F401  (file_sha256: API)
                     is_stale_part)
from .spec import coco_category_ids, coco_class_names, input_constants

ImageMeta = namedtuple("ImageMeta", "image_id file_name path orig_w orig_h scale new_w new_h")
SkippedImage = namedtuple("SkippedImage", "index image_id path reason")

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_SOS = b"\xff\xda"
_JPEG_EOI = b"\xff\xd9"


# ---------------------------------------------------------------------------------------------
# Reading and the transform


# EXIF orientation values 5-8 turn the stored picture by 90 degrees (transpose, rotate 90 CW,
# transverse, rotate 90 CCW): the decoded image has width and height swapped.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def probe_decoded_size(path):
    """(width, height) of the image `read_bgr(path)` returns, without decoding a JPEG's pixels.

    For a JPEG (all of val2017) the header gives the stored size and its EXIF APP1 segment the
    orientation, read as raw EXIF only: newer Pillow also takes an orientation from XMP, which
    OpenCV ignores. Any other format is decoded with `read_bgr`, since which of them OpenCV
    rotates by an EXIF tag depends on its version.
    """
    from PIL import Image
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            (width, height), image_format, raw_exif = image.size, image.format, image.info.get("exif")
        orientation = None
        if image_format == "JPEG" and raw_exif:
            exif = Image.Exif()
            exif.load(raw_exif)
            orientation = exif.get(_EXIF_ORIENTATION_TAG)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise ImageReadError("{}: cannot read the image header ({})".format(path, exc))
    if image_format != "JPEG":
        decoded = read_bgr(path)
        return decoded.shape[1], decoded.shape[0]
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def read_bgr(path):
    """Decode `path` as `cv2.imread(path, cv2.IMREAD_COLOR)` does: uint8 HxWx3 BGR.

    That read turns grayscale into three equal channels, drops an alpha channel, scales 16-bit
    samples to 8 bits (value >> 8), converts CMYK JPEGs to BGR and applies the EXIF orientation tag
    (so a JPEG tagged "rotate 90" comes back with width and height swapped). The bytes are decoded
    with `cv2.imdecode`, which applies the same rules; tests compare it with `cv2.imread`.

    Where `cv2.imread` would hand back something wrong or nothing, this raises ImageReadError naming
    the file: missing or unreadable file, zero bytes, undecodable content (text, corrupt header) and
    a JPEG cut short (libjpeg would fill the missing part with grey and only print a warning).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ImageReadError("image file not found: {}".format(path))
    except OSError as exc:
        raise ImageReadError("cannot read image file {}: {}".format(path, exc))
    if not data:
        raise ImageReadError("image file is empty (0 bytes): {}".format(path))
    if data.startswith(_JPEG_SOI):
        # Entropy-coded data stuffs 0xFF bytes, so after the last start-of-scan marker the only
        # FFD9 is the end-of-image marker: its absence means the file was cut short.
        if data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
            raise ImageReadError(
                "JPEG file is truncated (no end-of-image marker after its last scan, {} bytes): {}".format(
                    len(data), path))
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageReadError("OpenCV failed to decode {}: {}".format(path, exc))
    if image is None:
        raise ImageReadError(
            "OpenCV could not decode {} ({} bytes): not an image or a corrupt one".format(path, len(data)))
    return image


def _canvas_size(height, width):
    const = input_constants()
    return (const["height"] if height is None else int(height),
            const["width"] if width is None else int(width))


def scaled_size(orig_w, orig_h, height=None, width=None):
    """The recipe's keep-ratio scale: (scale, new_w, new_h) with floor-rounded new size.

    `scale = min(width / orig_w, height / orig_h)` (it may upscale). The floor can only reach 0 for
    images more than ~1000 times wider than tall; those are kept at 1 pixel instead of crashing.
    """
    if orig_w <= 0 or orig_h <= 0:
        raise DataError("image size must be positive, got {}x{}".format(orig_w, orig_h))
    height, width = _canvas_size(height, width)
    scale = min(float(width) / orig_w, float(height) / orig_h)
    new_w = min(width, max(1, int(math.floor(orig_w * scale))))
    new_h = min(height, max(1, int(math.floor(orig_h * scale))))
    return scale, new_w, new_h


_LUT_CACHE = {}


def normalisation_lut():
    """float32 [3, 256]: row c holds (v - mean[c]) / std[c] for v = 0..255, RGB channel order.

    Computed with the very float32 operations of the formula, so a table look-up gives bit-identical
    values to normalising the image array, in a fraction of the time.
    """
    if "lut" not in _LUT_CACHE:
        const = input_constants()
        mean = np.asarray(const["mean_rgb"], dtype=np.float32)
        std = np.asarray(const["std_rgb"], dtype=np.float32)
        values = np.arange(256, dtype=np.float32)
        _LUT_CACHE["lut"] = np.stack([(values - mean[c]) / std[c] for c in range(3)]).astype(np.float32)
    return _LUT_CACHE["lut"]


def _check_bgr(bgr):
    if not isinstance(bgr, np.ndarray) or bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise DataError("expected a uint8 HxWx3 BGR image, got {}".format(
            getattr(bgr, "dtype", type(bgr).__name__) if not isinstance(bgr, np.ndarray)
            else "{} {}".format(bgr.dtype, bgr.shape)))


def _resize(bgr, height, width):
    orig_h, orig_w = bgr.shape[:2]
    scale, new_w, new_h = scaled_size(orig_w, orig_h, height, width)
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return resized, scale, new_h, new_w


def _zero_padding(out, new_h, new_w):
    out[:, new_h:, :] = 0
    out[:, :new_h, new_w:] = 0


def letterbox_to_canvas(bgr, height=None, width=None, out=None):
    """The recipe's transform: BGR uint8 HWC -> (float32 [3, height, width], scale, new_h, new_w).

    `out`, when given, is a float32 [3, height, width] array filled in place (a batch slot).
    """
    _check_bgr(bgr)
    height, width = _canvas_size(height, width)
    resized, scale, new_h, new_w = _resize(bgr, height, width)
    if out is None:
        out = np.empty((3, height, width), dtype=np.float32)
    _zero_padding(out, new_h, new_w)
    lut = normalisation_lut()
    planes = cv2.split(resized)
    for c in range(3):  # output channel c (RGB) reads BGR channel 2 - c
        target = out[c, :new_h, :new_w]
        # cv2.LUT copies table entries (no arithmetic), straight into the canvas plane
        result = cv2.LUT(planes[2 - c], lut[c].reshape(1, 256), dst=target)
        if result.__array_interface__["data"][0] != target.__array_interface__["data"][0]:
            target[...] = result
    return out, scale, new_h, new_w


def letterbox_to_canvas_uint8(bgr, height=None, width=None, out=None):
    """The recipe's resize and padding without normalisation: uint8 [3, height, width] RGB, zero padded.

    For models that normalise inside the graph; padding is 0 in raw pixel values here (the float
    path pads with 0 after normalising), so such a model must re-zero the padding itself.
    """
    _check_bgr(bgr)
    height, width = _canvas_size(height, width)
    resized, scale, new_h, new_w = _resize(bgr, height, width)
    if out is None:
        out = np.empty((3, height, width), dtype=np.uint8)
    _zero_padding(out, new_h, new_w)
    for c in range(3):
        out[c, :new_h, :new_w] = resized[:, :, 2 - c]
    return out, scale, new_h, new_w


def boxes_to_original(boxes, scale):
    """Undo the transform for boxes: network-input pixels -> original-image pixels.

    The image sits at the top-left of the canvas, so there is no offset: only the first four columns
    (x1, y1, x2, y2) are divided by `scale`; further columns (a score) are copied. No clipping.
    """
    boxes = np.asarray(boxes)
    if boxes.ndim < 1 or boxes.shape[-1] < 4:
        raise DataError("boxes must have at least 4 columns (x1, y1, x2, y2), got shape {}".format(
            boxes.shape))
    if not scale > 0:
        raise DataError("scale must be positive, got {!r}".format(scale))
    out = np.array(boxes, dtype=np.float32, copy=True)
    # a Python float keeps float32 arithmetic under both numpy 1.21 and numpy 2 casting rules
    out[..., :4] = out[..., :4] / float(scale)
    return out


# ---------------------------------------------------------------------------------------------
# COCO image set


def load_annotation_json(annotation_file):
    """(parsed dict, sha256 hex) of a COCO annotation file; AnnotationError naming it on failure."""
    annotation_file = os.fspath(annotation_file)
    try:
        with open(annotation_file, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise AnnotationError("annotation file not found: {}".format(annotation_file))
    except OSError as exc:
        raise AnnotationError("cannot read annotation file {}: {}".format(annotation_file, exc))
    sha = hashlib.sha256(raw).hexdigest()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnnotationError("annotation file {} is not valid JSON: {}".format(annotation_file, exc))
    if not isinstance(data, dict):
        raise AnnotationError("annotation file {} must hold a JSON object, got {}".format(
            annotation_file, type(data).__name__))
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError("annotation file {} has no '{}' list".format(annotation_file, key))
    return data, sha


def category_ids_from_categories(categories, source, strict_ids=True):
    """label k -> category id, by matching the file's category names with the 80 model classes.

    A name missing from the file, an extra or duplicated name is an AnnotationError. With
    `strict_ids` the ids must also be COCO's (spec `coco_category_ids`): a file whose names sit on
    other ids (swapped categories) is not val2017 and is refused.
    """
    classes = coco_class_names()
    by_name = {}
    for cat in categories:
        if not isinstance(cat, dict) or "name" not in cat or "id" not in cat:
            raise AnnotationError("{}: every category needs 'id' and 'name', got {!r}".format(source, cat))
        if cat["name"] in by_name:
            raise AnnotationError("{}: category name {!r} appears twice".format(source, cat["name"]))
        by_name[cat["name"]] = int(cat["id"])
    missing = [name for name in classes if name not in by_name]
    extra = sorted(name for name in by_name if name not in set(classes))
    if missing or extra:
        raise AnnotationError(
            "{}: categories do not match the model's {} COCO classes (missing: {}; unexpected: {})".format(
                source, len(classes), ", ".join(missing) or "none", ", ".join(extra) or "none"))
    ids = [by_name[name] for name in classes]
    if strict_ids:
        expected = coco_category_ids()
        wrong = ["{} has id {} (COCO: {})".format(name, got, want)
                 for name, got, want in zip(classes, ids, expected) if got != want]
        if wrong:
            raise AnnotationError("{}: category ids differ from COCO's: {}".format(
                source, "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else "")))
    return ids


class CocoImageSet(object):
    """The images of a COCO annotation file, in image-id order, with the recipe's per-image metadata.

    Scale and resized size come from the annotation's width/height (no decoding needed); `load`
    verifies them against the decoded image.
    """

    def __init__(self, annotation_file, image_dir, limit=None, height=None, width=None, strict_ids=True):
        self.annotation_file = os.fspath(annotation_file)
        self.image_dir = os.fspath(image_dir)
        self.height, self.width = _canvas_size(height, width)
        data, self.annotation_sha256 = load_annotation_json(self.annotation_file)
        self.category_ids = category_ids_from_categories(
            data["categories"], self.annotation_file, strict_ids=strict_ids)
        images = []
        seen = set()
        for entry in data["images"]:
            try:
                image_id = int(entry["id"])
                file_name = str(entry["file_name"])
                orig_w, orig_h = int(entry["width"]), int(entry["height"])
            except (KeyError, TypeError, ValueError):
                raise AnnotationError("{}: image entry needs integer 'id', 'width', 'height' and a "
                                      "'file_name': {!r}".format(self.annotation_file, entry))
            if orig_w <= 0 or orig_h <= 0:
                raise AnnotationError("{}: image {} ({}) has size {}x{}".format(
                    self.annotation_file, image_id, file_name, orig_w, orig_h))
            if image_id in seen:
                raise AnnotationError("{}: image id {} appears twice".format(self.annotation_file, image_id))
            seen.add(image_id)
            images.append((image_id, file_name, orig_w, orig_h))
        images.sort(key=lambda item: item[0])
        self.total_images = len(images)
        if limit is not None:
            if int(limit) <= 0:
                raise DataError("limit must be a positive number of images, got {}".format(limit))
            images = images[:int(limit)]
        if not images:
            raise DataError("annotation file {} lists no images: nothing to process".format(
                self.annotation_file))
        self.metas = []
        # Images whose decoded size is the annotation's size transposed (an EXIF orientation tag):
        # index -> ImageMeta of the decoded image, which the recipe's cv2.imread (and mmcv) use.
        self.exif_rotated = {}
        for image_id, file_name, orig_w, orig_h in images:
            scale, new_w, new_h = scaled_size(orig_w, orig_h, self.height, self.width)
            self.metas.append(ImageMeta(image_id, file_name, os.path.join(self.image_dir, file_name),
                                        orig_w, orig_h, scale, new_w, new_h))

    def __len__(self):
        return len(self.metas)

    @property
    def image_ids(self):
        return [meta.image_id for meta in self.metas]

    def read(self, index):
        """Decoded BGR image of entry `index`, checked against the annotation's size.

        An image whose decoded size is the annotation's transposed carries an EXIF orientation tag:
        OpenCV's colour read (the recipe's, and mmcv's) rotates it, so the transform and the box
        scale follow the decoded image, as the recipe does; the image is listed in
        `self.exif_rotated` and a warning names it. Any other size difference is an error.
        """
        bgr = read_bgr(self.metas[index].path)
        return bgr, self.meta_for_decoded(index, bgr.shape[1], bgr.shape[0])

    def meta_for_decoded(self, index, decoded_w, decoded_h):
        """The ImageMeta of entry `index` once decoded to `decoded_w` x `decoded_h` (see `read`)."""
        meta = self.metas[index]
        if (decoded_h, decoded_w) == (meta.orig_w, meta.orig_h) and decoded_h != decoded_w:
            if index not in self.exif_rotated:
                scale, new_w, new_h = scaled_size(decoded_w, decoded_h, self.height, self.width)
                self.exif_rotated[index] = meta._replace(orig_w=decoded_w, orig_h=decoded_h, scale=scale,
                                                         new_w=new_w, new_h=new_h)
                warnings.warn("{}: decoded {}x{}, annotation {}x{}: an EXIF orientation tag rotates it; "
                              "following the decoded image as OpenCV's read in the recipe does".format(
                                  meta.path, decoded_w, decoded_h, meta.orig_w, meta.orig_h), RuntimeWarning,
                              stacklevel=3)
            return self.exif_rotated[index]
        if (decoded_h, decoded_w) != (meta.orig_h, meta.orig_w):
            raise ImageReadError(
                "{}: decoded size {}x{} differs from the annotation's {}x{} (image id {} in {}; an EXIF "
                "orientation tag rotates the decoded image)".format(
                    meta.path, decoded_w, decoded_h, meta.orig_w, meta.orig_h, meta.image_id,
                    self.annotation_file))
        return meta

    def effective_meta(self, index):
        """Entry `index`'s ImageMeta as read: the rotated one for an EXIF-rotated image found so far."""
        return self.exif_rotated.get(index, self.metas[index])

    def resolve_orientation(self):
        """Find every EXIF-rotated image from file headers (no pixel decoding), as `read` would.

        Postprocessing outputs of .bin files written elsewhere needs the sizes the images were
        transformed with; this gives them without decoding the whole set. Returns the indices of
        the rotated images; ImageReadError names an unreadable image or a size that matches neither
        the annotation nor its transpose.
        """
        for index, meta in enumerate(self.metas):
            self.meta_for_decoded(index, *probe_decoded_size(meta.path))
        return sorted(self.exif_rotated)

    def load_into(self, index, out, input_dtype="float32"):
        bgr, meta = self.read(index)
        if input_dtype == "uint8":
            letterbox_to_canvas_uint8(bgr, self.height, self.width, out=out)
        else:
            letterbox_to_canvas(bgr, self.height, self.width, out=out)
        return meta

    def load(self, index, input_dtype="float32"):
        """(CHW array, ImageMeta) of entry `index`: float32 normalised, or uint8 RGB."""
        out = np.empty((3, self.height, self.width), dtype=_dtype(input_dtype))
        meta = self.load_into(index, out, input_dtype)
        return out, meta


def _dtype(input_dtype):
    if input_dtype not in ("float32", "uint8"):
        raise DataError("input_dtype must be 'float32' or 'uint8', got {!r}".format(input_dtype))
    return np.float32 if input_dtype == "float32" else np.uint8


# ---------------------------------------------------------------------------------------------
# .bin files and info files

PreprocessReport = namedtuple("PreprocessReport", "bin_paths written reused skipped")


def bin_name(meta):
    return os.path.splitext(os.path.basename(meta.file_name))[0] + ".bin"


def bin_bytes(height, width):
    return 3 * int(height) * int(width) * 4


BIN_MISSING = "missing"


def bin_file_problem(path, height, width):
    """None when `path` is a complete float32 3 x height x width .bin; else BIN_MISSING or its size fault."""
    if not os.path.isfile(path):
        return BIN_MISSING
    size, expected = os.path.getsize(path), bin_bytes(height, width)
    if size != expected:
        return "has {} bytes, expected {} (float32 3x{}x{})".format(size, expected, height, width)
    return None


_WORKER_STATE = {}


def _init_worker(image_set, out_dir):
    # one process per core already; OpenCV's own thread pool would only oversubscribe the cores
    cv2.setNumThreads(1)
    _WORKER_STATE["set"] = image_set
    _WORKER_STATE["out_dir"] = out_dir
    _WORKER_STATE["buffer"] = None


def _preprocess_one(index):
    """Worker: write entry `index` as a .bin.

    Returns (index, 'written'|'reused'|'bad', message, meta): `meta` is the ImageMeta the image was
    (or, for a kept .bin, would be) transformed with, so that an EXIF rotation found in a worker
    process reaches the parent's manifest and info files.
    """
    image_set = _WORKER_STATE["set"]
    meta = image_set.metas[index]
    path = os.path.join(_WORKER_STATE["out_dir"], bin_name(meta))
    try:
        if bin_file_problem(path, image_set.height, image_set.width) is None:
            # the header tells the decoded size: a kept .bin costs no decoding
            return index, "reused", "", image_set.meta_for_decoded(index, *probe_decoded_size(meta.path))
        if _WORKER_STATE["buffer"] is None:
            _WORKER_STATE["buffer"] = np.empty((3, image_set.height, image_set.width), dtype=np.float32)
        used = image_set.load_into(index, _WORKER_STATE["buffer"])
    except ImageReadError as exc:
        return index, "bad", str(exc), None
    atomic_write_array(path, _WORKER_STATE["buffer"])
    return index, "written", "", used


def _remove_stale_parts(out_dir):
    """Remove `.bin` part files left by killed runs; another live run's part files are kept."""
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if PART_MARK in name and name.split(PART_MARK)[0].endswith(".bin") and is_stale_part(path):
            try:
                os.remove(path)
            except OSError:
                pass  # removed meanwhile by another run's cleanup


def write_bins(image_set, out_dir, workers=None, skip_bad=False, progress=True, chunksize=2):
    """Write one `<stem>.bin` per image (float32 CHW, facts section 2) into `out_dir`, in parallel.

    Files already complete (exact byte size) are kept; every file is written under a temporary name
    and renamed, so an interrupted run leaves no truncated `.bin`. A bad image raises ImageReadError
    naming it (after the files finished so far are safely in place), or with `skip_bad` is listed in
    the report's `skipped`. Returns PreprocessReport(bin_paths in image-id order, written, reused,
    skipped).
    """
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    _remove_stale_parts(out_dir)
    workers = max(1, min(len(image_set), int(workers or os.cpu_count() or 1)))
    results = {}
    bar = _progress_bar(len(image_set), "preprocess", progress)
    caller_threads = cv2.getNumThreads()
    try:
        if workers == 1:
            _init_worker(image_set, out_dir)
            iterator = (_preprocess_one(i) for i in range(len(image_set)))
            pool = None
        else:
            import multiprocessing
            # spawn, not fork: a child forked after OpenCV started its thread pool can deadlock in
            # cv2.resize
            context = multiprocessing.get_context("spawn")
            pool = context.Pool(workers, initializer=_init_worker, initargs=(image_set, out_dir))
            iterator = pool.imap(_preprocess_one, range(len(image_set)), chunksize)
        try:
            for index, status, message, used in iterator:
                if status == "bad" and not skip_bad:
                    raise ImageReadError(message + " (use --skip-bad to continue past bad images)")
                results[index] = (status, message)
                if used is not None and used != image_set.metas[index]:
                    image_set.exif_rotated[index] = used
                if bar is not None:
                    bar.update(1)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    finally:
        cv2.setNumThreads(caller_threads)  # the in-process path set it to 1
        if bar is not None:
            bar.close()
    bin_paths, skipped = [], []
    written = reused = 0
    for index, meta in enumerate(image_set.metas):
        status, message = results[index]
        if status == "bad":
            skipped.append(SkippedImage(index, meta.image_id, meta.path, message))
            # A .bin kept from an earlier run whose image is now bad: moved out of the tools' view
            # (ais_bench takes every *.bin of the folder), not deleted.
            stale = os.path.join(out_dir, bin_name(meta))
            if os.path.isfile(stale):
                os.replace(stale, stale + ".skipped")
            continue
        written += status == "written"
        reused += status == "reused"
        bin_paths.append(os.path.join(out_dir, bin_name(meta)))
    return PreprocessReport(bin_paths, written, reused, skipped)


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr)


def write_info_files(image_set, bin_dir=None, bin_info=None, jpg_info=None, exclude_ids=()):
    """Write the tools' info files (facts section 2) in image-id order; returns the lines written.

    bin:  `<index> <bin_dir>/<stem>.bin <model width> <model height>` (each .bin must exist, full size)
    jpg:  `<index> <image path> <original width> <original height>`, the decoded size as the
          recipe's cv2.imread gives it (an EXIF-rotated image found so far has its sizes swapped)
    Paths are written as given (relative paths stay relative to where the tool runs).
    Images in `exclude_ids` (skipped bad images) are left out; indices stay consecutive.
    """
    exclude = set(exclude_ids)
    metas = [image_set.effective_meta(i) for i, meta in enumerate(image_set.metas) if meta.image_id not in exclude]
    written = {}
    if bin_info is not None:
        if bin_dir is None:
            raise DataError("a bin info file needs the .bin directory")
        lines = []
        for index, meta in enumerate(metas):
            path = os.path.join(os.fspath(bin_dir), bin_name(meta))
            problem = bin_file_problem(path, image_set.height, image_set.width)
            if problem == BIN_MISSING:
                raise DataError("{} is missing: run `fsaf-repro preprocess` first".format(path))
            if problem:
                raise DataError("{} {}".format(path, problem))
            lines.append("{} {} {} {}".format(index, path, image_set.width, image_set.height))
        atomic_write_text(os.fspath(bin_info), "\n".join(lines) + "\n")
        written["bin"] = lines
    if jpg_info is not None:
        lines = ["{} {} {} {}".format(index, meta.path, meta.orig_w, meta.orig_h)
                 for index, meta in enumerate(metas)]
        atomic_write_text(os.fspath(jpg_info), "\n".join(lines) + "\n")
        written["jpg"] = lines
    return written


def read_info_file(path):
    """Parse an info file into a list of (index, path, width, height); DataError naming the file and line."""
    path = os.fspath(path)
    entries = []
    try:
        with open(path, "r") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 4:
                    raise DataError("{} line {}: expected '<index> <path> <width> <height>', got {!r}".format(
                        path, number, line.rstrip("\n")))
                try:
                    entries.append((int(parts[0]), parts[1], int(parts[2]), int(parts[3])))
                except ValueError:
                    raise DataError("{} line {}: index, width and height must be integers: {!r}".format(
                        path, number, line.rstrip("\n")))
    except FileNotFoundError:
        raise DataError("info file not found: {}".format(path))
    return entries


def write_manifest(path, image_set, report):
    """A json record of a preprocessing run: what was read, from which annotation file, what failed."""
    skipped_ids = {s.image_id for s in report.skipped}
    record = {
        "annotation_file": image_set.annotation_file,
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
        "exif_rotated": sorted(image_set.metas[i].image_id for i in image_set.exif_rotated),
        "images": [dict(image_set.effective_meta(i)._asdict()) for i, m in enumerate(image_set.metas)
                   if m.image_id not in skipped_ids],
    }
    atomic_write_text(os.fspath(path), json.dumps(record, indent=1) + "\n")
    return record


# ---------------------------------------------------------------------------------------------
# Streaming loader

_END = object()


class _Failure(object):
    def __init__(self, exc):
        self.exc = exc


def _put(out_queue, stop, item):
    while not stop.is_set():
        try:
            out_queue.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _take_buffer(free_buffers, stop):
    while not stop.is_set():
        try:
            return free_buffers.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


def _produce(image_set, batch_size, workers, skip_bad, start, input_dtype, out_queue, stop, skipped,
             free_buffers=None):
    """Producer thread: fills batches in image order and puts them on the bounded queue.

    With `free_buffers` (a queue of preallocated batch arrays) it fills recycled buffers instead of
    allocating one per batch.
    """
    dtype = _dtype(input_dtype)
    shape = (batch_size, 3, image_set.height, image_set.width)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            index = start
            total = len(image_set)
            batch, metas = None, []
            while index < total and not stop.is_set():
                if batch is None:
                    if free_buffers is None:
                        batch = np.empty(shape, dtype=dtype)
                    else:
                        batch = _take_buffer(free_buffers, stop)
                        if batch is None:
                            return
                    metas = []
                want = min(batch_size - len(metas), total - index)
                indices = list(range(index, index + want))
                index += want
                slots = list(range(len(metas), len(metas) + want))
                futures = [pool.submit(image_set.load_into, i, batch[s], input_dtype)
                           for i, s in zip(indices, slots)]
                fill = len(metas)
                for i, slot, future in zip(indices, slots, futures):
                    try:
                        meta = future.result()
                    except ImageReadError as exc:
                        if not skip_bad:
                            raise
                        meta_i = image_set.metas[i]
                        skipped.append(SkippedImage(i, meta_i.image_id, meta_i.path, str(exc)))
                        continue
                    if slot != fill:  # close the gap a skipped image left
                        batch[fill] = batch[slot]
                    metas.append(meta)
                    fill += 1
                if len(metas) == batch_size:
                    if not _put(out_queue, stop, (batch, metas)):
                        return
                    batch, metas = None, []
            if metas and not stop.is_set():
                if not _put(out_queue, stop, (batch[:len(metas)], metas)):
                    return
    except BaseException as exc:  # handed to the consumer, which re-raises it
        _put(out_queue, stop, _Failure(exc))
        return
    _put(out_queue, stop, _END)


class BatchStream(object):
    """Iterator of (batch [b, 3, H, W], list of ImageMeta) in image-id order.

    A producer thread decodes with `workers` threads and keeps at most `prefetch` finished batches
    queued, so memory stays at about (prefetch + 2) batches whatever the dataset size. Images that
    fail to read raise ImageReadError in the consumer, or with `skip_bad` are appended to
    `self.skipped` (SkippedImage records) and left out of the batches. The last batch may be
    smaller than `batch_size`.
    """

    def __init__(self, image_set, batch_size, prefetch=2, workers=2, skip_bad=False, start=0,
                 input_dtype="float32", recycle_buffers=False):
        if int(batch_size) < 1:
            raise DataError("batch_size must be >= 1, got {}".format(batch_size))
        if int(prefetch) < 1:
            raise DataError("prefetch must be >= 1, got {}".format(prefetch))
        if not 0 <= int(start) <= len(image_set):
            raise DataError("start must be between 0 and {}, got {}".format(len(image_set), start))
        _dtype(input_dtype)
        self.batch_size = int(batch_size)
        self.skipped = []
        self._queue = queue.Queue(maxsize=int(prefetch))
        self._stop = threading.Event()
        self._done = False
        self._free_buffers = None
        self._lent = None
        if recycle_buffers:
            # One buffer being filled, `prefetch` queued, one lent to the consumer. Pages are touched
            # now, so the stream's memory is committed up front and stays flat for any run length.
            self._free_buffers = queue.Queue()
            shape = (self.batch_size, 3, image_set.height, image_set.width)
            for _ in range(int(prefetch) + 2):
                buffer = np.empty(shape, dtype=_dtype(input_dtype))
                buffer.fill(0)
                self._free_buffers.put(buffer)
        self._thread = threading.Thread(
            target=_produce, name="fsaf-batch-producer",
            args=(image_set, self.batch_size, max(1, int(workers)), bool(skip_bad), int(start),
                  input_dtype, self._queue, self._stop, self.skipped, self._free_buffers))
        self._thread.daemon = True
        self._thread.start()
        # the thread holds no reference to self, so an abandoned stream still stops its producer
        self._finalizer = weakref.finalize(self, self._stop.set)

    def __iter__(self):
        return self

    def __next__(self):
        if self._lent is not None:
            # Recycling: the batch handed out last time is only valid until this call.
            self._free_buffers.put(self._lent)
            self._lent = None
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            self.close()
            raise item.exc
        if self._free_buffers is not None:
            batch = item[0]
            self._lent = batch if batch.base is None else batch.base
        return item

    next = __next__

    def close(self):
        self._done = True
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def iter_batches(image_set, batch_size, prefetch=2, workers=2, skip_bad=False, start=0, input_dtype="float32",
                 recycle_buffers=False):
    """Stream batches straight from the images (no .bin on disk); see BatchStream.

    With `recycle_buffers` a fixed pool of prefetch + 2 batch arrays is reused, so memory does not
    depend on the run's length; each yielded batch is then valid only until the next one is asked for.
    """
    return BatchStream(image_set, batch_size, prefetch=prefetch, workers=workers, skip_bad=skip_bad,
                       recycle_buffers=recycle_buffers,
                       start=start, input_dtype=input_dtype)


# ---------------------------------------------------------------------------------------------
# Command line


def _add_set_arguments(parser):
    parser.add_argument("--annotations", required=True, help="COCO instances json (instances_val2017.json)")
    parser.add_argument("--images", required=True, help="image directory (val2017)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images by image id")
    parser.add_argument("--height", type=int, default=None, help="model input height (spec: 800)")
    parser.add_argument("--width", type=int, default=None, help="model input width (spec: 1216)")


def _cmd_preprocess(args):
    image_set = CocoImageSet(args.annotations, args.images, limit=args.limit, height=args.height,
                             width=args.width)
    report = write_bins(image_set, args.out, workers=args.workers, skip_bad=args.skip_bad,
                        progress=not args.no_progress)
    bad_ids = [s.image_id for s in report.skipped]
    write_info_files(image_set, bin_dir=args.out, bin_info=args.bin_info, jpg_info=args.jpg_info,
                     exclude_ids=bad_ids)
    manifest = os.path.join(args.out, "preprocess_manifest.json")
    write_manifest(manifest, image_set, report)
    print("preprocess: {} .bin files in {} ({} written, {} already complete); info files {} and {}; "
          "manifest {}".format(len(report.bin_paths), args.out, report.written, report.reused,
                               args.bin_info, args.jpg_info, manifest))
    listed = set(os.path.basename(p) for p in report.bin_paths)
    foreign = sorted(n for n in os.listdir(args.out) if n.lower().endswith(".bin") and n not in listed)
    if foreign:
        sys.stderr.write("preprocess: warning: {} holds {} .bin file(s) not in this selection (first: {}); the "
                         "info file lists only the selection, but ais_bench --input {} would read them all\n"
                         .format(args.out, len(foreign), ", ".join(foreign[:3]), args.out))
    if report.skipped:
        sys.stderr.write("preprocess: skipped {} bad image(s):\n".format(len(report.skipped)))
        for item in report.skipped:
            sys.stderr.write("  {} (image id {}): {}\n".format(item.path, item.image_id, item.reason))
    return 0


def _cmd_info(args):
    image_set = CocoImageSet(args.annotations, args.images, limit=args.limit, height=args.height,
                             width=args.width)
    if args.jpg_info:
        image_set.resolve_orientation()  # the jpg info gives decoded sizes, as the recipe's cv2.imread
    written = write_info_files(image_set, bin_dir=args.bin_dir,
                               bin_info=args.bin_info if args.bin_dir else None, jpg_info=args.jpg_info)
    print("info: {} lines in {}".format(
        len(image_set), " and ".join(p for p in (args.bin_info if "bin" in written else None,
                                                 args.jpg_info) if p)))
    return 0


def register_cli(subparsers):
    pre = subparsers.add_parser(
        "preprocess", help="recipe step 4: images -> <stem>.bin (float32 CHW) + info files",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_set_arguments(pre)
    pre.add_argument("--out", required=True, help="directory for the .bin files (val2017_bin)")
    pre.add_argument("--bin-info", default="fsaf.info", help="bin info file for the benchmark tool")
    pre.add_argument("--jpg-info", default="fsaf_jpeg.info",
                     help="jpg info file (each image's decoded size, as the recipe's cv2.imread gives it)")
    pre.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    pre.add_argument("--skip-bad", action="store_true",
                     help="continue past unreadable images and list them (default: stop at the first)")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre.set_defaults(func=_cmd_preprocess)

    info = subparsers.add_parser(
        "info", help="write the tools' info files (get_info.py) in image-id order",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_set_arguments(info)
    info.add_argument("--bin-dir", default=None, help="directory holding the .bin files (for --bin-info)")
    info.add_argument("--bin-info", default="fsaf.info")
    info.add_argument("--jpg-info", default="fsaf_jpeg.info")
    info.set_defaults(func=_cmd_info)
