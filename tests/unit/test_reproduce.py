"""`fsaf-repro reproduce` on a tiny embedded default: artifacts, report, stage reuse, input errors.

The run is the session's one tiny embedded-default run (tests/conftest.py `tiny_run`: seeded weights,
6 generated images, 128x192 input, the default backends); tests that re-run or change it work on a copy
(`tiny_run_copy`), so each sees the same starting point. Which stages a change re-runs is checked on the
plan alone (test_reproduce_plan.py, test_reproduce_keys.py); here the run's own outputs are checked.
"""
import json
import os
import shutil

import pytest

from fsaf_repro.errors import BackendUnavailable, CheckpointError, DataError
from fsaf_repro.report import NOT_APPLICABLE_EMBEDDED
from fsaf_repro.reproduce import run_reproduce
from fsaf_repro.reproduce_config import resolve_inputs
from fsaf_repro.reproduce_options import ReproduceOptions
from fsaf_repro.reproduce_plan import FLAVOURS
from fsaf_repro.spec import accuracy_reference, parity_tolerances, performance_reference
from tests.conftest import tiny_run_options

TINY = tiny_run_options()


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _report(run_dir):
    with open(os.path.join(run_dir, "report.md")) as handle:
        return handle.read()


def test_embedded_default_writes_every_artifact(tiny_run):
    run_dir, summary = tiny_run
    assert summary["embedded"] is True
    assert set(summary["stages"].values()) == {"ran"}
    for flavour in FLAVOURS:
        onnx_path = os.path.join(run_dir, "onnx", f"fsaf_{flavour}.onnx")
        assert os.path.getsize(onnx_path) > 1000000
        with open(onnx_path + ".json") as handle:
            assert json.load(handle)["flavour"] == flavour
    assert summary["backends_run"] == ["torch", "onnxruntime"]
    for backend in summary["backends_run"]:
        with open(os.path.join(run_dir, f"results_{backend}.json")) as handle:
            results = json.load(handle)
        assert results and all(r["score"] >= 0.05 for r in results)
        with open(os.path.join(run_dir, f"metrics_{backend}.json")) as handle:
            metrics = json.load(handle)
        assert metrics["num_images"] == 6 and len(metrics["stats"]) == 12
        assert len(metrics["annotation_sha256"]) == 64
    with open(os.path.join(run_dir, "perf.json")) as handle:
        records = json.load(handle)["records"]
    pure = sorted((r["backend"], r["batch_size"]) for r in records if r["mode"] == "pure_inference")
    assert pure == [("onnxruntime", 1), ("onnxruntime", 2), ("torch", 1), ("torch", 2)]
    assert sorted(r["backend"] for r in records if r["mode"] == "e2e") == ["onnxruntime", "torch"]
    with open(os.path.join(run_dir, "parity.json")) as handle:
        parity = json.load(handle)
    assert [p["other"] for p in parity["pairs"]] == ["onnxruntime (onnx-nms)", "onnxruntime (raw + host NMS)"]
    assert all(p["within_tolerance"] for p in parity["pairs"])
    for name in ("report.md", "stages.json", "logs/reproduce.log", "data_manifest.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    drawn = [n for n in os.listdir(os.path.join(run_dir, "plots")) if n.startswith("detections_")]
    assert len(drawn) == 3
    if shutil.which("atc") is None:
        assert "atc is not on PATH" in summary["skipped"]["convert"]
    from fsaf_repro.backends import backend_availability
    if not backend_availability("aclruntime").ok:
        assert summary["skipped"]["aclruntime"].startswith("unavailable: ")


def test_report_states_seeded_weights_first_and_has_the_accuracy_table(tiny_run):
    run_dir, _ = tiny_run
    text = _report(run_dir)
    head = "\n".join(text.splitlines()[:4])
    assert "weights are seeded" in head and "not trained" in head and "NOT the recipe's claim" in head
    acc = accuracy_reference()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[2].strip()
            in acc["stat_names"]]
    assert len(rows) == 12
    for row, name, ref, npu in zip(rows, acc["stat_names"], acc["pytorch_stats"]["values"],
                                   acc["npu_stats"]["values"]):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == name
        assert cells[-2:] == [f"{ref:.3f}", f"{npu:.3f}"]
    verdict = next(line for line in text.splitlines() if line.startswith("- torch: "))
    assert verdict.startswith("- torch: mAP ") and verdict.endswith(": " + NOT_APPLICABLE_EMBEDDED)


def test_report_has_the_recipe_fps_layout_with_gates_and_the_parity_table(tiny_run):
    run_dir, _ = tiny_run
    text = _report(run_dir)
    perf = performance_reference()
    header = next(line for line in text.splitlines() if line.startswith("| batch |"))
    for column in perf["devices"] + ["310P_aoe/310", "310P/T4"]:
        assert f"| {column} |" in header or f"| {column} |" in header + " |"
    assert "\n| torch | fp32 | pure_inference | 1 |" in text  # this run's records: the long table of device cpu
    for bs in perf["batch_sizes"]:
        assert f"\n| bs{bs} |" in text
    assert "\n| best batch |" in text
    best = dict((d, max(v for v in perf["table"][d].values() if v is not None)) for d in perf["devices"])
    ratio = best["310P_aoe"] / best["310"]
    assert "PASS 310P_aoe_vs_310: best 310P_aoe = {:.4f}".format(best["310P_aoe"]) in text
    min_ratio = dict((g["name"], g["min_ratio"]) for g in perf["gates"])["310P_aoe_vs_310"]
    assert f"ratio {ratio:.4f} (>= {min_ratio})" in text
    assert "Not evaluated: this run measured device(s) cpu only" in text
    assert "because device cpu has no column in the recipe's table" in text
    assert "| torch | onnxruntime (onnx-nms) |" in text
    assert "| torch | onnxruntime (raw + host NMS) |" in text
    assert "| match IoU >= {} |".format(parity_tolerances()["match_iou"]) in text


def test_second_run_with_the_same_arguments_reuses_every_stage(tiny_run, tiny_run_copy):
    # the end-to-end reuse check (the keys' rules are checked on the plan: test_reproduce_keys.py)
    run_dir, first = tiny_run_copy, tiny_run[1]
    results_before = _read(os.path.join(run_dir, "results_torch.json"))
    moved = run_reproduce(ReproduceOptions(run_dir=run_dir, **TINY))  # a copy: only the report names the run's folder
    assert set(moved["stages"]) == set(first["stages"])
    assert [n for n, s in moved["stages"].items() if s == "ran"] == ["report"]
    report_before = _read(os.path.join(run_dir, "report.md"))
    again = run_reproduce(ReproduceOptions(run_dir=run_dir, **TINY))
    assert set(again["stages"].values()) == {"reused"}
    with open(os.path.join(run_dir, "logs", "reproduce.log")) as handle:
        log = handle.read()
    assert "reused: export (key " in log and "reused: infer:torch (key " in log
    assert _read(os.path.join(run_dir, "results_torch.json")) == results_before
    assert _read(os.path.join(run_dir, "report.md")) == report_before


def test_a_higher_score_threshold_reruns_only_the_stages_after_inference(tiny_run_copy):
    run_dir = tiny_run_copy
    options = dict(TINY, score_threshold=0.3)
    summary = run_reproduce(ReproduceOptions(run_dir=run_dir, **options))
    stages = summary["stages"]
    for name in ("checkpoint", "dataset", "export", "infer:torch", "infer:onnxruntime", "perf:torch", "parity"):
        assert stages[name] == "reused", name
    for name in ("results:torch", "results:onnxruntime", "evaluate:torch", "report"):
        assert stages[name] == "ran", name
    with open(os.path.join(run_dir, "results_torch.json")) as handle:
        results = json.load(handle)
    with open(os.path.join(run_dir, "infer", "torch_bs1.json")) as handle:
        unfiltered = json.load(handle)
    assert results == [r for r in unfiltered if r["score"] >= 0.3]
    assert len(results) < len(unfiltered)


def test_other_batch_sizes_rerun_the_throughput_stages(tiny_run_copy):
    run_dir = tiny_run_copy
    summary = run_reproduce(ReproduceOptions(run_dir=run_dir, **dict(TINY, batch_sizes="1")))
    assert summary["stages"]["export"] == "reused"
    assert summary["stages"]["infer:onnxruntime"] == "reused"
    assert summary["stages"]["perf:onnxruntime"] == "ran"
    with open(os.path.join(run_dir, "perf.json")) as handle:
        records = json.load(handle)["records"]
    assert sorted(set(r["batch_size"] for r in records if r["mode"] == "pure_inference")) == [1]


def test_a_modified_output_is_detected_and_its_stage_reruns(tiny_run_copy):
    run_dir = tiny_run_copy
    path = os.path.join(run_dir, "metrics_onnxruntime.json")
    with open(path, "a") as handle:
        handle.write(" ")
    summary = run_reproduce(ReproduceOptions(run_dir=run_dir, **TINY))
    assert summary["stages"]["evaluate:onnxruntime"] == "ran"
    assert summary["stages"]["evaluate:torch"] == "reused"


def test_missing_checkpoint_or_coco_root_is_an_error_naming_the_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "fsaf.pth")
    with pytest.raises(CheckpointError, match="nowhere/fsaf.pth"):
        run_reproduce(ReproduceOptions(run_dir=str(tmp_path / "run"), checkpoint=missing, environ={}))
    with pytest.raises(CheckpointError, match="from_env.pth"):
        resolve_inputs(environ={"FSAF_CHECKPOINT": str(tmp_path / "from_env.pth")})
    with pytest.raises(DataError, match="no_coco"):
        run_reproduce(ReproduceOptions(run_dir=str(tmp_path / "run"), coco_root=str(tmp_path / "no_coco"), environ={}))
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    with pytest.raises(DataError, match="instances_val2017.json"):
        resolve_inputs(coco_root=str(tmp_path / "coco"), environ={})
    assert not os.path.exists(str(tmp_path / "run" / "stages.json"))


def test_cli_reports_the_missing_path_and_exits_1(tmp_path, capsys):
    from fsaf_repro.cli import main
    missing = str(tmp_path / "absent.pth")
    assert main(["reproduce", "--checkpoint", missing, "--run-dir", str(tmp_path / "run")]) == 1
    assert missing in capsys.readouterr().err


def test_unknown_backend_is_refused_before_any_work(tmp_path):
    with pytest.raises(BackendUnavailable, match="known backends"):
        run_reproduce(ReproduceOptions(run_dir=str(tmp_path / "run"), backends="torch,nonesuch", environ={},
                                       echo=False))
    assert not os.path.exists(str(tmp_path / "run"))


def test_npu_path_with_fake_ascend_tools_converts_runs_the_om_and_labels_its_figures(tiny_run_copy, tmp_path,
                                                                                      monkeypatch):
    # atc, npu-smi and the benchmark tool are hermetic fakes (tests/unit/fake_tools): the om path runs
    # end to end; the fake tool's detections are not the model's, so its parity row must fail.
    from tests.unit.fake_tools import install_fake_tools
    install_fake_tools(tmp_path / "bin", monkeypatch, tools=("atc", "npu-smi", "benchmark.x86_64"))
    run_dir = tiny_run_copy
    summary = run_reproduce(ReproduceOptions(run_dir=run_dir, **dict(TINY, backends="torch,onnxruntime,benchmark")))
    stages = summary["stages"]
    assert stages["export"] == "reused" and stages["infer:torch"] == "reused"
    for name in ("convert", "infer:benchmark", "evaluate:benchmark", "perf:benchmark", "parity", "report"):
        assert stages[name] == "ran", name
    for bs in (1, 2):
        om = os.path.join(run_dir, "om", f"fsaf_ascend-nms_bs{bs}.om")
        with open(om + ".json") as handle:
            sidecar = json.load(handle)
        assert sidecar["batch_size"] == bs and sidecar["soc_version"] == "Ascend310P3"
        assert os.path.isfile(os.path.join(run_dir, "om", sidecar["log"]))
    with open(os.path.join(run_dir, "perf.json")) as handle:
        records = json.load(handle)["records"]
    om_records = [r for r in records if r["backend"] == "benchmark" and r["mode"] == "pure_inference"]
    assert sorted(r["batch_size"] for r in om_records) == [1, 2]
    assert all(r["device"] == "310P" and r["precision"] == "fp16" for r in om_records)
    with open(os.path.join(run_dir, "parity.json")) as handle:
        pairs = json.load(handle)["pairs"]
    om_pairs = [p for p in pairs if p["other"] == "benchmark (om, ascend-nms)"]
    assert [p["reference"] for p in om_pairs] == ["torch", "onnxruntime (onnx-nms)"]
    assert not any(p["within_tolerance"] for p in om_pairs)
    text = _report(run_dir)
    assert "| convert (atc) | done | 2 om(s) for Ascend310P3" in text
    assert "Device 310P, input" in text and "\n| benchmark | fp16 | pure_inference | 1 |" in text
    assert "not compared: refusing to compare a pure_inference figure with a inference figure" in text
    assert "not evaluated: no pure_inference record for T4" in text
    om_row = next(line for line in text.splitlines() if line.startswith("| torch | benchmark (om, ascend-nms) |"))
    assert "| fp16: share >= " in om_row and "| NO |" in om_row


def test_a_stale_inference_journal_of_other_arguments_is_discarded(tiny_run_copy):
    run_dir = tiny_run_copy
    results_before = _read(os.path.join(run_dir, "infer", "onnxruntime_bs1.json"))
    with open(os.path.join(run_dir, "stages.json")) as handle:
        book = json.load(handle)
    del book["stages"]["infer:onnxruntime"]  # as if that stage had been interrupted
    with open(os.path.join(run_dir, "stages.json"), "w") as handle:
        json.dump(book, handle)
    journal = os.path.join(run_dir, "infer", "onnxruntime_bs1.json.journal")
    with open(journal, "w") as handle:
        handle.write(json.dumps({"run_key": "0" * 64, "fields": {"batch_size": 7}}) + "\n")
    summary = run_reproduce(ReproduceOptions(run_dir=run_dir, **TINY))
    assert summary["stages"]["infer:onnxruntime"] == "ran"
    assert summary["stages"]["evaluate:onnxruntime"] == "reused"  # same results, same bytes
    assert _read(os.path.join(run_dir, "infer", "onnxruntime_bs1.json")) == results_before
    assert not os.path.exists(journal)
    with open(os.path.join(run_dir, "logs", "reproduce.log")) as handle:
        assert "discarding the journal of an interrupted run with other arguments" in handle.read()


def test_records_measured_elsewhere_are_gated_beside_this_hosts(tiny_run_copy, tmp_path):
    from fsaf_repro.perf import RecordLabel, make_record, write_records
    gate = performance_reference()["gates"][0]
    extra = str(tmp_path / "npu_perf.json")
    write_records(extra, [
        make_record(RecordLabel(gate["numerator"], "benchmark", "fp16", 4),
                    70.0, "inference", "benchmark tool: npu.txt"),
        make_record(RecordLabel(gate["denominator"], "benchmark", "fp16", 8),
                    50.0, "inference", "benchmark tool: npu.txt",
                    chips=4)])
    run_dir = tiny_run_copy
    summary = run_reproduce(ReproduceOptions(run_dir=run_dir, **dict(TINY, extra_perf=[extra])))
    assert [n for n, s in summary["stages"].items() if s == "ran"] == ["report"]
    text = _report(run_dir)
    measured_gates = text.split("### Gates on the measured records")[1].split("###")[0]
    assert "PASS {}: best {} = 70.0000 fps (bs 4), best {} = 50.0000 fps (bs 8): ratio 1.4000".format(
        gate["name"], gate["numerator"], gate["denominator"]) in measured_gates
    with open(os.path.join(run_dir, "perf.json")) as handle:
        sources = [r["source"] for r in json.load(handle)["records"]]
    assert sum(1 for s in sources if s.endswith(f"(from {extra})")) == 2


def test_torch_left_out_of_backends_is_only_the_parity_reference(tiny_run_copy):
    run_dir = tiny_run_copy
    summary = run_reproduce(ReproduceOptions(run_dir=run_dir, **dict(TINY, backends="onnxruntime")))
    assert summary["backends_run"] == ["onnxruntime"]
    assert "infer:torch" not in summary["stages"] and "perf:torch" not in summary["stages"]
    assert summary["stages"]["parity"] == "reused"  # same sides: torch reference, ONNX Runtime twice
    text = _report(run_dir)
    assert "| torch | onnxruntime (onnx-nms) |" in text
    assert "n/a (not run over the data set)" in text
