"""Throughput records, tool-output parsers, the recipe's reference table and its gates."""
import json
import os

import numpy as np
import pytest

from fsaf_repro import perf, perf_gates
from fsaf_repro.cli import main as cli_main
from fsaf_repro.errors import ResultsError
from fsaf_repro.spec import performance_reference

# The benchmark tool's perf file as the tool writes it (tests/unit/fixtures/tool_outputs); {inf} selects
# the spelling.
PERF_TEXT = """[e2e] throughputRate: 87.7802, latency: 569604
[data read] throughputRate: 92.9318, moduleLatency: 10.7606
[preprocess] throughputRate: 92.6819, moduleLatency: 10.7896
[{inf}] throughputRate: 88.0032, Interface throughputRate: 103.795, moduleLatency: 10.7968
[postprocess] throughputRate: 88.0046, moduleLatency: 11.363
"""
INTERFACE_FPS = 103.795
E2E_FPS = 87.7802


def best_of(table_row):
    return max(v for v in table_row.values() if v is not None)


def test_reference_records_follow_the_spec_table():
    ref = performance_reference()
    records = perf_gates.reference_records()
    expected_cells = sum(1 for d in ref["devices"] for v in ref["table"][d].values() if v is not None)
    assert len(records) == expected_cells
    for record in records:
        assert record["fps"] == ref["table"][record["device"]][str(record["batch_size"])]
        assert record["chips"] == (4 if record["device"] == "310" else 1)
        assert record["mode"] == "inference"


def test_gates_on_the_recipe_table_pass_with_the_table_ratios():
    ref = performance_reference()
    results = {g["name"]: g for g in perf_gates.evaluate_gates(perf_gates.reference_records())}
    assert ref["gates"] and sorted(results) == sorted(g["name"] for g in ref["gates"])
    for gate in ref["gates"]:
        result = results[gate["name"]]
        expected = best_of(ref["table"][gate["numerator"]]) / best_of(ref["table"][gate["denominator"]])
        assert result["ratio"] == pytest.approx(expected)
        assert expected >= gate["min_ratio"]  # the recipe's own table meets its gates
        assert result["passed"] is True
    # the 310 figures are per card (x4 chips): that difference of scope is stated, not hidden
    assert any("scopes" in c for c in results["310P_aoe_vs_310"]["caveats"])


@pytest.mark.parametrize("spelling", ["inference", "infer"])
def test_benchmark_perf_file_both_spellings(tmp_path, spelling):
    path = tmp_path / "perf_vision_batchsize_8_device_0.txt"
    path.write_text(PERF_TEXT.format(inf=spelling))
    e2e, inference = perf.parse_benchmark_perf(str(path), "310P")
    assert inference["batch_size"] == 8 and inference["mode"] == "inference"
    assert inference["fps"] == pytest.approx(INTERFACE_FPS) and inference["chips"] == 1
    assert e2e["fps"] == pytest.approx(E2E_FPS) and e2e["mode"] == "e2e"
    assert inference["latencies_ms"]["mean"] == pytest.approx(10.7968)


def test_310_figures_are_per_card_by_the_x4_convention(tmp_path):
    path = tmp_path / "perf_vision_batchsize_1_device_0.txt"
    path.write_text(PERF_TEXT.format(inf="inference"))
    _, card = perf.parse_benchmark_perf(str(path), "310")
    assert card["fps"] == pytest.approx(INTERFACE_FPS * 4)
    assert card["fps_measured"] == pytest.approx(INTERFACE_FPS)
    assert card["chips"] == 4 and "x 4" in card["scope"]
    _, chip = perf.parse_benchmark_perf(str(path), "310", chips=1)
    assert chip["fps"] == pytest.approx(INTERFACE_FPS)
    # a per-chip 310 figure is never silently compared with a per-card one
    with pytest.raises(ResultsError, match="chips"):
        perf_gates.compare_records(chip, card)
    rows = perf_gates.compare_to_reference([chip])
    assert rows[0]["ratio"] is None and "not compared" in rows[0]["caveats"][0]
    rows = perf_gates.compare_to_reference([card])
    ref_fps = performance_reference()["table"]["310"]["1"]
    assert rows[0]["ratio"] == pytest.approx(INTERFACE_FPS * 4 / ref_fps)


def test_pure_inference_output_and_malformed_files(tmp_path):
    text = "[INFO] Dataset number: 20 finished cost 44.7ms\nave_throughputRate: 22.3706samples/s, " \
           "ave_latency: 44.7073ms\n"
    (record,) = perf.parse_benchmark_perf(text, "310P", batch_size=1)
    assert record["mode"] == "pure_inference" and record["fps"] == pytest.approx(22.3706)
    assert record["latencies_ms"]["mean"] == pytest.approx(44.7073)
    with pytest.raises(ResultsError, match="batch size"):
        perf.parse_benchmark_perf(text, "310P")
    bad = tmp_path / "perf_vision_batchsize_1_device_0.txt"
    bad.write_text("[e2e] throughputRate: 10, latency: 5\n[data read] throughputRate: 3\n")
    with pytest.raises(ResultsError, match="Interface throughputRate"):
        perf.parse_benchmark_perf(str(bad), "310P")
    with pytest.raises(ResultsError, match="nothing to parse"):
        perf.parse_benchmark_perf("garbage\nmore garbage", "310P", batch_size=1)


def test_ais_bench_summary(tmp_path):
    stats = {"min": 9.5, "max": 12.5, "mean": 10.4, "median": 10.2, "percentile(99%)": 12.1}
    path = tmp_path / "run_summary.json"
    path.write_text(json.dumps({"NPU_compute_time": stats, "H2D_latency": stats, "D2H_latency": stats,
                                "throughput": 384.6, "filesinfo": {}}))
    record = perf.parse_ais_bench_summary(str(path), "310P", 4)
    assert record["fps"] == pytest.approx(384.6) and record["batch_size"] == 4
    assert record["latencies_ms"]["p50"] == stats["median"]
    assert record["latencies_ms"]["p99"] == stats["percentile(99%)"]
    assert "p90" not in record["latencies_ms"]
    assert perf.parse_ais_bench_summary(str(path), "310", 4)["fps"] == pytest.approx(384.6 * 4)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ResultsError, match="throughput"):
        perf.parse_ais_bench_summary(str(tmp_path / "bad.json"), "310P", 4)


def test_comparisons_state_differences_and_refuse_mixed_modes():
    a = perf.make_record(perf.RecordLabel("310P", "benchmark", "fp16", 8), 60.0, "inference", "measured: run a")
    b = perf.make_record(perf.RecordLabel("310P", "benchmark", "fp32", 8), 40.0, "inference", "measured: run b")
    comparison = perf_gates.compare_records(a, b)
    assert comparison["ratio"] == pytest.approx(1.5)
    assert comparison["caveats"] == ["different precisions: fp16 vs fp32"]
    c = perf.make_record(perf.RecordLabel("310P", "benchmark", "fp16", 8), 50.0, "e2e", "measured: run a")
    with pytest.raises(ResultsError, match="e2e"):
        perf_gates.compare_records(a, c)
    with pytest.raises(ResultsError, match="fps"):
        perf.make_record(perf.RecordLabel("310P", "x", "fp16", 1), 0.0, "inference", "measured")
    with pytest.raises(ResultsError, match="mode"):
        perf.make_record(perf.RecordLabel("310P", "x", "fp16", 1), 1.0, "fastest", "measured")


def test_gates_on_measured_records_fail_and_report_missing_devices():
    measured = [perf.make_record(perf.RecordLabel("310P_aoe", "benchmark", "fp16", bs), fps, "inference", "measured: a")
                for bs, fps in ((1, 50.0), (4, 60.0))]
    measured.append(perf.make_record(perf.RecordLabel("310", "benchmark", "fp16", 8), 55.0, "inference", "measured: b",
                                     chips=4))
    results = {g["name"]: g for g in perf_gates.evaluate_gates(measured)}
    gate = results["310P_aoe_vs_310"]
    assert gate["numerator"]["batch_size"] == 4
    assert gate["ratio"] == pytest.approx(60.0 / 55.0) and gate["passed"] is False
    assert results["310P_vs_T4"]["passed"] is None
    assert "no inference record for 310P, T4" in results["310P_vs_T4"]["caveats"][0]
    text = perf_gates.format_gates(perf_gates.evaluate_gates(measured))
    assert "FAIL 310P_aoe_vs_310" in text and "NOT EVALUATED 310P_vs_T4" in text


class CountingBackend:
    name = "counting"

    def __init__(self):
        self.calls = 0

    def run(self, batch):
        self.calls += 1


def test_measure_pure_inference_counts_warmup_and_timed_loops():
    ticks = iter(np.arange(0.0, 1000.0, 0.5))  # every clock read advances 0.5 s
    backend = CountingBackend()
    batch = perf.fixed_input(2, 8, 12)
    record = perf.measure_pure_inference(backend, batch, loops=4, warmup=2, clock=lambda: next(ticks),
                                         min_seconds=0)
    assert backend.calls == 6
    # reads: start, then (t0, t1) per loop; the last t1 ends the timing -> 8 reads after start = 4 s, 8 images
    assert record["fps"] == pytest.approx(8 / 4.0)
    assert record["latencies_ms"]["p50"] == pytest.approx(500.0) and record["latencies_ms"]["count"] == 4
    assert record["mode"] == "pure_inference" and record["batch_size"] == 2
    assert record["samples"] == 4 and record["fps_interval"]["kind"] == "min-max"


def test_pure_inference_runs_for_the_minimum_duration_and_the_minimum_count():
    batch = perf.fixed_input(1, 8, 12)
    for loops, min_seconds, expected_runs in ((3, 10.0, 10), (12, 2.0, 12)):
        clock = iter(np.arange(0.0, 1000.0, 0.5)).__next__  # every clock read advances 0.5 s
        backend = CountingBackend()
        record = perf.measure_pure_inference(backend, batch, loops=loops, warmup=1, clock=clock,
                                             min_seconds=min_seconds)
        # each timed run reads t0 and t1: the timed duration grows 1 s a run
        assert record["samples"] == expected_runs and backend.calls == expected_runs + 1
        assert record["seconds"] >= min_seconds
    with pytest.raises(ResultsError, match="min_seconds"):
        perf.measure_pure_inference(CountingBackend(), batch, loops=1, min_seconds=float("nan"))


def test_percentiles_only_where_the_sample_count_supports_them():
    for count, expected in ((2, set()), (9, set()), (10, {"p90"}), (99, {"p90"}), (100, {"p90", "p99"})):
        summary = perf.latency_summary(np.linspace(0.01, 0.02, count))
        present = {name for name in perf.PERCENTILE_MIN_SAMPLES if name in summary}
        assert present == expected, count
        assert summary["count"] == count and summary["min"] <= summary["p50"] <= summary["max"]


def test_throughput_interval_holds_the_figure_and_narrows_with_samples():
    rng = np.random.RandomState(3)
    few = 0.2 + 0.05 * rng.standard_normal(perf.BOOTSTRAP_MIN_SAMPLES - 1).clip(-2, 2)
    assert perf.throughput_interval(few, 2)["kind"] == "min-max"
    widths = []
    for count in (10, 200):
        lat = 0.2 + 0.02 * rng.standard_normal(count).clip(-3, 3)
        interval = perf.throughput_interval(lat, 2)
        fps = 2 * count / lat.sum()
        assert interval["kind"] == "bootstrap 95%" and interval["low"] < fps < interval["high"]
        assert interval == perf.throughput_interval(lat, 2)  # seeded: the same samples, the same interval
        widths.append((interval["high"] - interval["low"]) / fps)
    assert widths[1] < widths[0]


def test_throughput_interval_of_millions_of_calls_resamples_groups_in_bounded_memory():
    """A minimum duration on a microsecond backend times millions of calls: the interval pools them into
    BOOTSTRAP_MAX_GROUPS groups, so its working memory does not grow with the call count."""
    import tracemalloc

    rng = np.random.RandomState(5)
    count = 200 * perf.BOOTSTRAP_MAX_GROUPS
    lat = 1e-5 * (1 + 0.1 * rng.standard_normal(count).clip(-3, 3))
    tracemalloc.start()
    try:
        interval = perf.throughput_interval(lat, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    fps = count / lat.sum()
    assert interval["samples"] == count and interval["low"] < fps < interval["high"]
    assert str(perf.BOOTSTRAP_MAX_GROUPS) in interval["kind"]
    # resampling call by call would index BOOTSTRAP_RESAMPLES x count int64 values (3.2 GB here)
    assert peak < 8 * perf.BOOTSTRAP_RESAMPLES * perf.BOOTSTRAP_MAX_GROUPS * 4


def _gate_record(device, fps, low, high):
    record = perf.make_record(perf.RecordLabel(device, "benchmark", "fp16", 1), fps, "inference", "measured: test")
    record["fps_interval"] = {"low": low, "high": high, "kind": "bootstrap 95%", "samples": 20}
    return record


def test_a_gate_whose_intervals_hold_the_threshold_is_too_close_to_call():
    gate = {"name": "g", "numerator": "310P", "denominator": "T4", "min_ratio": 1.6, "source": "test"}
    # ratio 1.7 but the intervals allow 1.5 .. 1.9: neither pass nor fail
    close = perf_gates.evaluate_gates([_gate_record("310P", 170.0, 160.0, 180.0),
                                       _gate_record("T4", 100.0, 95.0, 105.0)], gates=[gate])[0]
    assert close["passed"] is None and close["verdict"] == perf_gates.TOO_CLOSE and close["ratio"] == pytest.approx(1.7)
    assert perf_gates.TOO_CLOSE.upper() in perf_gates.format_gates([close])
    # the same ratio measured tightly: a pass; well below: a fail
    tight = perf_gates.evaluate_gates([_gate_record("310P", 170.0, 169.0, 171.0),
                                       _gate_record("T4", 100.0, 99.5, 100.5)], gates=[gate])[0]
    assert tight["passed"] is True and tight["verdict"] == "pass"
    low = perf_gates.evaluate_gates([_gate_record("310P", 120.0, 110.0, 130.0), _gate_record("T4", 100.0, 95.0, 105.0)],
                              gates=[gate])[0]
    assert low["passed"] is False and low["ratio_interval"][1] < 1.6


def test_latency_percentiles_and_best_batch():
    summary = perf.latency_summary(np.arange(1, 101) / 1000.0)
    assert summary["p50"] == pytest.approx(50.5) and summary["p90"] == pytest.approx(90.1)
    assert summary["p99"] == pytest.approx(99.01)
    records = [perf.make_record(perf.RecordLabel("cpu", "onnxruntime", "fp32", bs), fps, "pure_inference", "measured")
               for bs, fps in ((1, 3.0), (2, 3.5), (4, 3.2))]
    assert perf.best_batch(records)["batch_size"] == 2
    records.append(perf.make_record(perf.RecordLabel("cpu", "torch", "fp32", 8), 9.0, "pure_inference", "measured"))
    with pytest.raises(ResultsError, match="different"):
        perf.best_batch(records)


def test_dataset_records_give_e2e_and_inference():
    e2e, inference = perf.dataset_records(100, 20.0, 10.0, [0.1] * 100, "cpu", "null", "fp32", 1)
    assert e2e["fps"] == pytest.approx(5.0) and inference["fps"] == pytest.approx(10.0)
    assert e2e["definition"] != inference["definition"]


def test_cli_perf_parse_and_gates(tmp_path, capsys):
    path = tmp_path / "perf_vision_batchsize_4_device_0.txt"
    path.write_text(PERF_TEXT.format(inf="infer"))
    out = tmp_path / "records.json"
    assert cli_main(["perf", "--from-benchmark", str(path), "--device", "310P_aoe", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Interface throughputRate" in printed  # the definition is printed with the figures
    assert len(perf.load_records(str(out))) == 2
    # measured 310P_aoe (103.8 fps) against no 310 record: not evaluated, so no failure
    assert cli_main(["gates", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NOT EVALUATED 310P_aoe_vs_310" in printed and "x reference" in printed
    # --strict refuses a gate that could not be evaluated; --with-reference fills 310 from the table:
    # measured 310P_aoe 103.8 fps (Interface throughputRate) vs the table's best 310 (54.7236).
    assert cli_main(["gates", "--strict", str(out)]) == 1
    assert "strict: " in capsys.readouterr().out
    assert cli_main(["gates", "--with-reference", "--strict", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PASS 310P_aoe_vs_310" in printed
    assert "310 from the recipe's reference table" in printed
    assert cli_main(["gates"]) == 0
    assert "PASS 310P_vs_T4" in capsys.readouterr().out
    slow = [perf.make_record(perf.RecordLabel("310P", "benchmark", "fp16", 1), 1.0, "inference", "measured: x"),
            perf.make_record(perf.RecordLabel("T4", "tensorrt", "fp16", 1), 9.0, "inference", "measured: y")]
    perf.write_records(str(tmp_path / "slow.json"), slow)
    assert cli_main(["gates", str(tmp_path / "slow.json")]) == 1
    assert cli_main(["gates", "--no-fail", str(tmp_path / "slow.json")]) == 0
    (tmp_path / "broken.json").write_text("[{\"device\": \"310P\"}]")
    assert cli_main(["gates", str(tmp_path / "broken.json")]) == 1
    assert "lacks" in capsys.readouterr().err


def test_cli_perf_measures_a_backend_per_batch_size(tmp_path, capsys):
    out = tmp_path / "measured.json"
    assert cli_main(["perf", "--backend", "null", "--batch-sizes", "1,3", "--loops", "3", "--min-seconds", "0",
                     "--warmup", "1",
                     "--height", "32", "--width", "48", "--backend-option", "detections=echo",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best batch:" in printed and "p99 ms" in printed and "inputs fixed in memory" in printed
    records = perf.load_records(str(out))
    assert [r["batch_size"] for r in records] == [1, 3]
    for record in records:
        assert record["mode"] == "pure_inference" and record["images"] == 3 * record["batch_size"]
        assert record["latencies_ms"]["count"] == 3
    # refused by the option's declared kind while parsing (argparse, exit 2), before any backend is made
    with pytest.raises(SystemExit) as refused:
        cli_main(["perf", "--backend", "null", "--backend-option", "threads"])
    assert refused.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err


def test_cli_perf_runs_the_benchmark_tool_over_an_info_file(tmp_path, monkeypatch, capsys):
    import numpy as np

    from fsaf_repro import convert
    from tests.unit.fake_tools import install_fake_tools
    install_fake_tools(tmp_path / "bin", monkeypatch)
    onnx = tmp_path / "fsaf.onnx"
    onnx.write_bytes(b"onnx")
    convert.convert_one(str(onnx), tmp_path / "om", convert.ConversionJob("atc", 1, "Ascend310P3"), height=16, width=24)
    with open(str(tmp_path / "fsaf.info"), "w") as info:
        for n in range(3):
            np.zeros((3, 16, 24), np.float32).tofile(str(tmp_path / f"{n}.bin"))
            info.write("{} {} 24 16\n".format(n, tmp_path / f"{n}.bin"))
    out = tmp_path / "records.json"
    assert cli_main(["perf", "--benchmark-info", str(tmp_path / "fsaf.info"), "--model",
                     str(tmp_path / "om" / "fsaf_bs1.om"), "--height", "16", "--width", "24", "--device", "310",
                     "--workdir", str(tmp_path / "run"), "--out", str(out)]) == 0
    e2e, inference = perf.load_records(str(out))
    assert inference["chips"] == 4 and inference["batch_size"] == 1 and e2e["mode"] == "e2e"
    assert len(os.listdir(str(tmp_path / "run" / "result" / "dumpOutput_device0"))) == 6
    monkeypatch.setenv("FAKE_BENCHMARK_MODE", "segv")
    assert cli_main(["perf", "--benchmark-info", str(tmp_path / "fsaf.info"), "--model",
                     str(tmp_path / "om" / "fsaf_bs1.om"), "--workdir", str(tmp_path / "run2")]) == 1
    assert "SIGSEGV" in capsys.readouterr().err
