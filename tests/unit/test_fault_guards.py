"""Fast guards of rules that only a whole `reproduce` run or a crash used to check (issue 17, seeded faults).

scripts/seed_faults.py applies deliberate faults to the package and runs the fast tier against each; these
tests are the cheapest checks that see the faults the rest of the fast tier missed. Each asserts the
behaviour of the package, not the text of a fault.
"""
import json
import os

import pytest

from fsaf_repro import backends, runner
from fsaf_repro.data import CocoImageSet
from fsaf_repro.stagebook import Stage, StageBook
from fsaf_repro.synthetic import make_synthetic_coco


# --- the stage book reuses a stage only while its recorded outputs hold the recorded content --------------

def _book_run(run_dir, calls, content):
    """Run (or reuse) a one-output stage whose body writes `content`; returns the book's status."""
    output = os.path.join(run_dir, "data", "out.txt")

    def body(ctx):
        calls.append(1)
        os.makedirs(os.path.dirname(output), exist_ok=True)
        with open(output, "w") as handle:
            handle.write(content)
        return {"written": content}, [output]

    book = StageBook(run_dir, log=lambda message: None)
    book.run(Stage("data", body, params={"n": 1}, outputs={"out": output}))
    return book.status["data"], output


def test_a_stage_reruns_when_an_output_keeps_its_name_and_size_but_not_its_content(tmp_path):
    run_dir, calls = str(tmp_path / "run"), []
    assert _book_run(run_dir, calls, "abcd")[0] == "ran"
    status, output = _book_run(run_dir, calls, "abcd")
    assert status == "reused" and len(calls) == 1
    with open(output, "w") as handle:  # same name, same size, other bytes: a tampered output
        handle.write("abce")
    status, _ = _book_run(run_dir, calls, "abcd")
    assert status == "ran" and len(calls) == 2
    with open(output) as handle:
        assert handle.read() == "abcd"
    os.remove(output)
    assert _book_run(run_dir, calls, "abcd")[0] == "ran" and len(calls) == 3


# --- the inference journal is on disk after each batch -------------------------------------------------------

H, W = 64, 96
NUM_IMAGES = 6
BATCH = 2


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    annotations, images = make_synthetic_coco(str(tmp_path_factory.mktemp("syn")), num_images=NUM_IMAGES, seed=3)
    return CocoImageSet(annotations, images, height=H, width=W)


def test_the_journal_is_fsynced_after_each_batch_with_that_batch_in_it(small_set, tmp_path, monkeypatch):
    results = str(tmp_path / "results.json")
    journal = results + ".journal"
    synced = []  # (inode, size) of each file descriptor fsynced
    real_fsync = os.fsync

    def recording_fsync(fd):
        status = os.fstat(fd)
        synced.append((status.st_ino, status.st_size))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    backend = backends.create_backend("null", detections="echo").load()
    runner.infer_dataset(small_set, backend, results, batch_size=BATCH, progress=False, keep_journal=True,
                         backend_name="null", workers=1, prefetch=1)
    inode = os.stat(journal).st_ino
    with open(journal, "rb") as handle:
        lines = handle.read().splitlines(keepends=True)
    assert len(lines) == 1 + NUM_IMAGES // BATCH  # the header, then one line per batch
    assert json.loads(lines[0])["run_key"]
    ends, size = [], 0
    for line in lines:
        size += len(line)
        ends.append(size)
    synced_sizes = [size for ino, size in synced if ino == inode]
    # each line, the header and every batch, was on disk (fsynced) before the next was written
    assert synced_sizes == ends, f"journal fsynced at sizes {synced_sizes}, its lines end at {ends}"


# --- fp32 parity is judged by the fp32 tolerances of the spec ---------------------------------------------

def _parity_record(box_diff, score_diff):
    return {"counts_equal": True, "labels_equal": True, "max_box_abs_diff": box_diff,
            "max_score_abs_diff": score_diff}


def test_fp32_parity_is_judged_by_the_spec_fp32_box_and_score_tolerances():
    from fsaf_repro.parity import within_tolerances
    from fsaf_repro.spec import parity_tolerances

    tol = parity_tolerances()
    box, score = tol["box_abs_tol_px"], tol["score_abs_tol"]
    assert within_tolerances(_parity_record(box, score))
    assert within_tolerances(_parity_record(box / 2, score / 2))
    # just outside either fp32 tolerance (far inside the fp16 om ones) is not parity
    assert not within_tolerances(_parity_record(box * 2, score / 2))
    assert not within_tolerances(_parity_record(box / 2, score * 2))
    assert not within_tolerances(dict(_parity_record(0.0, 0.0), counts_equal=False))
    assert not within_tolerances(dict(_parity_record(0.0, 0.0), labels_equal=False))


# --- the accuracy verdict: a drop is the PyTorch value less the measured one -------------------------------

def test_the_accuracy_verdict_judges_the_drop_below_the_pytorch_value_only(monkeypatch):
    import copy

    from fsaf_repro import report
    from fsaf_repro.report_context import RunKind

    acc = copy.deepcopy(report.accuracy_reference())
    ref, drop = acc["pytorch_map"]["value"], acc["max_drop_vs_pytorch"]["value"]
    full = report.full_dataset_images()
    real = RunKind(seeded=False, generated=False, fitted=False, num_images=full, total_images=full)
    assert report.accuracy_verdict(ref + 2 * drop, real).startswith("PASS")  # better than PyTorch: no drop
    acc["min_map"]["value"] = 0.0  # so that the drop alone decides
    monkeypatch.setattr(report, "accuracy_reference", lambda: acc)
    assert report.accuracy_verdict(ref - drop / 2, real).startswith("PASS")
    assert report.accuracy_verdict(ref - 2 * drop, real).startswith("FAIL")
    assert report.accuracy_verdict(ref + 2 * drop, real).startswith("PASS")


# --- each COCO stat is read at its own maxDets ----------------------------------------------------------------

def test_each_coco_stat_is_read_at_its_own_max_dets():
    from types import SimpleNamespace

    import numpy as np

    from fsaf_repro.evaluate import evaluation_spec, summarize

    spec = evaluation_spec()
    max_dets = list(spec["max_dets"])
    areas = ["all", "small", "medium", "large"]
    params = SimpleNamespace(areaRngLbl=areas, maxDets=max_dets, iouThrs=np.linspace(0.5, 0.95, 10))
    value_at = [0.1 * (m + 1) for m in range(len(max_dets))]  # a different value at each maxDets
    precision = np.empty((10, 101, 2, len(areas), len(max_dets)))
    recall = np.empty((10, 2, len(areas), len(max_dets)))
    for m, value in enumerate(value_at):
        precision[..., m] = value
        recall[..., m] = value
    stats = summarize(precision, recall, params)
    expected = [value_at[max_dets.index(d["max_dets"])] for d in spec["stats"]]
    assert stats == pytest.approx(expected)
    assert len(set(expected)) > 1  # the spec's stats do use more than one maxDets


# --- an atomic write that fails leaves the previous file whole ------------------------------------------------

def test_a_failed_atomic_write_leaves_the_previous_content_and_no_part_file(tmp_path):
    from fsaf_repro.fileio import atomic_write_array, atomic_write_text

    path = str(tmp_path / "out.bin")
    atomic_write_text(path, "previous")

    class FailsHalfway:
        def tofile(self, handle):
            handle.write(b"half")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_array(path, FailsHalfway())
    with open(path) as handle:
        assert handle.read() == "previous"
    assert os.listdir(str(tmp_path)) == ["out.bin"]


def test_every_seeded_fault_still_applies_to_the_tree():
    """scripts/seed_faults.py edits one exact text per fault: a refactor that moves or rewrites that text
    retires the fault silently until CI's rotation reaches it, so each must occur exactly once."""
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("seed_faults", os.path.join(root, "scripts", "seed_faults.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = []
    for fault in module.FAULTS:
        name, path, old = fault[0], fault[2], fault[3]
        with open(os.path.join(root, path)) as handle:
            if handle.read().count(old) != 1:
                stale.append(f"{name} ({path})")
    assert stale == [], "update these faults in scripts/seed_faults.py FAULTS"
