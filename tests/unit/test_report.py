"""report.md from records: verdicts, the 7.1 layout with gates, labelled incomparable figures, plots
with and without matplotlib. Built from small hand-made records (no model run)."""
import dataclasses
import os
import sys

import numpy as np
import pytest

from fsaf_repro import report, report_perf, report_plots
from fsaf_repro.data import CocoImageSet
from fsaf_repro.evaluate import evaluate_results, metrics_record
from fsaf_repro.parity import compare_detections
from fsaf_repro.perf import RecordLabel, make_record
from fsaf_repro.perf_gates import reference_records
from fsaf_repro.postprocess import write_results_json
from fsaf_repro.report_context import ReportContext, RunKind
from fsaf_repro.spec import accuracy_reference, performance_reference
from fsaf_repro.synthetic import make_synthetic_coco, make_synthetic_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def context(tmp_path):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "coco"), num_images=4, seed=3)
    image_set = CocoImageSet(annotation_file, image_dir, height=128, width=192)
    results = make_synthetic_results(annotation_file, per_image=20, seed=1)
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    write_results_json(os.path.join(run_dir, "results_torch.json"), results)
    metrics = metrics_record(evaluate_results(annotation_file, results, image_ids=image_set.image_ids))
    rng = np.random.RandomState(0)
    dets = np.zeros((2, 100, 5), np.float32)
    dets[:, :10, :2] = rng.uniform(0, 50, (2, 10, 2))
    dets[:, :10, 2:4] = dets[:, :10, :2] + 20
    dets[:, :10, 4] = np.linspace(0.9, 0.1, 10)
    labels = np.zeros((2, 100), np.int64)
    pair = compare_detections(dets, labels, dets + np.float32(1e-6), labels)
    pair.update(reference="torch", other="onnxruntime (onnx-nms)", within_tolerance=True, tolerance="fp32",
                map_delta=0.0)
    from fsaf_repro.spec import parity_tolerances
    ctx = {
        "run_dir": run_dir, "embedded": True, "seeded": True, "generated": True,
        "checkpoint": {"path": "/x/fsaf_seeded_0.pth", "sha256": "0" * 64, "seeded": True},
        "dataset": {"annotation_file": annotation_file, "annotation_sha256": image_set.annotation_sha256,
                    "image_dir": image_dir, "num_images": 4, "total_images": 4, "generated": True},
        "canvas": [128, 192], "batch_sizes": [1, 2], "infer_batch_size": 1, "score_threshold": 0.05,
        "scorer": "pycocotools", "backends": [{"name": "torch", "status": "ran", "reason": None,
                                               "model": "inputs/fsaf_seeded_0.pth", "device": "cpu",
                                               "precision": "fp32"}],
        "skipped_steps": {"convert": "atc is not on PATH"}, "export": {"flavours": {}}, "convert": None,
        "metrics": {"torch": metrics}, "results": {"torch": "results_torch.json"},
        "perf_records": [make_record(RecordLabel("cpu", "torch", "fp32", 1), 2.5, "pure_inference", "measured: test")],
        "parity": {"image_ids": [1, 2], "canvas": [128, 192], "tolerances": parity_tolerances(), "pairs": [pair]},
        "stages": [{"name": "export", "key": "a" * 64, "seconds": 1.5}],
    }
    return ReportContext.from_json(ctx, "test context"), image_set


def test_report_without_matplotlib_says_why_and_still_draws_detections(context, monkeypatch):
    ctx, image_set = context
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    ok, reason = report.plots_availability()
    assert not ok and "matplotlib is not installed" in reason
    made = report.write_report(ctx.run_dir, ctx, image_set=image_set)
    text = open(os.path.join(ctx.run_dir, "report.md")).read()
    assert "Plots skipped: matplotlib is not installed" in text and "fsaf-repro[plots]" in text
    assert made["record"]["plots"] == [] and made["record"]["plots_skipped"]
    plot_dir = os.path.join(ctx.run_dir, "plots")
    assert not os.path.exists(os.path.join(plot_dir, "fps_by_batch.png"))
    drawn = made["record"]["detection_images"]
    assert len(drawn) == 3
    for rel in drawn:
        assert f"]({rel})" in text
        with open(os.path.join(ctx.run_dir, rel), "rb") as handle:
            assert handle.read(8) == PNG_MAGIC


def test_report_with_matplotlib_links_its_plots(context):
    pytest.importorskip("matplotlib", reason="the `plots` extra (matplotlib) is not installed on this stack")
    ctx, image_set = context
    made = report.write_report(ctx.run_dir, ctx, image_set=image_set)
    text = open(os.path.join(ctx.run_dir, "report.md")).read()
    assert made["record"]["plots"] == ["plots/fps_by_batch.png", "plots/per_class_ap.png"]
    for rel in made["record"]["plots"]:
        assert f"]({rel})" in text
        with open(os.path.join(ctx.run_dir, rel), "rb") as handle:
            assert handle.read(8) == PNG_MAGIC
    assert "Plots skipped" not in text


def test_drawn_detections_change_the_image(context, tmp_path):
    import cv2
    ctx, image_set = context
    meta = image_set.metas[0]
    det = {"image_id": meta.image_id, "category_id": 1, "bbox": [2.0, 3.0, 10.0, 8.0], "score": 0.9}
    out = str(tmp_path / "drawn.png")
    made = report_plots.draw_detections(meta.path, [det], [], out)
    assert made.detections_drawn == 1 and made.labels_not_placed == 0
    original = cv2.imread(meta.path, cv2.IMREAD_COLOR)
    drawn = cv2.imread(out, cv2.IMREAD_COLOR)
    assert drawn.shape == (original.shape[0] * made.scale, original.shape[1] * made.scale, 3)
    # the bottom edge of the box (the label sits above its top edge), in the detection colour
    assert tuple(drawn[11 * made.scale, 6 * made.scale]) == report_plots.DETECTION_BGR


def test_verdicts_follow_the_spec(context):
    ctx, _ = context
    acc = accuracy_reference()
    full = report.full_dataset_images()
    real = RunKind(seeded=False, generated=False, fitted=False, num_images=full, total_images=full)
    assert report.accuracy_verdict(acc["om_310_map"]["value"], ctx.run_kind) == report.NOT_APPLICABLE_EMBEDDED
    assert report.accuracy_verdict(acc["om_310_map"]["value"], real).startswith("PASS")
    assert report.accuracy_verdict(acc["pytorch_map"]["value"], real).startswith("PASS")
    assert report.accuracy_verdict(acc["min_map"]["value"] - 0.001, real).startswith("FAIL")
    smoke = acc["smoke"]["num_images"]
    partial = dataclasses.replace(real, num_images=smoke)
    assert report.accuracy_verdict(acc["smoke"]["min_map"]["value"], partial).startswith("smoke run")
    other = dataclasses.replace(real, num_images=7)
    assert report.accuracy_verdict(0.5, other).startswith("not applicable (partial run")


def test_measured_npu_records_are_gated_and_other_modes_are_not_ratioed(context):
    ctx, _ = context
    perf = performance_reference()
    gate = perf["gates"][0]
    measured = [make_record(RecordLabel(gate["numerator"], "aclruntime", "fp16", 4),
                            80.0, "inference", "measured: npu host"),
                make_record(RecordLabel(gate["denominator"], "benchmark", "fp16", 8),
                            50.0, "inference", "measured: npu host",
                            chips=4),
                make_record(RecordLabel("310P", "aclruntime", "fp16", 1), 60.0, "pure_inference", "measured: npu host")]
    text = "\n".join(report_perf.perf_lines(measured, ctx.canvas))
    assert "PASS {}: best {} = 80.0000 fps (bs 4), best {} = 50.0000 fps (bs 8): ratio 1.6000".format(
        gate["name"], gate["numerator"], gate["denominator"]) in text
    assert "not compared: refusing to compare a pure_inference figure with a inference figure" in text
    assert "Not evaluated" not in text.split("### Gates on the measured records")[1].split("###")[0]


def test_fps_table_rows_follow_the_recipe_layout(context):
    ctx, _ = context
    perf = performance_reference()
    lines = report_perf.perf_lines(ctx.perf_records, ctx.canvas)
    header = next(line for line in lines if line.startswith("| batch |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[1:5] == perf["devices"]
    assert cells[5:] == ["{}/{}".format(g["numerator"], g["denominator"]) for g in perf["gates"]]
    rows = [line for line in lines if line.startswith("| bs")]
    assert [r.split("|")[1].strip() for r in rows] == [f"bs{b}" for b in perf["batch_sizes"]]
    bs1 = [c.strip() for c in rows[0].strip("|").split("|")]
    ref = dict(((r["device"], r["batch_size"]), r["fps"]) for r in reference_records())
    assert bs1[1] == "{:.4f}".format(ref[("310", 1)])
    assert bs1[5] == "{:.4f}".format(ref[("310P_aoe", 1)] / ref[("310", 1)])
    bs64 = [c.strip() for c in rows[-1].strip("|").split("|")]
    assert bs64[1] == "OOM"  # the recipe's 显存不足 cell
