"""Broken input: a clear error naming the file; with skip_bad the run goes on and lists what it skipped."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from fsaf_repro.data import CocoImageSet, iter_batches, read_bgr, write_bins
from fsaf_repro.errors import AnnotationError, DataError, ImageReadError
from fsaf_repro.synthetic import make_synthetic_coco
from fsaf_repro.spec import input_constants


def _jpeg(path, seed=0):
    rng = np.random.RandomState(seed)
    cv2.imwrite(path, cv2.GaussianBlur(rng.randint(0, 256, (64, 80, 3)).astype(np.uint8), (5, 5), 0))
    with open(path, "rb") as handle:
        return handle.read()


def test_truncated_jpeg(tmp_path):
    path = str(tmp_path / "cut.jpg")
    data = _jpeg(path)
    with open(path, "wb") as handle:
        handle.write(data[:len(data) * 2 // 3])
    assert cv2.imread(path, cv2.IMREAD_COLOR) is not None  # OpenCV would hand back a grey-filled image
    with pytest.raises(ImageReadError, match="truncated.*cut.jpg"):
        read_bgr(path)


def test_corrupt_jpeg_header(tmp_path):
    path = str(tmp_path / "corrupt.jpg")
    data = bytearray(_jpeg(path))
    data[3:200] = b"\x00" * 197  # wipes the header segments
    with open(path, "wb") as handle:
        handle.write(bytes(data))
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        read_bgr(path)


def test_zero_byte_file(tmp_path):
    path = str(tmp_path / "empty.jpg")
    open(path, "wb").close()
    with pytest.raises(ImageReadError, match="empty.*empty.jpg"):
        read_bgr(path)


def test_text_file_named_jpg(tmp_path):
    path = str(tmp_path / "notes.jpg")
    with open(path, "w") as handle:
        handle.write("this is not an image\n")
    with pytest.raises(ImageReadError, match="could not decode.*notes.jpg"):
        read_bgr(path)


def test_missing_image(tmp_path):
    with pytest.raises(ImageReadError, match="not found.*nowhere.jpg"):
        read_bgr(str(tmp_path / "nowhere.jpg"))


def test_complete_jpeg_with_trailing_bytes_is_fine(tmp_path):
    path = str(tmp_path / "tail.jpg")
    data = _jpeg(path)
    with open(path, "ab") as handle:
        handle.write(b"\x00" * 16)
    assert np.array_equal(read_bgr(path), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def test_malformed_annotation_json(tmp_path):
    path = str(tmp_path / "broken.json")
    with open(path, "w") as handle:
        handle.write('{"images": [')
    with pytest.raises(AnnotationError, match="broken.json is not valid JSON"):
        CocoImageSet(path, str(tmp_path))
    with open(path, "w") as handle:
        json.dump({"images": []}, handle)
    with pytest.raises(AnnotationError, match="no 'categories'"):
        CocoImageSet(path, str(tmp_path))


def test_missing_annotation_file(tmp_path):
    with pytest.raises(AnnotationError, match="not found.*absent.json"):
        CocoImageSet(str(tmp_path / "absent.json"), str(tmp_path))


def test_empty_image_set(tmp_path):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path), num_images=1, write_images=False)
    with open(annotation_file) as handle:
        data = json.load(handle)
    data["images"] = []
    with open(annotation_file, "w") as handle:
        json.dump(data, handle)
    with pytest.raises(DataError, match="lists no images"):
        CocoImageSet(annotation_file, image_dir)


def test_image_entry_without_size(tmp_path):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path), num_images=2, write_images=False)
    with open(annotation_file) as handle:
        data = json.load(handle)
    del data["images"][0]["width"]
    with open(annotation_file, "w") as handle:
        json.dump(data, handle)
    with pytest.raises(AnnotationError, match="instances_val2017.json"):
        CocoImageSet(annotation_file, image_dir)


@pytest.fixture
def broken_set(tmp_path):
    """6 images; #1 is missing on disk, #3 is a text file: both named in errors and skip lists."""
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "ds"), num_images=6, seed=4,
                                                     layouts=[(64, 48, "jpg"), (48, 64, "png")])
    image_set = CocoImageSet(annotation_file, image_dir)
    os.remove(image_set.metas[1].path)
    with open(image_set.metas[3].path, "w") as handle:
        handle.write("not an image")
    return image_set


def test_write_bins_stops_at_a_bad_image_naming_it_and_keeps_finished_files(broken_set, tmp_path):
    out = str(tmp_path / "bins")
    with pytest.raises(ImageReadError, match=broken_set.metas[1].file_name):
        write_bins(broken_set, out, workers=1, progress=False)
    stem0 = os.path.splitext(broken_set.metas[0].file_name)[0]
    assert os.path.getsize(os.path.join(out, stem0 + ".bin")) == input_constants()["bin_bytes"]
    assert not [name for name in os.listdir(out) if ".part-" in name]


def test_write_bins_skip_bad_lists_the_bad_images(broken_set, tmp_path):
    report = write_bins(broken_set, str(tmp_path / "bins"), workers=2, skip_bad=True, progress=False)
    assert [s.image_id for s in report.skipped] == [broken_set.metas[1].image_id, broken_set.metas[3].image_id]
    assert "not found" in report.skipped[0].reason and "could not decode" in report.skipped[1].reason
    assert len(report.bin_paths) == 4 and report.written == 4


def test_loader_raises_naming_the_file_or_skips_and_lists(broken_set):
    with pytest.raises(ImageReadError, match=broken_set.metas[1].file_name):
        for _ in iter_batches(broken_set, 2, workers=2):
            pass
    stream = iter_batches(broken_set, 2, workers=2, skip_bad=True)
    seen = [meta.image_id for _, metas in stream for meta in metas]
    good = [m.image_id for i, m in enumerate(broken_set.metas) if i not in (1, 3)]
    assert seen == good
    assert [s.image_id for s in stream.skipped] == [broken_set.metas[1].image_id, broken_set.metas[3].image_id]


def test_skipped_image_leaves_no_gap_in_the_batch(broken_set):
    batches = list(iter_batches(broken_set, 3, workers=2, skip_bad=True))
    assert [len(metas) for _, metas in batches] == [3, 1]
    for batch, metas in batches:
        for row, meta in zip(batch, metas):
            index = broken_set.image_ids.index(meta.image_id)
            assert np.array_equal(row, broken_set.load(index)[0])


def test_bad_image_dir_error_names_the_path(tmp_path):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "ds"), num_images=2,
                                                     layouts=[(32, 32, "jpg")])
    shutil.rmtree(image_dir)
    image_set = CocoImageSet(annotation_file, image_dir)
    with pytest.raises(ImageReadError, match=image_dir):
        image_set.load(0)
