"""The command line's one error boundary (issue 19, rule 4): Ctrl-C is one line and exit 130, an OSError
is one line by errno naming the file being written, finished files stay, scratch is removed."""
import errno
import os
import subprocess
import sys

import pytest

from fsaf_repro import export as export_module
from fsaf_repro import fileio
from fsaf_repro.cli import main
from fsaf_repro.cli import evaluate as evaluate_cli
from fsaf_repro.results_json import write_results_streaming


@pytest.fixture
def evaluate_argv(tmp_path):
    ann, results = tmp_path / "ann.json", tmp_path / "results.json"
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    results.write_text("[]")
    return ["evaluate", "--annotations", str(ann), "--results", str(results), "--metrics-out",
            str(tmp_path / "metrics.json")]


def _raise(exc):
    def raiser(*args, **kwargs):
        raise exc
    return raiser


def test_ctrl_c_is_one_line_and_exit_130(evaluate_argv, monkeypatch, capsys):
    monkeypatch.setattr(evaluate_cli, "evaluate_results", _raise(KeyboardInterrupt()))
    assert main(evaluate_argv) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize("code, advice", [
    (errno.ENOSPC, "disk is full"), (errno.EACCES, "permissions"), (errno.EROFS, "read-only"),
    (errno.ENAMETOOLONG, "too long"), (errno.EDQUOT, "quota"), (errno.EIO, "I/O error"),
])
def test_a_write_error_names_the_file_being_written(code, advice, evaluate_argv, monkeypatch, capsys, tmp_path):
    metrics = str(tmp_path / "metrics.json")
    with open(metrics, "w") as handle:
        handle.write("finished earlier\n")
    monkeypatch.setattr(evaluate_cli, "evaluate_results", lambda *a, **k: _fake_metrics())
    # the OS's write() error carries no file name: the atomic writer attaches the target's

    def failing_write(path, payload):
        return fileio._atomic(path, _raise(OSError(code, os.strerror(code))))
    monkeypatch.setattr(evaluate_cli, "write_results_json", failing_write)
    assert main(evaluate_argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and metrics in err and advice in err and "Traceback" not in err
    with open(metrics) as handle:
        assert handle.read() == "finished earlier\n"  # finished work intact
    assert not [n for n in os.listdir(str(tmp_path)) if fileio.PART_MARK in n]


def _fake_metrics():
    return {"scorer": "x", "num_images": 0, "num_detections": 0, "annotation_sha256": "0", "degenerate_dropped": 0,
            "stats": [0.0] * 12, "per_class": []}


def test_an_os_error_without_a_file_and_known_errno_is_one_line(evaluate_argv, monkeypatch, capsys):
    monkeypatch.setattr(evaluate_cli, "evaluate_results", _raise(OSError(errno.ENOSPC, "No space left on device")))
    assert main(evaluate_argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "disk is full" in err


def test_streamed_results_name_their_file_on_a_failed_write(tmp_path):
    path = str(tmp_path / "results.json")

    def results():
        yield {"image_id": 1}
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as failed:
        write_results_streaming(path, results())
    assert failed.value.filename == path and failed.value.errno == errno.ENOSPC
    assert os.listdir(str(tmp_path)) == []


def test_an_interrupted_export_leaves_no_scratch(tmp_path, monkeypatch):
    class Plan:
        flavour = "onnx-nms"

        def outputs(self):
            return []
    monkeypatch.setattr(export_module, "_trace_to", _raise(KeyboardInterrupt()))
    out = str(tmp_path / "model.onnx")
    with pytest.raises(KeyboardInterrupt):
        export_module._export_checked(None, Plan(), out)
    assert os.listdir(str(tmp_path)) == []


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_run_removes_a_killed_writers_scratch_and_keeps_live_ones(tmp_path):
    host = fileio._host_tag()
    dead = tmp_path / f".export-{host}-{_dead_pid()}-abc.onnx"
    dead.write_bytes(b"")
    fit_dir = tmp_path / f"fsaf_fit_{host}-{_dead_pid()}-xyz"
    (fit_dir / "train").mkdir(parents=True)
    live = tmp_path / f".export-{host}-{os.getpid()}-def.onnx"
    live.write_bytes(b"")
    foreign_fresh = tmp_path / f".export-otherhost-{os.getpid()}-ghi.onnx"  # another host's, recent
    foreign_fresh.write_bytes(b"")
    unrelated = tmp_path / ".export-notes.txt"
    unrelated.write_text("mine")
    removed = fileio.remove_stale_scratch(str(tmp_path), ".export-")
    removed += fileio.remove_stale_scratch(str(tmp_path), "fsaf_fit_")
    assert sorted(removed) == sorted([str(dead), str(fit_dir)])
    assert live.exists() and foreign_fresh.exists() and unrelated.exists()
    assert not dead.exists() and not fit_dir.exists()


def test_scratch_names_carry_their_writer():
    stem = fileio.scratch_stem(".export-")
    host, pid = stem[len(".export-"):].split("-")[:2]
    assert host == fileio._host_tag() and int(pid) == os.getpid()
