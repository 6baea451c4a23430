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
import numbers
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

from ..errors import AnnotationError, DataError, ImageReadError
from ..fileio import input_dir, input_file, output_dir, output_file
from ..locking import run_lock
from ..fileio import (PART_MARK, atomic_write_array, atomic_write_text, file_sha256,  # noqa: F401  (file_sha256: API)
                     is_stale_part)
from ..spec import coco_category_ids, coco_class_names, input_constants

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
    return decode_bgr(read_image_bytes(path), path)


def read_image_bytes(path):
    """The bytes of an image file; ImageReadError naming it when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ImageReadError("image file not found: {}".format(path))
    except OSError as exc:
        raise ImageReadError("cannot read image file {}: {}".format(path, exc))


def decode_bgr(data, path):
    """`read_bgr` on bytes already read from `path` (named in errors); see `read_bgr`."""
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
    # keyed by the values, not computed once: a spec override (tests, reproduce) must take effect,
    # and reading the spec each call lets a stage's read recorder see the input section
    const = input_constants()
    key = (tuple(const["mean_rgb"]), tuple(const["std_rgb"]))
    if key not in _LUT_CACHE:
        mean = np.asarray(key[0], dtype=np.float32)
        std = np.asarray(key[1], dtype=np.float32)
        values = np.arange(256, dtype=np.float32)
        _LUT_CACHE[key] = np.stack([(values - mean[c]) / std[c] for c in range(3)]).astype(np.float32)
    return _LUT_CACHE[key]


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
    """(parsed dict, sha256 hex) of a COCO annotation file, checked by `validate_annotations`;
    AnnotationError naming it on failure."""
    data, sha = _parse_annotation_json(annotation_file)
    validate_annotations(data, os.fspath(annotation_file))
    return data, sha


AnnotationImage = namedtuple("AnnotationImage", "image_id file_name width height")
# A read annotation file: its path, parsed content, sha256 of its bytes and its images in id order.
Annotations = namedtuple("Annotations", "path data sha256 images")


def read_annotation_file(annotation_file, need_annotations=False):
    """Annotations of a COCO file, read once and checked by `validate_annotations`."""
    data, sha = _parse_annotation_json(annotation_file)
    images = validate_annotations(data, os.fspath(annotation_file), need_annotations=need_annotations)
    return Annotations(os.fspath(annotation_file), data, sha, images)


def _parse_annotation_json(annotation_file):
    annotation_file = os.fspath(annotation_file)
    try:
        with open(annotation_file, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise AnnotationError("annotation file not found: {}".format(annotation_file))
    except OSError as exc:
        raise AnnotationError("cannot read annotation file {}: {}".format(annotation_file, exc))
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnnotationError("annotation file {} is not valid JSON: {}".format(annotation_file, exc))
    return data, hashlib.sha256(raw).hexdigest()


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value):
    """A JSON width/height as int: an integer, or a float with an integral value; None when not positive."""
    if _is_int(value) or (isinstance(value, float) and math.isfinite(value) and value.is_integer()):
        return int(value) if value > 0 else None
    return None


def file_name_problem(file_name):
    """Why an annotation `file_name` cannot name an image inside the image folder, or None.

    Judged on the text alone (so verbs that never open images refuse the same files): an absolute
    path or one whose `..` parts climb out of the folder is refused; `CocoImageSet` also resolves
    symlinks against the real folder.
    """
    if not isinstance(file_name, str) or not file_name.strip():
        return "'file_name' must be a non-empty string"
    if "\x00" in file_name:
        return "'file_name' holds a NUL character"
    if os.path.isabs(file_name):
        return "'file_name' is an absolute path; it must be relative to the image folder"
    normal = os.path.normpath(file_name)
    if normal == os.pardir or normal.startswith(os.pardir + os.sep):
        return "'file_name' leaves the image folder (..)"
    if file_name.endswith(("/", os.sep)) or normal == os.curdir:
        return "'file_name' names a folder, not an image file"
    return None


def validate_annotations(data, source, need_annotations=False):
    """The one check of a COCO annotation file's content, shared by every verb that reads one.

    `source` (the file) is named in every message, with the offending list entry. Checked: a JSON
    object with 'images' and 'categories' lists; categories with integer ids (each once) and string
    names; images with an integer id (each once), a `file_name` inside the image folder (see
    `file_name_problem`; each file once) and positive integer width and height. With
    `need_annotations` (scoring) also the 'annotations' list: integer ids (each once: pycocotools
    indexes them by id and would silently drop a repeated one), known image and category ids, a
    bbox of 4 finite numbers and a finite area. Returns the images as AnnotationImage in id order.
    """
    if not isinstance(data, dict):
        raise AnnotationError("annotation file {} must hold a JSON object, got {}".format(
            source, type(data).__name__))
    for key in ("images", "categories") + (("annotations",) if need_annotations else ()):
        if not isinstance(data.get(key), list):
            raise AnnotationError("annotation file {} has no '{}' list".format(source, key))
    category_ids = set()
    for number, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise AnnotationError("{}: categories[{}] needs an integer 'id' and a string 'name', got {!r}".format(
                source, number, cat))
        if cat["id"] in category_ids:
            raise AnnotationError("{}: category id {} appears twice (categories[{}])".format(
                source, cat["id"], number))
        category_ids.add(cat["id"])
    images = []
    ids, files = {}, {}
    for number, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise AnnotationError("{}: images[{}] must be an object, got {!r}".format(source, number, entry))
        image_id, file_name = entry.get("id"), entry.get("file_name")
        width, height = _positive_int(entry.get("width")), _positive_int(entry.get("height"))
        if not _is_int(image_id) or width is None or height is None:
            raise AnnotationError("{}: images[{}] needs an integer 'id' and positive integer 'width' and "
                                  "'height': {!r}".format(source, number, entry))
        problem = file_name_problem(file_name)
        if problem:
            raise AnnotationError("{}: images[{}] (image id {}): {}: {!r}".format(
                source, number, image_id, problem, file_name))
        if image_id in ids:
            raise AnnotationError("{}: image id {} appears twice (images[{}] and images[{}])".format(
                source, image_id, ids[image_id], number))
        ids[image_id] = number
        key = os.path.normpath(file_name)
        if key in files:
            raise AnnotationError("{}: file {!r} is listed twice (image ids {} and {})".format(
                source, file_name, files[key], image_id))
        files[key] = image_id
        images.append(AnnotationImage(int(image_id), file_name, width, height))
    if need_annotations:
        ann_ids = set()
        for number, ann in enumerate(data["annotations"]):
            fault = _annotation_fault(ann, ids, category_ids, ann_ids)
            if fault:
                raise AnnotationError("{}: annotations[{}] {}: {!r}".format(source, number, fault, ann))
            ann_ids.add(ann["id"])
    images.sort(key=lambda image: image.image_id)
    return images


def _annotation_fault(ann, image_ids, category_ids, seen_ids):
    if not isinstance(ann, dict):
        return "must be an object"
    if not _is_int(ann.get("id")):
        return "needs an integer 'id'"
    if ann["id"] in seen_ids:
        return "repeats annotation id {}".format(ann["id"])
    if ann.get("image_id") not in image_ids or not _is_int(ann.get("image_id")):
        return "has image_id {!r}, which 'images' does not list".format(ann.get("image_id"))
    if ann.get("category_id") not in category_ids or not _is_int(ann.get("category_id")):
        return "has category_id {!r}, which 'categories' does not list".format(ann.get("category_id"))
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return "needs a 'bbox' of 4 finite numbers"
    if not _is_number(ann.get("area")):
        return "needs a finite number 'area'"
    return None


def output_stems(images, source):
    """image id -> the stem that names every file made for that image: `<stem>.bin`, and the tools'
    outputs `<stem>_1.bin` / `<stem>_0.bin`, which they name after the input file.

    The stem is the file name's own (`000000000139.jpg` -> `000000000139`, the recipe's names) when
    no other image of the file has it; images sharing a stem (`a/x.jpg` and `b/x.jpg`, or `x.jpg`
    and `x.png`: legal in COCO-format sets) get `<stem>__id<image id>`. Stems are compared
    case-blind, because `X.bin` and `x.bin` are one file on a case-insensitive filesystem.
    Deriving a name rather than refusing keeps such sets usable; the rule reads every image of the
    annotation file, not the --limit selection, so preprocess, info files and postprocess give an
    image the same name whatever selection each of them runs on. A derived name that still meets
    another image's stem (a file really named `x__id5.jpg`) is an AnnotationError naming both.
    """
    groups = {}
    for image in images:
        stem = os.path.splitext(os.path.basename(image.file_name))[0]
        groups.setdefault(stem.casefold(), []).append((image, stem))
    stems = {}
    for group in groups.values():
        for image, stem in group:
            stems[image.image_id] = stem if len(group) == 1 else "{}__id{}".format(stem, image.image_id)
    owner = {}
    for image in images:
        key = stems[image.image_id].casefold()
        if key in owner:
            raise AnnotationError("{}: images {!r} (id {}) and {!r} (id {}) would write files of one name "
                                  "({!r}); rename one of them".format(source, owner[key].file_name,
                                                                     owner[key].image_id, image.file_name,
                                                                     image.image_id, stems[image.image_id]))
        owner[key] = image
    return stems


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
        annotations = read_annotation_file(self.annotation_file)
        self.annotation_sha256 = annotations.sha256
        self.category_ids = category_ids_from_categories(
            annotations.data["categories"], self.annotation_file, strict_ids=strict_ids)
        images = annotations.images
        # every image of the file, not only the selection: names must not depend on --limit
        self.output_stems = output_stems(images, self.annotation_file)
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
        if self.image_dir:  # "" where no image is opened (postprocess without --images)
            self._refuse_escaping_paths()

    def _refuse_escaping_paths(self):
        """AnnotationError for a selected image whose path, symlinks resolved, leaves the image folder.

        `file_name_problem` already refused `..` and absolute names; this catches a symlink (the
        file's or a sub-folder's) that points outside. A symlinked image folder itself is fine: it
        is resolved too.
        """
        folder = os.path.realpath(self.image_dir)
        for meta in self.metas:
            resolved = os.path.realpath(meta.path)
            if os.path.commonpath([folder, resolved]) != folder:
                raise AnnotationError(
                    "{}: image id {}: {!r} resolves to {}, outside the image folder {} (a symlink pointing "
                    "out of it); only images inside --images are read: copy the file in instead".format(
                        self.annotation_file, meta.image_id, meta.file_name, resolved, self.image_dir))

    def output_stem(self, meta):
        """The stem of the files made for `meta`'s image (`output_stems`: unique per image)."""
        return self.output_stems[meta.image_id]

    def bin_name(self, meta):
        return self.output_stem(meta) + ".bin"

    def __len__(self):
        return len(self.metas)

    @property
    def image_ids(self):
        return [meta.image_id for meta in self.metas]

    def read(self, index, sha256_into=None):
        """Decoded BGR image of entry `index`, checked against the annotation's size.

        An image whose decoded size is the annotation's transposed carries an EXIF orientation tag:
        OpenCV's colour read (the recipe's, and mmcv's) rotates it, so the transform and the box
        scale follow the decoded image, as the recipe does; the image is listed in
        `self.exif_rotated` and a warning names it. Any other size difference is an error.

        With a dict `sha256_into`, the sha256 of the bytes read is stored under `index` before they
        are decoded (so an undecodable file has one too): the digest of exactly the bytes that made
        the pixels, which a later hash of the file could not promise if the file was replaced.
        """
        path = self.metas[index].path
        data = read_image_bytes(path)
        if sha256_into is not None:
            sha256_into[index] = hashlib.sha256(data).hexdigest()
        bgr = decode_bgr(data, path)
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

    def load_into(self, index, out, input_dtype="float32", sha256_into=None):
        bgr, meta = self.read(index, sha256_into)
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


# The record of what each .bin of a folder was made from. A .bin is reused only when its entry
# matches: the source image's bytes (size and sha256; hashing a JPEG costs a small fraction of
# decoding it) and the transform (`bin_transform_key`), and the .bin itself is still the file that
# was written then (size and mtime_ns: anything that rewrites it changes them). A byte size alone
# would keep the old pixels of a replaced image while the manifest takes the new image's scale.
# JSON lines: a header with the transform, then one line per .bin written (the last line of a name
# wins; {"bin": name, "forget": true} drops it). Appended as each .bin lands, so a killed run loses
# at most the entries in flight (those .bin files are redone, never trusted unrecorded).
BIN_RECORD_NAME = "bin_inputs.jsonl"
_BIN_RECORD_FORMAT = 1
# Bump when a code change alters what a .bin holds for the same image: every .bin is then redone.
_TRANSFORM_REVISION = 1


def bin_transform_key(height, width):
    """Everything a .bin's bytes depend on besides its image: the transform's parameters (canvas,
    mean/std, dtype, layout) and implementation (this code's revision, OpenCV's resize)."""
    const = input_constants()
    return {"revision": _TRANSFORM_REVISION, "canvas": [int(height), int(width)],
            "mean_rgb": [float(v) for v in const["mean_rgb"]], "std_rgb": [float(v) for v in const["std_rgb"]],
            "dtype": "float32", "layout": "CHW", "resize": "keep-ratio floor INTER_LINEAR, top-left, zero pad",
            "opencv": cv2.__version__}


def read_bin_record(bin_dir, height, width):
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
        raise DataError("cannot read the .bin record {}: {}".format(path, exc))
    entries = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            item = None
        if number == 1:
            if not (isinstance(item, dict) and item.get("format") == _BIN_RECORD_FORMAT):
                warnings.warn("{} is not a .bin record of this version: its .bin files are redone".format(path),
                              RuntimeWarning, stacklevel=2)
                return {}
            if item.get("transform") != bin_transform_key(height, width):
                return {}  # made with another canvas, normalisation or OpenCV: nothing in it is reusable
            continue
        if not (isinstance(item, dict) and isinstance(item.get("bin"), str)):
            warnings.warn("{} line {} is damaged: skipped (its .bin is redone)".format(path, number),
                          RuntimeWarning, stacklevel=2)
            continue
        if item.get("forget"):
            entries.pop(item["bin"], None)
        else:
            entries[item["bin"]] = item
    return entries


class _BinRecordWriter(object):
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
        self._handle.write(json.dumps(item, sort_keys=True) + "\n")
        self._handle.flush()

    def close(self):
        self._handle.close()


def _bin_entry(meta, used, image_data, bin_path):
    stat = os.stat(bin_path)
    return {"image_id": meta.image_id, "file_name": meta.file_name, "image_bytes": len(image_data),
            "image_sha256": hashlib.sha256(image_data).hexdigest(), "decoded": [used.orig_w, used.orig_h],
            "bin_bytes": stat.st_size, "bin_mtime_ns": stat.st_mtime_ns}


def _recorded_source_problem(entry, bin_path, image_data, height, width):
    """None when `entry` says the .bin at `bin_path` was made from `image_data`; else why not."""
    if not isinstance(entry, dict):
        return "has no entry in {} for this transform".format(BIN_RECORD_NAME)
    decoded = entry.get("decoded")
    if not (isinstance(decoded, list) and len(decoded) == 2 and all(_is_int(v) and v > 0 for v in decoded)):
        return "has a malformed entry in {}".format(BIN_RECORD_NAME)
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
    return None


_WORKER_STATE = {}


def _init_worker(image_set, out_dir, record):
    # one process per core already; OpenCV's own thread pool would only oversubscribe the cores
    cv2.setNumThreads(1)
    _WORKER_STATE["set"] = image_set
    _WORKER_STATE["out_dir"] = out_dir
    _WORKER_STATE["record"] = record
    _WORKER_STATE["buffer"] = None


def _preprocess_one(index):
    """Worker: write entry `index` as a .bin.

    Returns (index, 'written'|'reused'|'bad', message, meta, record entry): `meta` is the ImageMeta
    the image was (or, for a kept .bin, would be) transformed with, so that an EXIF rotation found
    in a worker process reaches the parent's manifest and info files; the entry is the parent's to
    record (None for a bad image). The bytes hashed are the bytes decoded: an image replaced during
    the run cannot be recorded under the other image's hash.
    """
    image_set = _WORKER_STATE["set"]
    meta = image_set.metas[index]
    path = os.path.join(_WORKER_STATE["out_dir"], image_set.bin_name(meta))
    try:
        data = read_image_bytes(meta.path)
        entry = _WORKER_STATE["record"].get(os.path.basename(path))
        if _recorded_source_problem(entry, path, data, image_set.height, image_set.width) is None:
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
    return index, "written", "", used, _bin_entry(meta, used, data, path)


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

    A `.bin` is kept only when the folder's record (BIN_RECORD_NAME) says it was made from the
    image's current bytes with this transform and it is unchanged since; any other is redone. Every
    file is written under a temporary name and renamed, so an interrupted run leaves no truncated
    `.bin`, and its record entry is appended as it lands, so a killed or stopped run keeps its
    finished work. A bad image raises ImageReadError
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
    record = read_bin_record(out_dir, image_set.height, image_set.width)
    recorder = _BinRecordWriter(out_dir, image_set.height, image_set.width, record)
    bar = _progress_bar(len(image_set), "preprocess", progress)
    caller_threads = cv2.getNumThreads()
    try:
        if workers == 1:
            _init_worker(image_set, out_dir, record)
            iterator = (_preprocess_one(i) for i in range(len(image_set)))
            pool = None
        else:
            import multiprocessing
            # spawn, not fork: a child forked after OpenCV started its thread pool can deadlock in
            # cv2.resize
            context = multiprocessing.get_context("spawn")
            pool = context.Pool(workers, initializer=_init_worker, initargs=(image_set, out_dir, dict(record)))
            iterator = pool.imap(_preprocess_one, range(len(image_set)), chunksize)
        try:
            for index, status, message, used, entry in iterator:
                if status == "bad" and not skip_bad:
                    raise ImageReadError(message + " (use --skip-bad to continue past bad images)")
                results[index] = (status, message)
                name = image_set.bin_name(image_set.metas[index])
                if status == "written":
                    recorder.add(name, entry)
                elif status == "bad" and name in record:
                    recorder.forget(name)  # a skipped image's old .bin is moved aside below
                if used is not None and used != image_set.metas[index]:
                    image_set.exif_rotated[index] = used
                if bar is not None:
                    bar.update(1)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    finally:
        recorder.close()
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
            stale = os.path.join(out_dir, image_set.bin_name(meta))
            if os.path.isfile(stale):
                os.replace(stale, stale + ".skipped")
            continue
        written += status == "written"
        reused += status == "reused"
        bin_paths.append(os.path.join(out_dir, image_set.bin_name(meta)))
    return PreprocessReport(bin_paths, written, reused, skipped)


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr)


def write_info_files(image_set, bin_dir=None, bin_info=None, jpg_info=None, exclude_ids=(), report=None):
    """Write the tools' info files (facts section 2) in image-id order; returns the lines written.

    bin:  `<index> <bin_dir>/<stem>.bin <model width> <model height>`: each .bin must exist, full
          size, and be the one the folder's record says was made from the image's current bytes
          with this transform (as `write_bins` reuses them); `report`, the PreprocessReport of a
          `write_bins` run over this folder in this process, spares checking its .bin files again
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
        checked = set(report.bin_paths) if report is not None else set()
        record = None
        for index, meta in enumerate(metas):
            path = os.path.join(os.fspath(bin_dir), image_set.bin_name(meta))
            if path not in checked:
                problem = bin_file_problem(path, image_set.height, image_set.width)
                if problem == BIN_MISSING:
                    raise DataError("{} is missing: run `fsaf-repro preprocess` first".format(path))
                if problem:
                    raise DataError("{} {}".format(path, problem))
                if record is None:
                    record = read_bin_record(bin_dir, image_set.height, image_set.width)
                problem = _recorded_source_problem(record.get(os.path.basename(path)), path,
                                                   read_image_bytes(meta.path), image_set.height, image_set.width)
                if problem:
                    raise DataError("{} {} (image {}, id {}): rerun `fsaf-repro preprocess` on {}".format(
                        path, problem, meta.path, meta.image_id, bin_dir))
            lines.append(_info_line(bin_info, index, path, image_set.width, image_set.height, meta))
        atomic_write_text(os.fspath(bin_info), "\n".join(lines) + "\n")
        written["bin"] = lines
    if jpg_info is not None:
        lines = [_info_line(jpg_info, index, meta.path, meta.orig_w, meta.orig_h, meta)
                 for index, meta in enumerate(metas)]
        atomic_write_text(os.fspath(jpg_info), "\n".join(lines) + "\n")
        written["jpg"] = lines
    return written


def _info_line(info_path, index, path, width, height, meta):
    # the tools split info lines at whitespace: a path holding any would be read as other fields
    if any(c.isspace() for c in path):
        raise DataError("{}: cannot list {!r} (image id {}): info files separate their fields by white space; "
                        "rename the file or folder".format(info_path, path, meta.image_id))
    return "{} {} {} {}".format(index, path, width, height)


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
             free_buffers=None, end=None, sha256_into=None):
    """Producer thread: fills batches of entries [start, end) in image order and puts them on the
    bounded queue.

    With `free_buffers` (a queue of preallocated batch arrays) it fills recycled buffers instead of
    allocating one per batch; with a dict `sha256_into`, each image's bytes' sha256 lands there.
    """
    dtype = _dtype(input_dtype)
    shape = (batch_size, 3, image_set.height, image_set.width)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            index = start
            total = len(image_set) if end is None else end
            load_options = {} if sha256_into is None else {"sha256_into": sha256_into}
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
                futures = [pool.submit(image_set.load_into, i, batch[s], input_dtype, **load_options)
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
    smaller than `batch_size`. The stream covers entries [start, stop) (stop: the set's end by
    default). With `hash_images`, `self.image_sha256` maps each entry read to the sha256 of its
    file's bytes (those decoded, or found undecodable), filled as the workers read them.
    """

    def __init__(self, image_set, batch_size, prefetch=2, workers=2, skip_bad=False, start=0,
                 input_dtype="float32", recycle_buffers=False, stop=None, hash_images=False):
        if int(batch_size) < 1:
            raise DataError("batch_size must be >= 1, got {}".format(batch_size))
        if int(prefetch) < 1:
            raise DataError("prefetch must be >= 1, got {}".format(prefetch))
        if not 0 <= int(start) <= len(image_set):
            raise DataError("start must be between 0 and {}, got {}".format(len(image_set), start))
        end = len(image_set) if stop is None else int(stop)
        if not int(start) <= end <= len(image_set):
            raise DataError("stop must be between start ({}) and {}, got {}".format(start, len(image_set), stop))
        _dtype(input_dtype)
        self.batch_size = int(batch_size)
        self.skipped = []
        self.image_sha256 = {} if hash_images else None
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
                  input_dtype, self._queue, self._stop, self.skipped, self._free_buffers, end,
                  self.image_sha256))
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
                 recycle_buffers=False, stop=None, hash_images=False):
    """Stream batches straight from the images (no .bin on disk); see BatchStream.

    With `recycle_buffers` a fixed pool of prefetch + 2 batch arrays is reused, so memory does not
    depend on the run's length; each yielded batch is then valid only until the next one is asked for.
    """
    return BatchStream(image_set, batch_size, prefetch=prefetch, workers=workers, skip_bad=skip_bad,
                       recycle_buffers=recycle_buffers, start=start, input_dtype=input_dtype, stop=stop,
                       hash_images=hash_images)


# ---------------------------------------------------------------------------------------------
# Command line


def _add_set_arguments(parser):
    parser.add_argument("--annotations", required=True, type=input_file("annotation file"),
                        help="COCO instances json (instances_val2017.json)")
    parser.add_argument("--images", required=True, type=input_dir("image folder"), help="image directory (val2017)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images by image id")
    parser.add_argument("--height", type=int, default=None, help="model input height (spec: 800)")
    parser.add_argument("--width", type=int, default=None, help="model input width (spec: 1216)")


def _cmd_preprocess(args):
    # one writer per .bin folder: a second run on it refuses at once (fsaf_repro.locking)
    with run_lock(args.out, "preprocess"):
        return _preprocess_locked(args)


def _preprocess_locked(args):
    image_set = CocoImageSet(args.annotations, args.images, limit=args.limit, height=args.height,
                             width=args.width)
    report = write_bins(image_set, args.out, workers=args.workers, skip_bad=args.skip_bad,
                        progress=not args.no_progress)
    bad_ids = [s.image_id for s in report.skipped]
    write_info_files(image_set, bin_dir=args.out, bin_info=args.bin_info, jpg_info=args.jpg_info,
                     exclude_ids=bad_ids, report=report)
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
    pre.add_argument("--out", required=True, type=output_dir(".bin folder"),
                     help="directory for the .bin files (val2017_bin)")
    pre.add_argument("--bin-info", default="fsaf.info", type=output_file("bin info file"),
                     help="bin info file for the benchmark tool")
    pre.add_argument("--jpg-info", default="fsaf_jpeg.info", type=output_file("jpg info file"),
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
    info.add_argument("--bin-dir", default=None, type=input_dir(".bin folder"),
                      help="directory holding the .bin files (for --bin-info)")
    info.add_argument("--bin-info", default="fsaf.info", type=output_file("bin info file"))
    info.add_argument("--jpg-info", default="fsaf_jpeg.info", type=output_file("jpg info file"))
    info.set_defaults(func=_cmd_info)
