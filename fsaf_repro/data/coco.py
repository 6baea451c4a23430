"""A COCO annotation file and its images: the one check of an annotation file's content, the
names of the files made for each image, and `CocoImageSet`, the images in image-id order with the
recipe's per-image metadata.

Images are taken from the annotation file in image-id order (not the first 5000 names `os.listdir`
returns, as the recipe's scripts do); an image path must stay inside the image folder. A bare image
folder (no annotation file, the recipe's step 4.2 input) is listed by `folder_images`: ids 1..N in
file-name order.
"""
import hashlib
import math
import numbers
import os
import warnings
from collections import namedtuple
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import AnnotationError, DataError, ImageReadError
from ..jsonio import parse_json
from ..spec import coco_category_ids, coco_class_names
from .transform import (canvas_size, decode_bgr, input_array_dtype, letterbox_to_canvas, letterbox_to_canvas_uint8,
                        probe_decoded_size, read_image_bytes, scaled_size)

# Where a COCO root keeps val2017 (recipe section 4.1: `<root>/annotations/instances_val2017.json` and
# `<root>/val2017/`): the one statement of the layout; tests check it against the spec's
# acceptance.val2017 block, which cites it.
ANNOTATION_DIR = "annotations"
ANNOTATION_FILE_NAME = "instances_val2017.json"
IMAGE_DIR_NAME = "val2017"
ANNOTATION_RELPATH = ANNOTATION_DIR + "/" + ANNOTATION_FILE_NAME


def coco_annotation_path(coco_root: str) -> str:
    """`<coco_root>/annotations/instances_val2017.json`."""
    return os.path.join(str(coco_root), ANNOTATION_DIR, ANNOTATION_FILE_NAME)


def coco_image_dir(coco_root: str) -> str:
    """`<coco_root>/val2017`."""
    return os.path.join(str(coco_root), IMAGE_DIR_NAME)


ImageMeta = namedtuple("ImageMeta", "image_id file_name path orig_w orig_h scale new_w new_h")
SkippedImage = namedtuple("SkippedImage", "index image_id path reason")


def load_annotation_json(annotation_file: str) -> Tuple[Dict[str, Any], str]:
    """(parsed dict, sha256 hex) of a COCO annotation file, checked by `validate_annotations`;
    AnnotationError naming it on failure."""
    data, sha = _parse_annotation_json(annotation_file)
    validate_annotations(data, os.fspath(annotation_file))
    return data, sha


AnnotationImage = namedtuple("AnnotationImage", "image_id file_name width height")
# A read annotation file: its path, parsed content, sha256 of its bytes and its images in id order.
Annotations = namedtuple("Annotations", "path data sha256 images")


def read_annotation_file(annotation_file: str, need_annotations: bool = False) -> Annotations:
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
        raise AnnotationError(f"annotation file not found: {annotation_file}")
    except OSError as exc:
        raise AnnotationError(f"cannot read annotation file {annotation_file}: {exc}")
    # the one loader (depth limit, typed errors); the content is checked by validate_annotations
    data = parse_json(raw, AnnotationError, f"annotation file {annotation_file}")
    return data, hashlib.sha256(raw).hexdigest()


def is_json_int(value: Any) -> bool:
    """A JSON integer: an int, not a bool (json reads true as True, an int subclass)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value):
    """A JSON width/height as int: an integer, or a float with an integral value; None when not positive."""
    if is_json_int(value) or (isinstance(value, float) and math.isfinite(value) and value.is_integer()):
        return int(value) if value > 0 else None
    return None


def file_name_problem(file_name: Any) -> Optional[str]:
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


def validate_annotations(data: Any, source: str, need_annotations: bool = False) -> List[AnnotationImage]:
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
        raise AnnotationError(f"annotation file {source} must hold a JSON object, got {type(data).__name__}")
    for key in ("images", "categories") + (("annotations",) if need_annotations else ()):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"annotation file {source} has no '{key}' list")
    category_ids = _checked_category_ids(data["categories"], source)
    images, ids = _checked_images(data["images"], source)
    if need_annotations:
        ann_ids = set()
        for number, ann in enumerate(data["annotations"]):
            fault = _annotation_fault(ann, ids, category_ids, ann_ids)
            if fault:
                raise AnnotationError(f"{source}: annotations[{number}] {fault}: {ann!r}")
            ann_ids.add(ann["id"])
    images.sort(key=lambda image: image.image_id)
    return images


def _checked_category_ids(categories, source):
    """The category ids, each an integer listed once with a string name."""
    category_ids = set()
    for number, cat in enumerate(categories):
        if not isinstance(cat, dict) or not is_json_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise AnnotationError(f"{source}: categories[{number}] needs an integer 'id' and a string 'name', "
                                  f"got {cat!r}")
        if cat["id"] in category_ids:
            raise AnnotationError(f"{source}: category id {cat['id']} appears twice (categories[{number}])")
        category_ids.add(cat["id"])
    return category_ids


def _checked_images(entries, source):
    """([AnnotationImage] in file order, {image id: index in 'images'}), every entry checked."""
    images = []
    ids, files = {}, {}
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise AnnotationError(f"{source}: images[{number}] must be an object, got {entry!r}")
        image_id, file_name = entry.get("id"), entry.get("file_name")
        width, height = _positive_int(entry.get("width")), _positive_int(entry.get("height"))
        if not is_json_int(image_id) or width is None or height is None:
            raise AnnotationError(f"{source}: images[{number}] needs an integer 'id' and positive integer 'width' and "
                                  f"'height': {entry!r}")
        problem = file_name_problem(file_name)
        if problem:
            raise AnnotationError(f"{source}: images[{number}] (image id {image_id}): {problem}: {file_name!r}")
        if image_id in ids:
            raise AnnotationError(f"{source}: image id {image_id} appears twice (images[{ids[image_id]}] and "
                                  f"images[{number}])")
        ids[image_id] = number
        key = os.path.normpath(file_name)
        if key in files:
            raise AnnotationError(f"{source}: file {file_name!r} is listed twice (image ids {files[key]} and "
                                  f"{image_id})")
        files[key] = image_id
        images.append(AnnotationImage(int(image_id), file_name, width, height))
    return images, ids


def _annotation_fault(ann, image_ids, category_ids, seen_ids):
    if not isinstance(ann, dict):
        return "must be an object"
    if not is_json_int(ann.get("id")):
        return "needs an integer 'id'"
    if ann["id"] in seen_ids:
        return f"repeats annotation id {ann['id']}"
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    # the type first: a list or an object cannot be looked up in a set (TypeError), and true would match id 1
    if not is_json_int(image_id) or image_id not in image_ids:
        return f"has image_id {image_id!r}, which 'images' does not list"
    if not is_json_int(category_id) or category_id not in category_ids:
        return f"has category_id {category_id!r}, which 'categories' does not list"
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return "needs a 'bbox' of 4 finite numbers"
    if not _is_number(ann.get("area")):
        return "needs a finite number 'area'"
    return None


def output_stems(images: Sequence[AnnotationImage], source: str) -> Dict[int, str]:
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
            stems[image.image_id] = stem if len(group) == 1 else f"{stem}__id{image.image_id}"
    owner = {}
    for image in images:
        key = stems[image.image_id].casefold()
        if key in owner:
            other = owner[key]
            raise AnnotationError(f"{source}: images {other.file_name!r} (id {other.image_id}) and "
                                  f"{image.file_name!r} (id {image.image_id}) would write files of one name "
                                  f"({stems[image.image_id]!r}); rename one of them")
        owner[key] = image
    return stems


def category_ids_from_categories(categories: Sequence[Any], source: str, strict_ids: bool = True) -> List[int]:
    """label k -> category id, by matching the file's category names with the 80 model classes.

    A name missing from the file, an extra or duplicated name is an AnnotationError. With
    `strict_ids` the ids must also be COCO's (spec `coco_category_ids`): a file whose names sit on
    other ids (swapped categories) is not val2017 and is refused.
    """
    classes = coco_class_names()
    by_name = {}
    for cat in categories:
        if not isinstance(cat, dict) or "name" not in cat or "id" not in cat:
            raise AnnotationError(f"{source}: every category needs 'id' and 'name', got {cat!r}")
        if cat["name"] in by_name:
            raise AnnotationError(f"{source}: category name {cat['name']!r} appears twice")
        by_name[cat["name"]] = int(cat["id"])
    missing = [name for name in classes if name not in by_name]
    extra = sorted(name for name in by_name if name not in set(classes))
    if missing or extra:
        raise AnnotationError(
            f"{source}: categories do not match the model's {len(classes)} COCO classes "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'})")
    ids = [by_name[name] for name in classes]
    if strict_ids:
        expected = coco_category_ids()
        wrong = [f"{name} has id {got} (COCO: {want})"
                 for name, got, want in zip(classes, ids, expected) if got != want]
        if wrong:
            more = " ..." if len(wrong) > 5 else ""
            raise AnnotationError(f"{source}: category ids differ from COCO's: {'; '.join(wrong[:5])}{more}")
    return ids


# The image files a bare folder contributes: the formats OpenCV's imread (the recipe's reader) decodes
# in every build, by suffix, case-blind.
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def folder_images(image_dir: str, limit: Optional[int] = None) -> Tuple[List[AnnotationImage], str]:
    """The images of a bare folder as an annotation file would list them, and the listing's sha256.

    The recipe's step 4.2 takes an image folder; its scripts list it with `os.listdir`, whose order
    the file system decides. Here the order is fixed: the files directly in the folder whose suffix
    is in FOLDER_IMAGE_SUFFIXES, sorted by name in code-point order (Python's `sorted`, `LC_ALL=C ls`),
    get the ids 1, 2, 3, ... in that order, so the same folder gives the same ids, `.bin` names and
    info lines on every host. Sizes are the decoded ones (EXIF rotation applied, as the recipe's
    cv2.imread), read from the headers of the first `limit` images only. The digest, standing in for
    an annotation file's, covers the listing (every name in id order); image bytes are keyed where
    they are read (the .bin record, the runner's journal).
    """
    try:
        names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(FOLDER_IMAGE_SUFFIXES)
                       and os.path.isfile(os.path.join(image_dir, n)))
    except OSError as exc:
        raise DataError(f"cannot list the image folder {image_dir}: {exc.strerror or exc}")
    if not names:
        raise DataError(f"image folder {image_dir} holds no image file ({', '.join(FOLDER_IMAGE_SUFFIXES)}): give "
                        "the folder of images (val2017), or --annotations with it")
    selected = names if limit is None else names[:max(int(limit), 0)]
    images = []
    for image_id, name in enumerate(selected, start=1):
        width, height = probe_decoded_size(os.path.join(image_dir, name))
        images.append(AnnotationImage(image_id, name, width, height))
    # the images past --limit keep their ids and names (unread sizes: 0), as the annotation file's would
    images += [AnnotationImage(image_id, name, 0, 0) for image_id, name in enumerate(names, start=1)][len(selected):]
    # every name in order (so ids, and the digest, do not depend on --limit)
    listing = "\n".join(names)
    return images, hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()


class CocoImageSet:
    """The images of a COCO annotation file, in image-id order, with the recipe's per-image metadata.

    `metas` holds each image as the annotation describes it: scale and resized size come from the
    annotation's width/height (no decoding needed). An image whose decoded size differs from that (an
    EXIF orientation tag, see `meta_for_decoded`) is transformed with the decoded size: every read
    returns the ImageMeta it used (`read`, `load`, `load_into`), and `decoded_metas` gives them all
    from the file headers. The set itself never changes after it is built, so what any call returns
    does not depend on which images were read before.
    """

    def __init__(self, annotation_file: Optional[str], image_dir: str, limit: Optional[int] = None,
                 height: Optional[int] = None, width: Optional[int] = None, strict_ids: bool = True):
        """`annotation_file` None: the images of the bare folder `image_dir` (`folder_images`), without
        ground truth, as the recipe's step 4.2 takes them."""
        self.image_dir = os.fspath(image_dir)
        self.height, self.width = canvas_size(height, width)
        if annotation_file is None:
            # the source's name in messages and its digest (the listing's: names and decoded sizes)
            self.annotation_file, self.source = None, f"image folder {self.image_dir} (no annotation file)"
            images, self.annotation_sha256 = folder_images(self.image_dir, limit)
            self.category_ids = coco_category_ids()  # the model's 80 classes on COCO's ids
        else:
            self.annotation_file = self.source = os.fspath(annotation_file)
            annotations = read_annotation_file(self.annotation_file)
            self.annotation_sha256 = annotations.sha256
            self.category_ids = category_ids_from_categories(
                annotations.data["categories"], self.annotation_file, strict_ids=strict_ids)
            images = annotations.images
        # every image of the source, not only the selection: names must not depend on --limit
        self.output_stems = output_stems(images, self.source)
        self.total_images = len(images)
        if limit is not None:
            if int(limit) <= 0:
                raise DataError(f"limit must be a positive number of images, got {limit}")
            images = images[:int(limit)]
        if not images:
            raise DataError(f"{self.source} lists no images: nothing to process")
        self.metas = []
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
                    f"{self.source}: image id {meta.image_id}: {meta.file_name!r} resolves to {resolved}, "
                    f"outside the image folder {self.image_dir} (a symlink pointing out of it); only images inside "
                    "--images are read: copy the file in instead")

    def output_stem(self, meta: ImageMeta) -> str:
        """The stem of the files made for `meta`'s image (`output_stems`: unique per image)."""
        return self.output_stems[meta.image_id]

    def bin_name(self, meta: ImageMeta) -> str:
        return self.output_stem(meta) + ".bin"

    def __len__(self) -> int:
        return len(self.metas)

    @property
    def image_ids(self) -> List[int]:
        return [meta.image_id for meta in self.metas]

    def read(self, index: int, sha256_into: Optional[Dict[int, str]] = None) -> Tuple[np.ndarray, ImageMeta]:
        """Decoded BGR image of entry `index`, checked against the annotation's size.

        Returns (bgr, ImageMeta as decoded): see `meta_for_decoded` for an EXIF-rotated image.

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

    def meta_for_decoded(self, index: int, decoded_w: int, decoded_h: int) -> ImageMeta:
        """The ImageMeta entry `index` is transformed with once decoded to `decoded_w` x `decoded_h`.

        An image whose decoded size is the annotation's transposed carries an EXIF orientation tag:
        OpenCV's colour read (the recipe's, and mmcv's) rotates it, so the transform and the box
        scale follow the decoded image, as the recipe does: the returned meta has the decoded size
        and its scale, and a warning names the image. Any other size difference is an ImageReadError.
        A pure function of its arguments: nothing is recorded on the set.
        """
        meta = self.metas[index]
        if (decoded_h, decoded_w) == (meta.orig_w, meta.orig_h) and decoded_h != decoded_w:
            scale, new_w, new_h = scaled_size(decoded_w, decoded_h, self.height, self.width)
            # a repeated read repeats the same message, which the default warnings filter shows once
            warnings.warn(f"{meta.path}: decoded {decoded_w}x{decoded_h}, annotation {meta.orig_w}x{meta.orig_h}: "
                          "an EXIF orientation tag rotates it; following the decoded image as OpenCV's read in the "
                          "recipe does", RuntimeWarning, stacklevel=3)
            return meta._replace(orig_w=decoded_w, orig_h=decoded_h, scale=scale, new_w=new_w, new_h=new_h)
        if (decoded_h, decoded_w) != (meta.orig_h, meta.orig_w):
            raise ImageReadError(
                f"{meta.path}: decoded size {decoded_w}x{decoded_h} differs from the annotation's "
                f"{meta.orig_w}x{meta.orig_h} (image id {meta.image_id} in {self.source}; an EXIF "
                "orientation tag rotates the decoded image)")
        return meta

    def decoded_metas(self) -> List[ImageMeta]:
        """Every entry's ImageMeta as `read` would transform it, from file headers (no pixel decoding).

        Postprocessing outputs of .bin files written elsewhere, or writing the jpg info file, needs
        the sizes the images were transformed with; this gives them without decoding the whole set.
        A list aligned with `metas`; ImageReadError names an unreadable image or a size that matches
        neither the annotation nor its transpose.
        """
        return [self.meta_for_decoded(index, *probe_decoded_size(meta.path))
                for index, meta in enumerate(self.metas)]

    def load_into(self, index: int, out: np.ndarray, input_dtype: str = "float32",
                  sha256_into: Optional[Dict[int, str]] = None) -> ImageMeta:
        """Transform entry `index` into `out` (a [3, height, width] array); returns its ImageMeta as decoded."""
        bgr, meta = self.read(index, sha256_into)
        if input_dtype == "uint8":
            letterbox_to_canvas_uint8(bgr, self.height, self.width, out=out)
        else:
            letterbox_to_canvas(bgr, self.height, self.width, out=out)
        return meta

    def load(self, index: int, input_dtype: str = "float32") -> Tuple[np.ndarray, ImageMeta]:
        """(CHW array, ImageMeta as decoded) of entry `index`: float32 normalised, or uint8 RGB."""
        out = np.empty((3, self.height, self.width), dtype=input_array_dtype(input_dtype))
        meta = self.load_into(index, out, input_dtype)
        return out, meta


def rotated_image_ids(image_set: CocoImageSet, metas: Sequence[ImageMeta]) -> List[int]:
    """Image ids of `metas` (ImageMeta as transformed) whose decoded size is not the annotation's."""
    annotated = {meta.image_id: (meta.orig_w, meta.orig_h) for meta in image_set.metas}
    return sorted(meta.image_id for meta in metas if (meta.orig_w, meta.orig_h) != annotated[meta.image_id])
