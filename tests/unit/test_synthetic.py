"""The synthetic COCO-format dataset generator."""
import hashlib
import json
import os

import cv2
import pytest

from fsaf_repro import cli
from fsaf_repro.data import CocoImageSet
from fsaf_repro.spec import coco_category_ids, coco_class_names, input_constants
from fsaf_repro.synthetic import DEFAULT_LAYOUTS, make_synthetic_coco, make_synthetic_results


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path_factory.mktemp("a")), num_images=8, seed=0)
    with open(annotation_file) as handle:
        return annotation_file, image_dir, json.load(handle)


def _digest(directory):
    digest = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as handle:
            digest.update(name.encode() + handle.read())
    return digest.hexdigest()


def test_real_coco_categories(generated):
    categories = generated[2]["categories"]
    assert [c["id"] for c in categories] == coco_category_ids()
    assert [c["name"] for c in categories] == coco_class_names()


def test_images_are_real_files_of_the_listed_sizes(generated):
    _, image_dir, data = generated
    kinds = set()
    for image in data["images"]:
        path = os.path.join(image_dir, image["file_name"])
        unchanged = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        assert unchanged is not None, path
        assert unchanged.shape[:2] == (image["height"], image["width"])
        kinds.add("gray" if unchanged.ndim == 2 else os.path.splitext(path)[1])
    assert kinds == {"gray", ".jpg", ".png"}
    shapes = [(i["width"], i["height"]) for i in data["images"]]
    assert any(h > w for w, h in shapes)                  # portrait
    assert any(w * h < 1000 for w, h in shapes)           # tiny
    assert any(w >= 10 * h for w, h in shapes)            # very wide
    assert len(data["images"]) == len(DEFAULT_LAYOUTS)


def test_annotations_lie_inside_their_images_with_real_category_ids(generated):
    _, _, data = generated
    sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    assert data["annotations"]
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
        assert ann["category_id"] in coco_category_ids() and ann["iscrowd"] == 0 and ann["area"] > 0


def test_ids_have_gaps_and_json_order_is_not_id_order(generated):
    ids = [i["id"] for i in generated[2]["images"]]
    assert ids != sorted(ids)
    assert sorted(ids) != list(range(1, len(ids) + 1))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = make_synthetic_coco(str(tmp_path / "a"), num_images=4, seed=5)
    b = make_synthetic_coco(str(tmp_path / "b"), num_images=4, seed=5)
    c = make_synthetic_coco(str(tmp_path / "c"), num_images=4, seed=6)
    assert _digest(a[1]) == _digest(b[1]) != _digest(c[1])
    with open(a[0]) as fa, open(b[0]) as fb:
        assert fa.read() == fb.read()


def test_loads_through_the_image_set(generated):
    image_set = CocoImageSet(generated[0], generated[1])
    for index in range(len(image_set)):
        chw, meta = image_set.load(index)
        assert chw.shape == (3, input_constants()["height"], input_constants()["width"])


def test_synthetic_results_have_the_requested_count(tmp_path):
    annotation_file, _ = make_synthetic_coco(str(tmp_path), num_images=20, write_images=False)
    results = make_synthetic_results(annotation_file, per_image=30, seed=1)
    assert len(results) == 20 * 30
    assert not os.listdir(os.path.join(str(tmp_path), "val2017"))


def test_make_dataset_cli(tmp_path, capsys):
    assert cli.main(["make-dataset", "--out", str(tmp_path), "--num-images", "3"]) == 0
    assert len(os.listdir(os.path.join(str(tmp_path), "val2017"))) == 3
    assert "3 images" in capsys.readouterr().out
