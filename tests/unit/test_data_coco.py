"""COCO image set: id order, category map, annotation hash, and unusual images read as OpenCV reads them."""
import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from fsaf_repro.data import CocoImageSet, letterbox_to_canvas, read_bgr, scaled_size
from fsaf_repro.errors import AnnotationError, ImageReadError
from fsaf_repro.spec import coco_category_ids, coco_class_names, input_constants
from fsaf_repro.synthetic import make_synthetic_coco

CANVAS = input_constants()  # the recipe's network input (spec `input`)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_coco(str(tmp_path_factory.mktemp("coco")), num_images=9, seed=1)


def _rewrite(annotation_file, tmp_path, edit):
    with open(annotation_file) as handle:
        data = json.load(handle)
    edit(data)
    path = str(tmp_path / "edited.json")
    with open(path, "w") as handle:
        json.dump(data, handle)
    return path


def test_images_come_in_image_id_order_not_file_order(dataset):
    annotation_file, image_dir = dataset
    with open(annotation_file) as handle:
        listed = [image["id"] for image in json.load(handle)["images"]]
    image_set = CocoImageSet(annotation_file, image_dir)
    assert listed != sorted(listed)  # the generator shuffles, so this checks the sort
    assert image_set.image_ids == sorted(listed)
    assert len(image_set) == 9


def test_metas_follow_the_annotation_sizes(dataset):
    annotation_file, image_dir = dataset
    with open(annotation_file) as handle:
        by_id = {image["id"]: image for image in json.load(handle)["images"]}
    image_set = CocoImageSet(annotation_file, image_dir)
    for meta in image_set.metas:
        entry = by_id[meta.image_id]
        assert (meta.orig_w, meta.orig_h, meta.file_name) == (entry["width"], entry["height"], entry["file_name"])
        assert meta.path == os.path.join(image_dir, entry["file_name"])
        assert (meta.scale, meta.new_w, meta.new_h) == scaled_size(meta.orig_w, meta.orig_h, CANVAS["height"],
                                                                    CANVAS["width"])


def test_load_returns_the_transform_of_the_file(dataset):
    image_set = CocoImageSet(*dataset)
    for index in (0, 3, 4):
        chw, meta = image_set.load(index)
        want = letterbox_to_canvas(cv2.imread(meta.path, cv2.IMREAD_COLOR), CANVAS["height"], CANVAS["width"])[0]
        assert np.array_equal(chw, want)


def test_category_map_matches_spec_and_hash_is_the_files(dataset):
    annotation_file, image_dir = dataset
    image_set = CocoImageSet(annotation_file, image_dir)
    assert image_set.category_ids == coco_category_ids()
    with open(annotation_file, "rb") as handle:
        assert image_set.annotation_sha256 == hashlib.sha256(handle.read()).hexdigest()


def test_categories_in_another_order_still_map_by_name(dataset, tmp_path):
    path = _rewrite(dataset[0], tmp_path, lambda d: d["categories"].reverse())
    assert CocoImageSet(path, dataset[1]).category_ids == coco_category_ids()


def test_swapped_category_ids_are_refused(dataset, tmp_path):
    def swap(data):
        data["categories"][0]["id"], data["categories"][1]["id"] = (data["categories"][1]["id"],
                                                                    data["categories"][0]["id"])
    path = _rewrite(dataset[0], tmp_path, swap)
    with pytest.raises(AnnotationError, match="person has id 2"):
        CocoImageSet(path, dataset[1])
    # without the id check the map follows the names: label 0 (person) -> id 2
    assert CocoImageSet(path, dataset[1], strict_ids=False).category_ids[:2] == [2, 1]


def test_missing_or_extra_category_names_are_refused(dataset, tmp_path):
    path = _rewrite(dataset[0], tmp_path, lambda d: d["categories"].pop(5))
    with pytest.raises(AnnotationError, match="missing: " + coco_class_names()[5]):
        CocoImageSet(path, dataset[1])

    def rename(data):
        data["categories"][3]["name"] = "motorbike"
    path = _rewrite(dataset[0], tmp_path, rename)
    with pytest.raises(AnnotationError, match="unexpected: motorbike"):
        CocoImageSet(path, dataset[1])


def test_limit_takes_the_first_ids(dataset):
    full = CocoImageSet(*dataset)
    part = CocoImageSet(*dataset, limit=4)
    assert part.image_ids == full.image_ids[:4]
    assert part.total_images == 9


# --- unusual but valid images: read exactly as cv2.imread(path, IMREAD_COLOR) reads them ----------

def _photo(height, width, seed=0):
    rng = np.random.RandomState(seed)
    return cv2.GaussianBlur(rng.randint(0, 256, (height, width, 3)).astype(np.uint8), (5, 5), 0)


def _same_as_imread(path):
    got = read_bgr(path)
    want = cv2.imread(path, cv2.IMREAD_COLOR)
    assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3
    assert np.array_equal(got, want)
    return got


def test_grayscale_jpeg_becomes_three_equal_channels(tmp_path):
    path = str(tmp_path / "gray.jpg")
    cv2.imwrite(path, cv2.cvtColor(_photo(40, 50), cv2.COLOR_BGR2GRAY))
    assert cv2.imread(path, cv2.IMREAD_UNCHANGED).ndim == 2
    got = _same_as_imread(path)
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 1], got[..., 2])


def test_png_alpha_is_dropped(tmp_path):
    path = str(tmp_path / "alpha.png")
    bgr = _photo(30, 20)
    cv2.imwrite(path, np.dstack([bgr, np.arange(600, dtype=np.uint8).reshape(30, 20)]))
    assert np.array_equal(_same_as_imread(path), bgr)  # PNG is lossless: the colour planes exactly


def test_16bit_png_keeps_the_high_byte(tmp_path):
    path = str(tmp_path / "deep.png")
    deep = np.random.RandomState(2).randint(0, 65536, (12, 16, 3)).astype(np.uint16)
    cv2.imwrite(path, deep)
    assert np.array_equal(_same_as_imread(path), (deep >> 8).astype(np.uint8))


def test_cmyk_jpeg_is_converted_to_bgr(tmp_path):
    from PIL import Image
    path = str(tmp_path / "cmyk.jpg")
    bgr = _photo(32, 48)
    Image.fromarray(bgr[..., ::-1]).convert("CMYK").save(path, quality=95)
    got = _same_as_imread(path)
    assert got.shape == (32, 48, 3)
    assert np.abs(got.astype(int) - bgr.astype(int)).mean() < 8  # same picture, JPEG loss only


def test_exif_orientation_is_applied_as_opencv_does(tmp_path):
    from PIL import Image
    path = str(tmp_path / "rotated.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(_photo(30, 50)[..., ::-1]).save(path, exif=exif.tobytes(), quality=95)
    got = _same_as_imread(path)
    raw = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert raw.shape[:2] == (30, 50) and got.shape[:2] == (50, 30)
    assert np.array_equal(got, cv2.rotate(raw, cv2.ROTATE_90_CLOCKWISE))


def test_decoded_size_differing_from_annotation_is_an_error_naming_the_file(dataset, tmp_path):
    annotation_file, image_dir = dataset
    image_set = CocoImageSet(annotation_file, image_dir)
    meta = image_set.metas[0]

    def lie(data):
        for image in data["images"]:
            if image["id"] == meta.image_id:
                image["width"] += 1
    path = _rewrite(annotation_file, tmp_path, lie)
    with pytest.raises(ImageReadError, match=meta.file_name):
        CocoImageSet(path, image_dir).load(0)


def test_exif_rotated_image_follows_the_decoded_image_as_the_recipe_does(tmp_path):
    """The annotation gives the stored (unrotated) size; OpenCV's colour read rotates by the EXIF tag.
    The transform and the box scale then follow the decoded image, and the image is listed."""
    from PIL import Image
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "coco"), num_images=3, seed=5,
                                                     layouts=[(64, 40, "jpg")] * 3)
    image_set = CocoImageSet(annotation_file, image_dir, height=96, width=128)
    meta = image_set.metas[1]
    assert meta.orig_w != meta.orig_h
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    Image.fromarray(_photo(meta.orig_h, meta.orig_w)[..., ::-1]).save(meta.path, exif=exif.tobytes(), quality=95)
    with pytest.warns(RuntimeWarning, match="EXIF orientation"):
        chw, loaded = image_set.load(1)
    decoded = cv2.imread(meta.path, cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (meta.orig_w, meta.orig_h)  # rotated by OpenCV
    want, scale, new_h, new_w = letterbox_to_canvas(decoded, 96, 128)
    assert np.array_equal(chw, want)
    assert (loaded.orig_w, loaded.orig_h) == (meta.orig_h, meta.orig_w)
    assert (loaded.scale, loaded.new_w, loaded.new_h) == (scale, new_w, new_h) != (meta.scale, meta.new_w,
                                                                                    meta.new_h)
    # nothing is recorded on the set: its metas stay the annotation's, and the headers give what load gave
    assert image_set.metas[1] == meta
    with pytest.warns(RuntimeWarning, match="EXIF orientation"):
        assert image_set.decoded_metas() == [image_set.metas[0], loaded, image_set.metas[2]]
    # the other images are untouched
    assert image_set.load(0)[1] == image_set.metas[0]
