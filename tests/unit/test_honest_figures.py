"""Issue 19 rule 5: what a run reports is its own. Locks on the resolved path, partial fps of a resumed
run labelled and kept out of the gates, no stale tool output read as this run's, no --extra-perf from
the run itself, and a verifying .bin reuse mode."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fsaf_repro import backends, perf, perf_gates, report_perf, runner
from fsaf_repro.backends.benchmark_tool import output_dir, perf_file_path, run_info_file
from fsaf_repro.data import CocoImageSet, bin_bytes, write_bins
from fsaf_repro.errors import FsafReproError, PathError, RunLocked
from fsaf_repro.locking import RunLock, lock_path_for
from fsaf_repro.report_plots import measured_series
from fsaf_repro.reproduce_config import resolve_config
from fsaf_repro.reproduce_options import ReproduceOptions
from fsaf_repro.synthetic import make_synthetic_coco

H, W = 64, 96
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLDER = """
import sys
from fsaf_repro.locking import RunLock
lock = RunLock(sys.argv[1], "reproduce").acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_coco(str(tmp_path_factory.mktemp("syn")), num_images=6, seed=4)


def test_a_second_run_through_a_symlink_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(run_dir, target_is_directory=True)
    assert lock_path_for(alias) == lock_path_for(run_dir)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env, cwd=ROOT, universal_newlines=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            RunLock(alias, "reproduce").acquire()
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0


def _infer(dataset, out, **kwargs):
    image_set = CocoImageSet(dataset[0], dataset[1], height=H, width=W)
    backend = backends.create_backend("null", detections="echo").load()
    return runner.infer_dataset(image_set, backend, str(out), progress=False, batch_size=1, **kwargs)


def test_a_resumed_infer_records_partial_fps_that_the_gates_leave_out(dataset, tmp_path):
    out = tmp_path / "r.json"
    whole = _infer(dataset, out, keep_journal=True)
    assert [r.get("partial") for r in whole["records"]] == [None, None]
    journal = str(out) + ".journal"
    with open(journal) as handle:
        lines = handle.readlines()
    with open(journal, "w") as handle:  # as a kill -9 after the first 2 images leaves it
        handle.writelines(lines[:3])
    resumed = _infer(dataset, out)
    assert resumed["images_this_session"] == 4
    for record in resumed["records"]:
        assert record["partial"] is True and record["images"] == 4 and record["images_total"] == 6
        assert "PARTIAL: timed over 4 of the 6 images" in record["definition"]
    assert "PARTIAL (4 of 6 images)" in perf.format_records(resumed["records"])
    assert all("PARTIAL 4/6" in " ".join(key) for key in measured_series(resumed["records"]))
    assert "PARTIAL (4 of 6 images)" in "\n".join(report_perf.measured_tables(resumed["records"], None))
    # a partial record survives the records file, and no gate uses it
    path = tmp_path / "perf.json"
    perf.write_records(str(path), resumed["records"])
    loaded = perf.load_records(str(path))
    gate = {"name": "g", "min_ratio": 1.0, "source": "s", "numerator": "host", "denominator": "host"}
    result = perf_gates.evaluate_gates(loaded, mode="inference", gates=[gate])[0]
    assert result["ratio"] is None
    assert any("partial inference record(s) of host not used (covering 4 of 6 images)" in c
               for c in result["caveats"])


def test_benchmark_info_does_not_read_the_previous_runs_perf_file(tmp_path):
    workdir = tmp_path / "work"
    stale_perf = perf_file_path(str(workdir), 1, 0)
    os.makedirs(os.path.dirname(stale_perf))
    with open(stale_perf, "w") as handle:
        handle.write("[e2e] throughputRate: 10, latency: 1\n[inference] Interface throughputRate: 20\n")
    os.makedirs(output_dir(str(workdir), 0), exist_ok=True)
    stale_output = os.path.join(output_dir(str(workdir), 0), "a_1.bin")
    open(stale_output, "wb").close()
    bin_path = tmp_path / "a.bin"
    bin_path.write_bytes(b"\0" * bin_bytes(4, 4))
    info = tmp_path / "a.info"
    info.write_text(f"0 {bin_path} 4 4\n")
    # a tool that exits 0 and writes nothing: its run must fail, not report the earlier figures
    with pytest.raises(FsafReproError):
        run_info_file(str(tmp_path / "m.om"), 1, str(info), 4, 4, str(workdir), executable="true")
    assert not os.path.exists(stale_perf) and not os.path.exists(stale_output)


def test_extra_perf_inside_the_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    own = run_dir / "perf.json"
    perf.write_records(str(own), [])
    with pytest.raises(PathError, match="inside the run directory"):
        resolve_config(ReproduceOptions(run_dir=str(run_dir), extra_perf=(str(own),), npu_present=False))
    outside = tmp_path / "elsewhere.json"
    perf.write_records(str(outside), [])
    assert resolve_config(ReproduceOptions(run_dir=str(run_dir), extra_perf=(str(outside),),
                                           npu_present=False)).extra_perf


def _damage_keeping_mtime(path):
    status = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(np.full(4, 7.0, dtype=np.float32).tobytes())
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def test_bin_reuse_by_size_and_mtime_and_the_verifying_mode(dataset, tmp_path):
    image_set = CocoImageSet(dataset[0], dataset[1], height=H, width=W)
    first = write_bins(image_set, str(tmp_path), workers=1, progress=False)
    with open(first.bin_paths[0], "rb") as handle:
        original = handle.read()
    _damage_keeping_mtime(first.bin_paths[0])
    # the default promise (docs/preprocess-reuse.md): size and mtime; an mtime-restoring edit is not seen
    default = write_bins(image_set, str(tmp_path), workers=1, progress=False)
    assert default.written == 0 and default.reused == 6
    verified = write_bins(image_set, str(tmp_path), workers=1, progress=False, verify=True)
    assert verified.written == 1 and verified.reused == 5
    with open(first.bin_paths[0], "rb") as handle:
        assert handle.read() == original
    with open(os.path.join(str(tmp_path), "bin_inputs.jsonl")) as handle:
        entries = [json.loads(line) for line in handle if '"bin"' in line]
    assert all(len(entry["bin_sha256"]) == 64 for entry in entries)
