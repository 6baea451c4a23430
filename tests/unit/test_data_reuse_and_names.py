"""No silent wrong answers on the data path (issue 9): a .bin is reused only when its image's bytes and
the transform are the ones it was made from; every image gets its own output name; no annotation path
leaves the image folder."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from fsaf_repro import cli
from fsaf_repro.data import (BIN_RECORD_NAME, CocoImageSet, read_info_file, write_bins, write_info_files)
from fsaf_repro.errors import AnnotationError, DataError, ImageReadError
from fsaf_repro.postprocess import read_benchmark_outputs
from fsaf_repro.synthetic import make_synthetic_coco


def _dataset(tmp_path, num_images=4, seed=5):
    return make_synthetic_coco(str(tmp_path / "ds"), num_images=num_images, seed=seed, layouts=[(64, 48, "jpg")])


def _replace_keeping_size_and_mtime(path):
    """Put another picture in `path` with the very byte size and mtime of the old file.

    A flat JPEG is smaller than the textured original; decoders ignore bytes after the end-of-image
    marker, so zero padding brings it to the old size.
    """
    old = os.stat(path)
    height, width = cv2.imread(path).shape[:2]
    ok, encoded = cv2.imencode(".jpg", np.full((height, width, 3), (30, 160, 220), np.uint8))
    data = encoded.tobytes()
    assert ok and len(data) < old.st_size
    with open(path, "wb") as handle:
        handle.write(data + b"\0" * (old.st_size - len(data)))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    now = os.stat(path)
    assert (now.st_size, now.st_mtime_ns) == (old.st_size, old.st_mtime_ns)


def _identity(path):
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _bin(path, image_set):
    return np.fromfile(path, dtype=np.float32).reshape(3, image_set.height, image_set.width)


def test_an_image_changed_at_the_same_size_and_mtime_is_redone_and_nothing_else(tmp_path):
    annotation_file, image_dir = _dataset(tmp_path)
    image_set = CocoImageSet(annotation_file, image_dir)
    out = str(tmp_path / "bins")
    first = write_bins(image_set, out, workers=1, progress=False)
    assert (first.written, first.reused) == (4, 0)
    before = [_identity(p) for p in first.bin_paths]
    old_pixels = _bin(first.bin_paths[2], image_set)
    _replace_keeping_size_and_mtime(image_set.metas[2].path)

    fresh = CocoImageSet(annotation_file, image_dir)
    second = write_bins(fresh, out, workers=2, progress=False)
    assert (second.written, second.reused) == (1, 3)
    after = [_identity(p) for p in second.bin_paths]
    assert [after[i] for i in (0, 1, 3)] == [before[i] for i in (0, 1, 3)]  # untouched: same inode, mtime
    assert after[2] != before[2]
    new_pixels = _bin(second.bin_paths[2], fresh)
    assert np.array_equal(new_pixels, fresh.load(2)[0]) and not np.array_equal(new_pixels, old_pixels)
    third = write_bins(fresh, out, workers=1, progress=False)
    assert (third.written, third.reused) == (0, 4)
    assert [_identity(p) for p in third.bin_paths] == after


def test_a_truncated_image_does_not_hide_behind_its_old_bin(tmp_path):
    annotation_file, image_dir = _dataset(tmp_path)
    image_set = CocoImageSet(annotation_file, image_dir)
    out = str(tmp_path / "bins")
    first = write_bins(image_set, out, workers=1, progress=False)
    before = [_identity(p) for p in first.bin_paths]
    bad = image_set.metas[1]
    with open(bad.path, "r+b") as handle:
        handle.truncate(os.path.getsize(bad.path) // 2)
    with pytest.raises(ImageReadError, match="truncated.*" + bad.file_name):
        write_bins(image_set, out, workers=1, progress=False)
    assert [_identity(p) for p in first.bin_paths] == before  # the finished work is still there
    report = write_bins(image_set, out, workers=1, skip_bad=True, progress=False)
    assert [s.image_id for s in report.skipped] == [bad.image_id]
    assert (report.written, report.reused) == (0, 3)
    assert not os.path.exists(first.bin_paths[1]) and os.path.exists(first.bin_paths[1] + ".skipped")
    assert [_identity(p) for p in report.bin_paths] == [before[i] for i in (0, 2, 3)]


def test_a_bin_rewritten_by_someone_else_or_made_with_another_transform_is_redone(tmp_path):
    annotation_file, image_dir = _dataset(tmp_path)
    image_set = CocoImageSet(annotation_file, image_dir)
    out = str(tmp_path / "bins")
    first = write_bins(image_set, out, workers=1, progress=False)
    expected = [_bin(p, image_set).copy() for p in first.bin_paths]
    np.zeros(3 * image_set.height * image_set.width, np.float32).tofile(first.bin_paths[0])  # same size
    report = write_bins(image_set, out, workers=1, progress=False)
    assert (report.written, report.reused) == (1, 3)
    assert np.array_equal(_bin(first.bin_paths[0], image_set), expected[0])
    # a record made by another OpenCV build: its resize may round differently, nothing is reused
    record = os.path.join(out, BIN_RECORD_NAME)
    with open(record) as handle:
        lines = handle.read().splitlines()
    header = json.loads(lines[0])
    header["transform"]["opencv"] = "0.0.1"
    with open(record, "w") as handle:
        handle.write("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    report = write_bins(image_set, out, workers=1, progress=False)
    assert (report.written, report.reused) == (4, 0)
    assert all(np.array_equal(_bin(p, image_set), e) for p, e in zip(report.bin_paths, expected))


def test_a_damaged_record_line_redoes_its_bin_only_and_says_so(tmp_path):
    annotation_file, image_dir = _dataset(tmp_path)
    image_set = CocoImageSet(annotation_file, image_dir)
    out = str(tmp_path / "bins")
    write_bins(image_set, out, workers=1, progress=False)
    record = os.path.join(out, BIN_RECORD_NAME)
    with open(record) as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 5  # header + one line per .bin
    lines[2] = lines[2][:20]  # as a kill in the middle of an append leaves it
    with open(record, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    with pytest.warns(RuntimeWarning, match=BIN_RECORD_NAME + " line 3 is damaged"):
        report = write_bins(image_set, out, workers=1, progress=False)
    assert (report.written, report.reused) == (1, 3)
    with open(record) as handle:
        assert all(json.loads(line) for line in handle)  # rewritten clean


def test_info_refuses_a_bin_whose_image_changed_since(tmp_path, capsys):
    annotation_file, image_dir = _dataset(tmp_path)
    image_set = CocoImageSet(annotation_file, image_dir)
    bins = str(tmp_path / "bins")
    report = write_bins(image_set, bins, workers=1, progress=False)
    info = str(tmp_path / "fsaf.info")
    argv = ["info", "--annotations", annotation_file, "--images", image_dir, "--bin-dir", bins,
            "--bin-info", info, "--jpg-info", str(tmp_path / "j.info")]
    assert cli.main(argv) == 0
    listed = read_info_file(info)
    _replace_keeping_size_and_mtime(image_set.metas[3].path)
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert os.path.basename(report.bin_paths[3]) in err and "other image bytes" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert read_info_file(info) == listed  # the earlier info file is unchanged


def _with_images(annotation_file, rewrite):
    with open(annotation_file) as handle:
        data = json.load(handle)
    rewrite(sorted(data["images"], key=lambda image: image["id"]))
    with open(annotation_file, "w") as handle:
        json.dump(data, handle)
    return data


def test_two_images_with_one_stem_get_two_names_used_by_every_reader(tmp_path):
    annotation_file, image_dir = _dataset(tmp_path, num_images=3, seed=6)
    moved = []

    def into_folders(images):
        for folder, image in zip(("a", "b"), images[:2]):
            os.makedirs(os.path.join(image_dir, folder))
            os.replace(os.path.join(image_dir, image["file_name"]), os.path.join(image_dir, folder, "x.jpg"))
            image["file_name"] = folder + "/x.jpg"
            moved.append(image["id"])
    _with_images(annotation_file, into_folders)
    image_set = CocoImageSet(annotation_file, image_dir)
    names = [image_set.bin_name(m) for m in image_set.metas]
    assert names[:2] == [f"x__id{moved[0]}.bin", f"x__id{moved[1]}.bin"]
    assert names[2] == os.path.splitext(image_set.metas[2].file_name)[0] + ".bin"  # the recipe's name stays
    out = str(tmp_path / "bins")
    report = write_bins(image_set, out, workers=1, progress=False)
    assert [os.path.basename(p) for p in report.bin_paths] == names
    for index, path in enumerate(report.bin_paths):
        assert np.array_equal(_bin(path, image_set), image_set.load(index)[0])
    assert not np.array_equal(_bin(report.bin_paths[0], image_set), _bin(report.bin_paths[1], image_set))
    info = str(tmp_path / "fsaf.info")
    write_info_files(image_set, bin_dir=out, bin_info=info)
    assert [os.path.basename(e[1]) for e in read_info_file(info)] == names
    # a selection gives an image the same name as the whole file does
    assert CocoImageSet(annotation_file, image_dir, limit=1).bin_name(image_set.metas[0]) == names[0]
    # tool outputs named after the .bin files reach their own image
    outputs = tmp_path / "dump"
    outputs.mkdir()
    for k, name in enumerate(names):
        dets = np.zeros((100, 5), np.float32)
        dets[0] = [1, 2, 3 + k, 4, 0.9]
        dets.tofile(str(outputs / (name[:-4] + "_1.bin")))
        np.full(100, k, np.int64).tofile(str(outputs / (name[:-4] + "_2.bin")))
    dets, labels = read_benchmark_outputs(str(outputs), image_set.metas, image_set.output_stems)
    assert list(dets[:, 0, 2]) == [3, 4, 5] and list(labels[:, 0]) == [0, 1, 2]


def test_same_stem_other_extension_and_a_derived_name_that_collides(tmp_path):
    annotation_file, image_dir = _dataset(tmp_path, num_images=3, seed=7)

    def png_twin(images):
        images[1]["file_name"] = os.path.splitext(images[0]["file_name"])[0] + ".PNG"
    _with_images(annotation_file, png_twin)
    image_set = CocoImageSet(annotation_file, image_dir)
    first, second = image_set.metas[0], image_set.metas[1]
    assert image_set.bin_name(first) != image_set.bin_name(second)

    def derived_collision(images):
        images[2]["file_name"] = "{}__id{}.jpg".format(os.path.splitext(images[0]["file_name"])[0], images[0]["id"])
    _with_images(annotation_file, derived_collision)
    with pytest.raises(AnnotationError, match="instances_val2017.json: images .*would write files of one name"):
        CocoImageSet(annotation_file, image_dir)


@pytest.mark.parametrize("escape", ["../outside.jpg", "sub/../../outside.jpg", "/abs/outside.jpg"])
def test_an_annotation_path_leaving_the_image_folder_is_refused_by_every_verb(tmp_path, capsys, escape):
    annotation_file, image_dir = _dataset(tmp_path)
    image_set = CocoImageSet(annotation_file, image_dir)
    out = str(tmp_path / "bins")
    first = write_bins(image_set, out, workers=1, progress=False)
    before = [_identity(p) for p in first.bin_paths]
    target = image_set.metas[1]
    shutil.copy(target.path, os.path.join(os.path.dirname(image_dir), "outside.jpg"))

    def escape_path(images):
        images[1]["file_name"] = escape
    _with_images(annotation_file, escape_path)
    with pytest.raises(AnnotationError, match=f"image id {target.image_id}.*{escape}"):
        CocoImageSet(annotation_file, image_dir)
    capsys.readouterr()
    common = ["--annotations", annotation_file]
    infos = ["--bin-info", str(tmp_path / "b.info"), "--jpg-info", str(tmp_path / "j.info")]
    results = str(tmp_path / "results.json")
    with open(results, "w") as handle:
        handle.write("[]")
    for argv in (["preprocess"] + common + ["--images", image_dir, "--out", out, "--no-progress"] + infos,
                 ["evaluate"] + common + ["--results", results]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert annotation_file in err and escape in err and f"image id {target.image_id}" in err
        assert "Traceback" not in err
    assert [_identity(p) for p in first.bin_paths] == before  # the earlier .bin files are untouched
    assert not os.path.exists(str(tmp_path / "b.info"))


def test_a_symlink_pointing_out_of_the_image_folder_is_refused(tmp_path):
    annotation_file, image_dir = _dataset(tmp_path)
    image_set = CocoImageSet(annotation_file, image_dir)
    elsewhere = str(tmp_path / "elsewhere")
    os.makedirs(elsewhere)
    target = image_set.metas[2]
    shutil.move(target.path, os.path.join(elsewhere, target.file_name))
    os.symlink(os.path.join(elsewhere, target.file_name), target.path)
    with pytest.raises(AnnotationError, match=f"image id {target.image_id}: '{target.file_name}' resolves to "
                                              ".*elsewhere.*outside the image folder"):
        CocoImageSet(annotation_file, image_dir)
    # a symlink that stays inside, and a symlinked image folder, are fine
    os.remove(target.path)
    os.makedirs(os.path.join(image_dir, "store"))
    shutil.move(os.path.join(elsewhere, target.file_name), os.path.join(image_dir, "store", target.file_name))
    os.symlink(os.path.join("store", target.file_name), target.path)
    linked_dir = str(tmp_path / "linked_images")
    os.symlink(image_dir, linked_dir)
    linked = CocoImageSet(annotation_file, linked_dir)
    assert np.array_equal(linked.load(2)[0], image_set.load(2)[0])
    # a symlinked sub-folder leading out is refused too
    os.remove(target.path)
    os.symlink(elsewhere, os.path.join(image_dir, "sub"))

    def into_sub(images):
        images[2]["file_name"] = "sub/" + target.file_name
    _with_images(annotation_file, into_sub)
    with pytest.raises(AnnotationError, match="outside the image folder"):
        CocoImageSet(annotation_file, image_dir)


@pytest.mark.parametrize("fault, message", [
    (lambda images: images[1].update(id=images[0]["id"]), "image id {first} appears twice"),
    (lambda images: images[0].update(file_name=images[1]["file_name"]), "is listed twice"),
    (lambda images: images[0].pop("file_name"), "'file_name' must be a non-empty string"),
    (lambda images: images[0].update(file_name=None), "'file_name' must be a non-empty string"),
    (lambda images: images[0].update(id="7"), "needs an integer 'id'"),
    (lambda images: images[0].update(width=64.5), "positive integer 'width'"),
    (lambda images: images[0].update(file_name="folder/"), "names a folder"),
])
def test_one_annotation_check_for_every_verb(tmp_path, fault, message):
    annotation_file, image_dir = _dataset(tmp_path, num_images=2)
    first = CocoImageSet(annotation_file, image_dir).metas[0].image_id
    _with_images(annotation_file, fault)
    from fsaf_repro.evaluate import evaluate_results
    for read in (lambda: CocoImageSet(annotation_file, image_dir), lambda: evaluate_results(annotation_file, [])):
        with pytest.raises(AnnotationError, match="instances_val2017.json: .*" + message.format(first=first)):
            read()


def test_info_files_refuse_a_path_with_white_space(tmp_path):
    annotation_file, image_dir = _dataset(tmp_path, num_images=2)
    spaced = str(tmp_path / "val 2017")
    os.rename(image_dir, spaced)
    image_set = CocoImageSet(annotation_file, spaced)
    with pytest.raises(DataError, match="j.info: cannot list .*val 2017.*white space"):
        write_info_files(image_set, jpg_info=str(tmp_path / "j.info"))
