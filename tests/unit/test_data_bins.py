"""The .bin files and info files for the benchmark tool / ais_bench (the recipe's Fsaf_preprocess.py and
get_info.py)."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fsaf_repro import cli
from fsaf_repro.data import (CocoImageSet, bin_bytes, read_info_file, write_bins, write_info_files)
from fsaf_repro.fileio import STALE_PART_SECONDS, is_stale_part, part_suffix
from fsaf_repro.spec import input_constants
from fsaf_repro.synthetic import make_synthetic_coco

CONST = input_constants()


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    return CocoImageSet(*make_synthetic_coco(str(tmp_path_factory.mktemp("coco")), num_images=5, seed=2))


def test_bin_size_is_the_spec_value():
    assert bin_bytes(CONST["height"], CONST["width"]) == CONST["bin_bytes"] == 11673600


def test_bins_hold_the_transform_as_raw_float32_chw(image_set, tmp_path):
    report = write_bins(image_set, str(tmp_path), workers=2, progress=False)
    assert report.written == 5 and report.reused == 0 and not report.skipped
    assert [os.path.basename(p) for p in report.bin_paths] == [
        os.path.splitext(m.file_name)[0] + ".bin" for m in image_set.metas]
    for index, path in enumerate(report.bin_paths):
        assert os.path.getsize(path) == CONST["bin_bytes"]
        raw = np.fromfile(path, dtype=np.float32).reshape(3, CONST["height"], CONST["width"])
        assert np.array_equal(raw, image_set.load(index)[0])


def test_one_and_two_workers_write_identical_bytes(image_set, tmp_path):
    one = write_bins(image_set, str(tmp_path / "one"), workers=1, progress=False)
    two = write_bins(image_set, str(tmp_path / "two"), workers=2, progress=False)
    assert len(one.bin_paths) == len(two.bin_paths) == len(image_set)
    for a, b in zip(one.bin_paths, two.bin_paths):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()


def test_rerun_skips_complete_files_and_redoes_short_ones(image_set, tmp_path):
    out = str(tmp_path)
    first = write_bins(image_set, out, workers=1, progress=False)
    mtimes = [os.stat(p).st_mtime_ns for p in first.bin_paths]
    # a truncated file (as a killed foreign tool might leave), a temporary file of a finished process
    # here, and those of a live process here and of a recent writer on another host (other runs
    # writing into the same folder), which must survive
    with open(first.bin_paths[2], "r+b") as handle:
        handle.truncate(1000)
    host = socket.gethostname().replace("-", "_")
    stale = first.bin_paths[0] + f".part-{host}-{_finished_pid()}"
    live = first.bin_paths[1] + f".part-{host}-{os.getppid()}"
    elsewhere = first.bin_paths[3] + f".part-otherhost.example-{_finished_pid()}"
    for path in (stale, live, elsewhere):
        with open(path, "wb") as handle:
            handle.write(b"x")
    second = write_bins(image_set, out, workers=1, progress=False)
    assert (second.written, second.reused) == (1, 4)
    assert os.path.getsize(first.bin_paths[2]) == CONST["bin_bytes"]
    assert [os.stat(p).st_mtime_ns for i, p in enumerate(second.bin_paths) if i != 2] == \
        [m for i, m in enumerate(mtimes) if i != 2]
    assert not os.path.exists(stale)
    assert os.path.exists(live) and os.path.exists(elsewhere)


def _finished_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_part_file_staleness(tmp_path):
    assert not is_stale_part("/x/a.bin")  # not a part file
    assert not is_stale_part("/x/a.bin.part-abc")
    assert not is_stale_part(str(tmp_path / "a.bin") + part_suffix())  # this process's own
    dead = _finished_pid()
    assert is_stale_part(f"/x/a.bin.part-{dead}")  # no host: this host's, writer gone
    other = tmp_path / f"a.bin.part-build_7-{dead}"
    other.write_bytes(b"x")
    assert not is_stale_part(str(other))
    assert is_stale_part(str(other), now=time.time() + STALE_PART_SECONDS + 1)
    # a live pid here (possibly reused by an unrelated process): stale only once old
    live = tmp_path / "b.bin.part-{}-{}".format(socket.gethostname().replace("-", "_"), os.getppid())
    live.write_bytes(b"x")
    assert not is_stale_part(str(live))
    assert is_stale_part(str(live), now=time.time() + STALE_PART_SECONDS + 1)


def test_info_files_formats_and_order(image_set, tmp_path):
    bins = str(tmp_path / "val2017_bin")
    write_bins(image_set, bins, workers=1, progress=False)
    bin_info, jpg_info = str(tmp_path / "fsaf.info"), str(tmp_path / "fsaf_jpeg.info")
    write_info_files(image_set, bin_dir=bins, bin_info=bin_info, jpg_info=jpg_info)
    with open(bin_info) as handle:
        bin_lines = handle.read().splitlines()
    with open(jpg_info) as handle:
        jpg_lines = handle.read().splitlines()
    for index, meta in enumerate(image_set.metas):
        stem = os.path.splitext(meta.file_name)[0]
        assert bin_lines[index] == "{} {} {} {}".format(index, os.path.join(bins, stem + ".bin"), CONST["width"],
                                                        CONST["height"])
        assert jpg_lines[index] == f"{index} {meta.path} {meta.orig_w} {meta.orig_h}"
    assert [e[0] for e in read_info_file(bin_info)] == list(range(5))
    # a bad image left out keeps the indices consecutive
    write_info_files(image_set, bin_dir=bins, bin_info=bin_info, exclude_ids=[image_set.metas[1].image_id])
    entries = read_info_file(bin_info)
    assert [e[0] for e in entries] == [0, 1, 2, 3]
    assert image_set.metas[1].file_name.split(".")[0] not in " ".join(e[1] for e in entries)


def test_bin_info_refuses_a_missing_or_short_bin(image_set, tmp_path):
    from fsaf_repro.errors import DataError
    with pytest.raises(DataError, match="missing"):
        write_info_files(image_set, bin_dir=str(tmp_path), bin_info=str(tmp_path / "x.info"))
    report = write_bins(image_set, str(tmp_path), workers=1, progress=False)
    with open(report.bin_paths[1], "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(DataError, match=os.path.basename(report.bin_paths[1])):
        write_info_files(image_set, bin_dir=str(tmp_path), bin_info=str(tmp_path / "x.info"))


def test_preprocess_cli_writes_bins_info_and_manifest(tmp_path, capsys):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "ds"), num_images=3, seed=8)
    out = str(tmp_path / "bins")
    argv = ["preprocess", "--annotations", annotation_file, "--images", image_dir, "--out", out,
            "--bin-info", str(tmp_path / "fsaf.info"), "--jpg-info", str(tmp_path / "fsaf_jpeg.info"),
            "--workers", "2", "--no-progress"]
    assert cli.main(argv) == 0
    assert "3 written" in capsys.readouterr().out
    assert len(read_info_file(str(tmp_path / "fsaf.info"))) == 3
    assert os.path.isfile(os.path.join(out, "preprocess_manifest.json"))
    assert cli.main(argv) == 0
    assert "3 already complete" in capsys.readouterr().out


def test_info_cli_writes_both_files_without_preprocessing_jpgs(tmp_path, capsys):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "ds"), num_images=3, seed=8)
    image_set = CocoImageSet(annotation_file, image_dir)
    bins = str(tmp_path / "bins")
    write_bins(image_set, bins, workers=1, progress=False)
    bin_info, jpg_info = str(tmp_path / "a.info"), str(tmp_path / "b.info")
    assert cli.main(["info", "--annotations", annotation_file, "--images", image_dir, "--bin-dir", bins,
                     "--bin-info", bin_info, "--jpg-info", jpg_info]) == 0
    assert [e[1] for e in read_info_file(bin_info)] == [
        os.path.join(bins, os.path.splitext(m.file_name)[0] + ".bin") for m in image_set.metas]
    assert [(e[2], e[3]) for e in read_info_file(jpg_info)] == [(m.orig_w, m.orig_h) for m in image_set.metas]
    assert "3 lines" in capsys.readouterr().out


def test_a_killed_run_leaves_no_truncated_bin_and_the_rerun_completes(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "ds"), num_images=40, seed=3,
                                                     layouts=[(64, 48, "jpg")])
    out = str(tmp_path / "bins")
    argv = [sys.executable, "-m", "fsaf_repro", "preprocess", "--annotations", annotation_file,
            "--images", image_dir, "--out", out, "--bin-info", str(tmp_path / "f.info"),
            "--jpg-info", str(tmp_path / "j.info"), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(argv, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(out) and len([n for n in os.listdir(out) if n.endswith(".bin")]) >= 3:
            break
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [n for n in os.listdir(out) if n.endswith(".bin")]
    assert finished
    for name in finished:
        assert os.path.getsize(os.path.join(out, name)) == CONST["bin_bytes"], name
    image_set = CocoImageSet(annotation_file, image_dir)
    report = write_bins(image_set, out, workers=2, progress=False)
    # A .bin is reused only when the run's record vouches for it: with one worker, the kill can land
    # between a .bin's rename into place and its record line, so one finished .bin may be redone.
    assert report.reused >= len(finished) - 1 and report.written + report.reused == 40
    assert not [n for n in os.listdir(out) if ".part-" in n]
    if killed:
        assert report.written >= 1


def test_rerun_after_an_image_went_bad_moves_its_old_bin_aside_and_names_foreign_bins(tmp_path, capsys):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "ds"), num_images=4, seed=6,
                                                     layouts=[(40, 30, "jpg")])
    out = str(tmp_path / "bins")

    def preprocess(*extra):
        return cli.main(["preprocess", "--annotations", annotation_file, "--images", image_dir, "--out", out,
                         "--bin-info", str(tmp_path / "f.info"), "--jpg-info", str(tmp_path / "j.info"),
                         "--height", "32", "--width", "48", "--workers", "1", "--no-progress"] + list(extra))
    assert preprocess() == 0
    gone = CocoImageSet(annotation_file, image_dir).metas[1]
    os.remove(gone.path)
    capsys.readouterr()
    assert preprocess() == 1  # the missing image stops the run, naming it
    assert gone.file_name in capsys.readouterr().err
    assert preprocess("--skip-bad") == 0
    stem = os.path.splitext(gone.file_name)[0]
    # its earlier .bin is out of the tools' view (ais_bench reads every *.bin of the folder), not lost
    assert not os.path.exists(os.path.join(out, stem + ".bin"))
    assert os.path.getsize(os.path.join(out, stem + ".bin.skipped")) == bin_bytes(32, 48)
    assert stem not in open(str(tmp_path / "f.info")).read()
    capsys.readouterr()
    assert preprocess("--limit", "1") == 0
    assert "holds 2 .bin file(s) not in this selection" in capsys.readouterr().err
