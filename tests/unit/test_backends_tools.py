"""Tool-driven backends (benchmark tool, ais_bench CLI, aclruntime) against fakes."""
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import pytest

from tests.support import fake_om
from tests.unit.fake_tools import install_fake_tools
from fsaf_repro import backends, convert
from fsaf_repro.backends import benchmark_tool
from fsaf_repro.data import read_info_file
from fsaf_repro.errors import (BackendError, BatchSizeMismatch, DataError, OutputFormatError, ResultsError,
                               ToolError)

H, W = 16, 24


@pytest.fixture
def tools(tmp_path, monkeypatch):
    return install_fake_tools(tmp_path / "bin", monkeypatch)


def make_om(tmp_path, batch_size):
    return fake_om(tmp_path, batch_size, "Ascend310P3", H, W)


def batch_of(values):
    """A batch whose sample n starts with values[n]: the fakes' detection box starts there."""
    batch = np.zeros((len(values), 3, H, W), np.float32)
    for n, v in enumerate(values):
        batch[n, 0, 0, 0] = v
    return batch


def check_fake_detections(out, values):
    for n, v in enumerate(values):
        np.testing.assert_allclose(out["dets"][n, 0], [v, v + 1, v + 10, v + 20, 0.75])
        assert out["labels"][n, 0] == 7
        assert not out["dets"][n, 1:, 4].any()


@pytest.mark.parametrize("name", ["benchmark", "ais_bench"])
def test_tool_backends_run_a_batch(tools, tmp_path, name):
    om = make_om(tmp_path, 2)
    with backends.create_backend(name, workdir=str(tmp_path)) as backend:
        backend.load(om)
        assert backend.batch_size == 2
        out = backend.run(batch_of([3.0, 40.0]))
        check_fake_detections(out, [3.0, 40.0])
        out = backend.run(batch_of([5.0, 6.0]))
        check_fake_detections(out, [5.0, 6.0])
        with pytest.raises(BatchSizeMismatch, match="static batch size of 2 but was given a batch of 1"):
            backend.run(batch_of([1.0]))
    # scratch directories are removed after successful runs
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith(("benchmark_", "ais_bench_"))]


def test_benchmark_perf_is_read_back(tools, tmp_path, monkeypatch):
    om = make_om(tmp_path, 1)
    from fsaf_repro import perf
    backend = backends.create_backend("benchmark", workdir=str(tmp_path)).load(om)
    backend.run(batch_of([1.0]))
    # the backend reads the tool's perf file; perf makes the records (a 310 figure is per card)
    e2e, inference = perf.benchmark_records(backend.last_perf, "310")
    assert inference["mode"] == "inference" and inference["chips"] == 4 and inference["batch_size"] == 1
    assert inference["fps"] == pytest.approx(4 * inference["fps_measured"])
    monkeypatch.setenv("FAKE_BENCHMARK_MODE", "infer_spelling")
    backend.run(batch_of([1.0]))
    assert perf.benchmark_records(backend.last_perf, "310")[1]["fps_measured"] == inference["fps_measured"]
    monkeypatch.setenv("FAKE_BENCHMARK_MODE", "success")
    monkeypatch.setenv("FAKE_BENCHMARK_DETS_DTYPE", "float16")
    monkeypatch.setenv("FAKE_BENCHMARK_LABELS_DTYPE", "int32")
    check_fake_detections(backend.run(batch_of([2.0])), [2.0])


@pytest.mark.parametrize("mode, error, message", [
    ("fail", ToolError, "load model from file failed"),
    ("segv", ToolError, "died by SIGSEGV"),
    ("no_perf", ToolError, "did not produce"),
    ("missing_output", ToolError, "no output pair for 1 of 2"),
    ("truncated_perf", ResultsError, r"no `\[inference\]`/`\[infer\]` line"),
])
def test_benchmark_failures(tools, tmp_path, monkeypatch, mode, error, message):
    om = make_om(tmp_path, 2)
    backend = backends.create_backend("benchmark", workdir=str(tmp_path)).load(om)
    monkeypatch.setenv("FAKE_BENCHMARK_MODE", mode)
    with pytest.raises(error, match=message) as info:
        backend.run(batch_of([1.0, 2.0]))
    assert "scratch directory kept" in str(info.value)
    # the failed call's tool output is in the backend's kept log as well as in the scratch directory
    with open(backend.tool_log_path) as handle:
        assert "## call 1" in handle.read()


def test_benchmark_info_file_run(tools, tmp_path):
    om = make_om(tmp_path, 1)
    bins = tmp_path / "bins"
    bins.mkdir()
    with open(str(tmp_path / "fsaf.info"), "w") as info:
        for n, v in enumerate([7.0, 8.0, 9.0]):
            batch_of([v])[0].tofile(str(bins / f"00000{n}.bin"))
            info.write("{} {} {} {}\n".format(n, bins / f"00000{n}.bin", W, H))
    result = benchmark_tool.run_info_file(om, 1, str(tmp_path / "fsaf.info"), W, H, tmp_path / "work")
    assert sorted(os.listdir(result["outputs_dir"])) == sorted(
        f"00000{n}_{k}.bin" for n in range(3) for k in (1, 2))
    assert {"e2e", "inference"} <= set(result["perf"].stages) and result["perf"].batch_size == 1
    # the tool reads a checked copy with absolute paths, in its own working directory
    assert result["info"] == str(tmp_path / "work" / "fsaf.resolved.info")
    assert "-input_text_path=" + result["info"] in open(result["log"]).readline()
    assert [e[1] for e in read_info_file(result["info"])] == [str(bins / f"00000{n}.bin") for n in range(3)]


def test_benchmark_info_file_is_checked_before_the_tool_starts(tools, tmp_path, monkeypatch):
    om = make_om(tmp_path, 1)
    (tmp_path / "bins").mkdir()
    batch_of([1.0])[0].tofile(str(tmp_path / "bins" / "a.bin"))
    np.zeros(5, np.float32).tofile(str(tmp_path / "bins" / "short.bin"))
    monkeypatch.chdir(tmp_path)
    cases = [(f"0 bins/a.bin {W} {H}\n", None),  # relative to the current directory: fine
             (f"0 bins/missing.bin {W} {H}\n", "entry 0 lists bins/missing.bin, which does not exist"),
             (f"0 bins/short.bin {W} {H}\n", "entry 0 .*short.bin. has 20 bytes"),
             (f"0 bins/a.bin {W + 1} {H}\n", "is 25x16, but this run is 24x16"),
             ("", "lists no .bin files")]
    for number, (text, error) in enumerate(cases):
        (tmp_path / "f.info").write_text(text)
        workdir = tmp_path / f"work{number}"
        if error is None:
            result = benchmark_tool.run_info_file(om, 1, "f.info", W, H, workdir)
            assert len(os.listdir(result["outputs_dir"])) == 2
            continue
        with pytest.raises(DataError, match=error):
            benchmark_tool.run_info_file(om, 1, "f.info", W, H, workdir)
        assert not os.path.exists(str(workdir / "benchmark.log"))  # the tool never started


@pytest.mark.parametrize("mode, error, message", [
    ("fail", ToolError, "acl init failed"),
    ("segv", ToolError, "died by SIGSEGV"),
    ("bad_size", ToolError, "does not equal the model input size"),
    ("no_summary", ToolError, "no summary for the output folder .*_summary.json \\(ais_bench\\) or "
                              ".*sumary.json \\(ais_infer\\), the tool's record of a finished run"),
    ("bad_summary", OutputFormatError, "no numeric `throughput`"),
    ("zero_throughput", OutputFormatError, "`throughput` 0: the tool timed no inference"),
])
def test_ais_bench_failures(tools, tmp_path, monkeypatch, mode, error, message):
    om = make_om(tmp_path, 1)
    backend = backends.create_backend("ais_bench", workdir=str(tmp_path)).load(om)
    monkeypatch.setenv("FAKE_AIS_BENCH_MODE", mode)
    with pytest.raises(error, match=message) as info:
        backend.run(batch_of([1.0]))
    assert "scratch directory kept" in str(info.value)


@pytest.mark.parametrize("name", ["benchmark", "ais_bench"])
def test_tool_log_is_kept_next_to_the_om_call_by_call(tools, tmp_path, name):
    om = make_om(tmp_path, 1)
    with backends.create_backend(name).load(om) as backend:
        backend.run(batch_of([1.0]))
        backend.run(batch_of([2.0]))
    assert backend.tool_log_path == om + "." + name + ".log"
    with open(backend.tool_log_path) as handle:
        text = handle.read()
    # each call's argv header (written by run_tool) is kept, in order, though the scratch is gone
    assert text.count("# argv: ") == 2 and text.index("## call 1") < text.index("## call 2")
    assert not [p for p in os.listdir(os.path.dirname(om)) if p.startswith(("benchmark_", "ais_bench_"))]
    # loading again (a new run on the same om) adds a section and keeps the earlier calls
    backends.create_backend(name).load(om)
    with open(backend.tool_log_path) as handle:
        text = handle.read()
    assert text.count(f"# {name} on {om}") == 2 and "## call 2" in text


def test_tool_log_falls_back_to_the_temp_folder_when_the_om_folder_refuses_it(tools, tmp_path, monkeypatch):
    om = make_om(tmp_path, 1)
    os.mkdir(om + ".ais_bench.log")  # a directory in the way: unwritable even for root
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.mkdir(str(tmp_path / "tmp"))
    with pytest.warns(RuntimeWarning, match="cannot write the tool log .*; writing it to .*tmp"):
        backend = backends.create_backend("ais_bench").load(om)
    assert backend.tool_log_path == str(tmp_path / "tmp" / "fsaf_bs1.om.ais_bench.log")
    backend.run(batch_of([1.0]))
    assert "## call 1" in open(backend.tool_log_path).read()


def test_unwritable_tool_log_place_is_named(tools, tmp_path):
    om = make_om(tmp_path, 1)
    with pytest.raises(BackendError, match="cannot write the tool log .*pass log_path=FILE"):
        backends.create_backend("ais_bench", log_path=str(tmp_path / "no" / "such" / "x.log")).load(om)


@pytest.mark.parametrize("layout", ["new", "old"])
def test_ais_bench_summary_is_kept_in_either_published_layout(tools, tmp_path, monkeypatch, layout):
    """ais_bench (summary beside the time-named folder) and ais_infer (`sumary.json` inside it, outputs
    named input0_output_0.bin, no --output_dirname option) both run: outputs come from `filesinfo`."""
    monkeypatch.setenv("FAKE_AIS_BENCH_LAYOUT", layout)
    om = make_om(tmp_path, 2)
    backend = backends.create_backend("ais_bench", workdir=str(tmp_path), keep_scratch=True).load(om)
    check_fake_detections(backend.run(batch_of([4.0, 9.0])), [4.0, 9.0])
    assert backend.last_summary["throughput"] > 0 and "NPU_compute_time" in backend.last_summary
    (scratch,) = [p for p in os.listdir(str(tmp_path)) if p.startswith("ais_bench_")]
    written = sorted(os.listdir(os.path.join(str(tmp_path), scratch, "output")))
    assert re.match(r"^\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d$", written[0])
    assert written[1:] == ([written[0] + "_summary.json"] if layout == "new" else [])


def test_om_without_sidecar_needs_a_batch_size(tools, tmp_path):
    om = make_om(tmp_path, 1)
    os.remove(om + ".json")
    with pytest.raises(BackendError, match="batch_size=N"):
        backends.create_backend("ais_bench").load(om)
    assert backends.create_backend("ais_bench", batch_size=1).load(om).batch_size == 1
    with pytest.raises(BackendError, match="does not exist"):
        backends.create_backend("benchmark").load(str(tmp_path / "absent.om"))


FAKE_INTERFACE = '''
import numpy as np


class _Input(object):
    def __init__(self, shape):
        self.shape = shape


class InferSession(object):
    """Fake aclruntime session: reads the fake om (JSON) and answers like the fake tools."""

    def __init__(self, device_id, model_path):
        import json
        with open(model_path) as handle:
            om = json.load(handle)
        self.shape = [int(v) for v in om["input_shape"].split(":", 1)[1].split(",")]
        self.freed = False

    def get_inputs(self):
        return [_Input(self.shape)]

    def infer(self, arrays):
        batch = arrays[0]
        dets = np.zeros((batch.shape[0], 100, 5), np.float16)
        labels = np.zeros((batch.shape[0], 100), np.int32)
        for n in range(batch.shape[0]):
            k = float(batch[n].flat[0])
            dets[n, 0] = [k, k + 1, k + 10, k + 20, 0.75]
            labels[n, 0] = 7
        return [dets, labels]

    def sumary(self):
        return {"NPU_compute_time": {"mean": 1.0}}

    def free_resource(self):
        self.freed = True
'''


@pytest.fixture
def fake_ais_bench_module(tmp_path, monkeypatch):
    package = tmp_path / "pkgs" / "ais_bench" / "infer"
    package.mkdir(parents=True)
    (tmp_path / "pkgs" / "ais_bench" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "interface.py").write_text(FAKE_INTERFACE)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    for name in [m for m in sys.modules if m.startswith("ais_bench")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [m for m in sys.modules if m.startswith("ais_bench")]:
        del sys.modules[name]


def test_aclruntime_absent_reports_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ais_bench", None)  # makes the import fail like an absent wheel
    avail = backends.backend_availability("aclruntime")
    assert not avail.ok and "aclruntime" in avail.reason and "install" in avail.reason


def test_aclruntime_with_a_fake_infer_session(tools, tmp_path, fake_ais_bench_module):
    assert backends.backend_availability("aclruntime").ok
    om = make_om(tmp_path, 2)
    backend = backends.create_backend("aclruntime").load(om)
    assert backend.batch_size == 2
    out = backend.run(batch_of([3.0, 9.0]))
    check_fake_detections(out, [3.0, 9.0])
    assert out["dets"].dtype == np.float32 and out["labels"].dtype == np.int64
    with pytest.raises(BatchSizeMismatch, match="batch of 3"):
        backend.run(batch_of([1.0, 2.0, 3.0]))
    assert backend.summary()["NPU_compute_time"]["mean"] == 1.0
    session = backend.session
    backend.close()
    assert session.freed


def test_aclruntime_sidecar_contradicting_the_om_is_refused(tools, tmp_path, fake_ais_bench_module):
    om = make_om(tmp_path, 2)
    with open(om + ".json") as handle:
        sidecar = json.load(handle)
    sidecar["batch_size"] = 8
    with open(om + ".json", "w") as handle:
        json.dump(sidecar, handle)
    with pytest.raises(BackendError, match="batch size 8"):
        backends.create_backend("aclruntime").load(om)


def test_output_format_error_type_is_kept(tools, tmp_path, monkeypatch):
    om = make_om(tmp_path, 1)
    backend = backends.create_backend("benchmark", workdir=str(tmp_path)).load(om)
    monkeypatch.setenv("FAKE_BENCHMARK_DETS_DTYPE", "float64")
    with pytest.raises(OutputFormatError, match="bytes"):
        backend.run(batch_of([1.0]))


# --- published tool outputs (tests/unit/fixtures/tool_outputs, sources in its SOURCES file) ----------

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tool_outputs")
with open(os.path.join(FIXTURES, "expected.json")) as _handle:
    EXPECTED = dict((k, v) for k, v in json.load(_handle).items() if not k.startswith("_"))


def fixture_text(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def test_every_fixture_has_an_expectation_and_a_source():
    names = sorted(n for n in os.listdir(FIXTURES) if n not in ("expected.json", "SOURCES"))
    assert names == sorted(EXPECTED)
    sources = fixture_text("SOURCES")
    assert [n for n in names if not re.search(rf"^- (?:\S+ and )?{re.escape(n)}", sources, re.M)] == []


def _place_summary(tmp_path, name, layout):
    """An --output folder holding one time-named run folder with the fixture as its summary."""
    root = tmp_path / "out"
    run_dir = root / "2022_12_01-10_20_30"
    run_dir.mkdir(parents=True)
    target = (str(run_dir) + "_summary.json") if layout == "new" else str(run_dir / "sumary.json")
    shutil.copy(os.path.join(FIXTURES, name), target)
    return root, run_dir, target


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_published_tool_output_is_read(tmp_path, name):
    from fsaf_repro import perf
    from fsaf_repro.backends import ais_bench_cli
    expected = EXPECTED[name]
    kind = expected["kind"]
    if kind == "benchmark":
        # as the tool names its perf file (the batch size comes from the name) and as console text
        path = tmp_path / "perf_vision_batchsize_{}_device_0.txt".format(expected["batch_size"])
        shutil.copy(os.path.join(FIXTURES, name), str(path))
        if "error" in expected:
            with pytest.raises(ResultsError, match=expected["error"]) as info:
                perf.parse_benchmark_perf(str(path), "310")
            assert str(path) in str(info.value)
            return
        records = perf.parse_benchmark_perf(str(path), "310P")
        by_mode = dict((r["mode"], r) for r in records)
        assert all(r["batch_size"] == expected["batch_size"] for r in records)
        if "pure_fps" in expected:
            assert sorted(by_mode) == ["pure_inference"]
            assert by_mode["pure_inference"]["fps"] == pytest.approx(expected["pure_fps"])
            assert by_mode["pure_inference"]["latencies_ms"]["mean"] == pytest.approx(expected["pure_latency_ms"])
        else:
            assert sorted(by_mode) == ["e2e", "inference"]
            assert by_mode["inference"]["fps"] == pytest.approx(expected["inference_fps"])
            assert by_mode["inference"]["latencies_ms"]["mean"] == pytest.approx(expected["inference_latency_ms"])
            assert by_mode["e2e"]["fps"] == pytest.approx(expected["e2e_fps"])
        text_records = perf.parse_benchmark_perf(fixture_text(name) + "\n", "310P", batch_size=expected["batch_size"])
        assert [r["fps"] for r in text_records] == [r["fps"] for r in records]
    elif kind == "ais_bench_summary":
        for layout in ("new", "old"):
            root, run_dir, target = _place_summary(tmp_path / layout, name, layout)
            for given in (str(root), str(run_dir), target):
                record = perf.parse_ais_bench_summary(given, "310P", expected["batch_size"])
                assert record["fps"] == pytest.approx(expected["throughput"])
                assert record["latencies_ms"]["mean"] == pytest.approx(expected["mean_ms"])
                assert record["latencies_ms"]["p99"] == pytest.approx(expected["p99_ms"])
            assert ais_bench_cli.summary_of_output(str(root))[0] == target
    elif kind == "ais_bench_console":
        path = tmp_path / "ais_bench.log"
        shutil.copy(os.path.join(FIXTURES, name), str(path))
        record = perf.parse_ais_bench_summary(str(path), "310P", expected["batch_size"])
        assert record["fps"] == pytest.approx(expected["throughput"])
        assert record["latencies_ms"]["mean"] == pytest.approx(expected["mean_ms"])
    elif kind == "ais_bench_layout":
        # rebuild the published tree; the summary body is another published one
        root = tmp_path / "result"
        for line in fixture_text(name).splitlines()[1:]:
            entry = line.split("-- ", 1)[1]
            inside = line.startswith("|   ")
            path = root / expected["run_dir"] / entry if inside else root / entry
            if entry.endswith(".json"):
                shutil.copy(os.path.join(FIXTURES, "ais_bench_sumary_nasfpn.json"), str(path))
            elif entry.endswith(".bin"):
                path.write_bytes(b"")
            else:
                path.mkdir(parents=True)
        assert ais_bench_cli.find_run_dir(str(root)) == str(root / expected["run_dir"])
        summary_path, summary = ais_bench_cli.summary_of_output(str(root))
        assert summary_path == str(root / expected["summary"])
        # no filesinfo in that summary: the current naming, <input stem>_{i}.bin, is what the tree shows
        outputs = ais_bench_cli.output_files(summary, summary_path, "/data/196608-0.bin",
                                             str(root / expected["run_dir"]), 1)
        assert outputs == [str(root / expected["run_dir"] / expected["first_output"])]
        assert os.path.isfile(outputs[0])
    elif kind == "npu_smi":
        chips = convert.parse_npu_smi(fixture_text(name))
        assert [list(c) for c in chips] == expected["chips"]
        assert sorted(set(convert.soc_version_from_chip(c[1]) for c in chips)) == [expected["soc_version"]]
    elif kind == "atc":
        text = fixture_text(name)
        errors, warnings_ = convert.read_cann_codes(text)
        assert [e.split(":")[0] for e in errors] == expected["errors"]
        assert [w.split(":")[0] for w in warnings_] == expected.get("warning_codes", [])
        assert (convert.ATC_SUCCESS in text) == expected["success"]
        assert (convert.ATC_FAILURE in text) == (not expected["success"])
    else:
        raise AssertionError(f"unknown fixture kind {kind!r} in expected.json")


def _mutated(name, old, new):
    text = fixture_text(name)
    assert old in text  # the mutation must apply to the published text
    return text.replace(old, new, 1)


@pytest.mark.parametrize("text, message", [
    (_mutated("benchmark_perf_inference_postprocess_310P.txt", "[inference]", "[inferance]"),
     r"line 4: expected a perf stage among .*got: '\[inferance\] throughputRate: 83.7909"),
    (_mutated("benchmark_perf_infer_post_310.txt", "[post]", "Inference done\n[post]"),
     r"line 5: expected a perf line .*got: 'Inference done'"),
    (fixture_text("benchmark_perf_infer_post_310.txt") * 2, r"lines 1 and 6 both give the `\[e2e\]` stage"),
    (fixture_text("benchmark_perf_infer_post_310.txt") + fixture_text("benchmark_pure_equals_bare.txt"),
     "holds both perf stage lines .* and a pure-inference summary"),
    (fixture_text("benchmark_pure_info_colon.txt") + fixture_text("benchmark_pure_info_equals.txt"),
     r"2 pure-inference summaries \(lines 6, 9\)"),
    ("NPU 310性能：ave_throughputRate = 0.235349samples/s, ave_latency = 4249.14ms\n",
     "line 1: expected a pure-inference summary .*got: 'NPU 310性能"),
    (_mutated("benchmark_pure_equals_bare.txt", "samples/s", "fps"), "line 1: expected a pure-inference summary"),
    ("garbage\nmore garbage", "nothing to parse; line 1 reads 'garbage'"),
])
def test_benchmark_output_that_is_not_the_tools_is_quoted(text, message):
    from fsaf_repro import perf
    with pytest.raises(ResultsError, match=message):
        perf.parse_benchmark_perf(text, "310P", batch_size=1)


def test_benchmark_perf_path_errors_name_the_path(tmp_path):
    from fsaf_repro import perf
    with pytest.raises(ResultsError, match="missing_perf.txt: no such file"):
        perf.parse_benchmark_perf(str(tmp_path / "missing_perf.txt"), "310P", batch_size=1)
    with pytest.raises(ResultsError, match="is a directory"):
        perf.parse_benchmark_perf(str(tmp_path), "310P", batch_size=1)


def test_ais_bench_summaries_that_cannot_be_used_are_refused(tmp_path):
    from fsaf_repro import perf
    from fsaf_repro.backends import ais_bench_cli
    summary = json.loads(fixture_text("ais_infer_sumary_ghostnet.json"))
    root, run_dir, target = _place_summary(tmp_path, "ais_infer_sumary_ghostnet.json", "old")
    for key, value, message in (("throughput", 0, "`throughput` 0: the tool timed no inference"),
                                ("throughput", "3438", "no numeric `throughput` \\(got '3438'\\)"),
                                ("NPU_compute_time", {"mean": None}, "`NPU_compute_time` must map")):
        with open(target, "w") as handle:
            json.dump(dict(summary, **{key: value}), handle)
        with pytest.raises(ResultsError, match=message):
            perf.parse_ais_bench_summary(str(root), "310P", 16)
    os.remove(target)
    with pytest.raises(ResultsError, match="no summary for the output folder .*2022_12_01-10_20_30: expected "):
        perf.parse_ais_bench_summary(str(root), "310P", 16)
    (root / "2022_12_01-10_21_00").mkdir()
    with pytest.raises(ToolError, match=r"expected one output folder .* found 2 "
                                        r"\(2022_12_01-10_20_30, 2022_12_01-10_21_00\)"):
        ais_bench_cli.find_run_dir(str(root))
    with pytest.raises(OutputFormatError, match="`filesinfo` has no sample whose infiles include b.bin"):
        ais_bench_cli.output_files({"filesinfo": {"0": {"infiles": ["/x/a.bin"], "outfiles": ["a_0.bin"]}}},
                                   "s.json", "/in/b.bin", str(run_dir), 2)
    with pytest.raises(OutputFormatError, match=r"lists outfiles \['a_0.bin'\]; expected 2"):
        ais_bench_cli.output_files({"filesinfo": {"0": {"infiles": ["/x/a.bin"], "outfiles": ["a_0.bin"]}}},
                                   "s.json", "/in/a.bin", str(run_dir), 2)


@pytest.mark.parametrize("text, message", [
    (_mutated("ais_bench_console_new.txt", "): 1512", ") = 1512"), "line 3: expected `\\[INFO\\] throughput"),
    (_mutated("ais_infer_console_old.txt", "mean = 1.36", "mean = n/a"), "line 3: expected `<name> \\(ms\\)"),
    (fixture_text("ais_bench_console_new.txt") * 2, "expected one ais_bench summary line .* found 2 \\(lines 3, 7\\)"),
    ("[INFO] output path:out/2022_12_01-10_20_30\n", "found 0"),
])
def test_ais_bench_console_that_is_not_a_summary_is_quoted(tmp_path, text, message):
    from fsaf_repro import perf
    path = tmp_path / "console.log"
    path.write_text(text)
    with pytest.raises(ResultsError, match=message):
        perf.parse_ais_bench_summary(str(path), "310P", 1)
