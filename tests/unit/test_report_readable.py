"""The report reads as it should (issue 21): every verdict beside its figure and rule, anomalies the run
can see flagged, one long throughput table per device, only comparable rows against the reference, plots
whose titles come from the data, a legend outside the axes, distinct colours, labels on drawn images that
cover no other label, ground truth visible on any colour, and run directories named by their weights.
Built from small hand-made records; no model runs."""
import dataclasses
import itertools

import numpy as np
import pytest

from fsaf_repro import anomalies, report, report_perf, report_plots
from fsaf_repro.errors import ResultsError
from fsaf_repro.perf import Coverage, RecordLabel, latency_summary, make_record
from fsaf_repro.report_context import ReportContext
from fsaf_repro.reproduce_config import default_run_dir, resolve_config
from fsaf_repro.reproduce_options import ReproduceOptions
from fsaf_repro.spec import coco_class_names, parity_tolerances, performance_reference

CANVAS = [256, 384]
GT_CLASSES = 8  # the per-class rows below give this many classes an AP (ground truth), the rest None


def _metrics(ap_of_index):
    names = coco_class_names()
    per_class = [{"name": name, "ap": ap_of_index(i)} for i, name in enumerate(names)]
    return {"stats": [0.1] * 12, "per_class": per_class, "num_images": 4, "num_detections": 10,
            "scorer": "pycocotools", "annotation_sha256": "0" * 64}


def _pair(**changes):
    tol = parity_tolerances()
    pair = {"reference": "torch", "other": "fp16-emulated (om stand-in)", "images": 3, "detections_ref": 100,
            "detections_other": 98, "counts_equal": False, "labels_equal": False, "label_agreement": 0.97,
            "max_box_abs_diff": 130.0, "max_score_abs_diff": 0.3, "match_rate": 0.83,
            "match_iou": tol["match_iou"], "within_tolerance": True, "tolerance": "fp16 om", "precision": "fp16",
            "fp16_agreement": {"found": 99, "total": 100, "rate": 0.99,
                               "box_tol": tol["fp16_om_box_abs_tol_px"], "score_tol": tol["fp16_om_score_abs_tol"]},
            "map_delta": 0.001}
    pair.update(changes)
    return pair


def _records():
    """torch at batch 1: e2e 2.35 fps, pure inference 0.36 fps (the issue's impossible pair), the pure
    figure's calls spread from 0.2 to 5 fps."""
    spread = latency_summary([0.2, 2.8, 2.8, 5.0])  # seconds per call: 5 fps .. 0.2 fps
    return [make_record(RecordLabel("cpu", "torch", "fp32", 1),
                        2.35, "e2e", "measured: test", coverage=Coverage(32, 13.6)),
            make_record(RecordLabel("cpu", "torch", "fp32", 1), 0.36, "pure_inference", "measured: test",
                        latencies_ms=spread, coverage=Coverage(images=4)),
            make_record(RecordLabel("cpu", "onnxruntime", "fp32", 1),
                        3.0, "e2e", "measured: test", coverage=Coverage(32, 10.7))]


@pytest.fixture()
def context(tmp_path):
    ap = lambda i: 0.1 * (i + 1) if i < GT_CLASSES else None  # noqa: E731
    value = {
        "run_dir": str(tmp_path), "embedded": True, "seeded": True, "generated": True,
        "checkpoint": {"path": "/x/fsaf_seeded_0.pth", "sha256": "0" * 64, "seeded": True},
        "dataset": {"annotation_file": "/x/a.json", "annotation_sha256": "0" * 64, "image_dir": None,
                    "num_images": 4, "total_images": 4, "generated": True},
        "canvas": CANVAS, "batch_sizes": [1, 2], "infer_batch_size": 1, "score_threshold": 0.05,
        "scorer": "pycocotools", "threads": 1, "perf_threads": 2,
        "backends": [{"name": "torch", "status": "ran", "reason": None, "model": "m.pth", "device": "cpu",
                      "precision": "fp32"}],
        "metrics": {"torch": _metrics(ap), "onnxruntime": _metrics(ap)},
        "results": {}, "perf_records": _records(),
        "parity": {"image_ids": [1, 2, 3], "canvas": CANVAS, "tolerances": parity_tolerances(), "pairs": [_pair()]},
        "stages": [{"name": "export", "key": "a" * 64, "seconds": 1.5}],
    }
    return ReportContext.from_json(value, "test context")


def _row_of(lines, start):
    return next(line for line in lines if line.startswith(start))


def test_the_context_is_typed_and_survives_its_json(context):
    again = ReportContext.from_json(context.to_json(), "round trip")
    assert again == context and again.dataset.num_images == 4 and again.backends[0].name == "torch"
    broken = dict(context.to_json(), canvas=["256", 384])
    with pytest.raises(ResultsError, match=r"report_inputs\.json: canvas\[0\]"):
        ReportContext.from_json(broken, "report_inputs.json")


def test_an_fp16_row_shows_the_share_it_is_judged_by_beside_its_verdict(context):
    tol = parity_tolerances()
    found = anomalies.find_anomalies(context.perf_records, context.parity)
    lines = report.parity_lines(context, found)
    row = [c.strip() for c in _row_of(lines, "| torch | fp16-emulated").strip("|").split("|")]
    assert row[2] == f"fp16: share >= {tol['fp16_om_min_match_rate']}"
    assert row[3] == f"fp16_agreement 0.990 >= {tol['fp16_om_min_match_rate']} (99 of 100)"
    assert row[4] == "yes"
    # the figures past the fp16 tolerances are marked as not judged, never bare beside "yes"
    assert row[6] == "130\\* (not judged)" and row[9] == "83.0%\\* (not judged)"
    kinds = [a.kind for a in found if a.subject == "torch vs fp16-emulated (om stand-in)"]
    assert kinds == [anomalies.PARITY_MAX_PAST_TOLERANCE, anomalies.PARITY_MATCH_RATE_BELOW_RULE]


def test_a_failing_fp16_row_and_an_fp32_row_state_their_figure_and_rule(context):
    tol = parity_tolerances()
    failing = _pair(within_tolerance=False, fp16_agreement=dict(_pair()["fp16_agreement"], rate=0.5, found=50))
    fp32 = _pair(other="onnxruntime (onnx-nms)", fp16_agreement=None, max_box_abs_diff=2e-4, max_score_abs_diff=3e-6,
                 counts_equal=True, labels_equal=True, match_rate=1.0)
    parity = dict(context.parity, pairs=[failing, fp32])
    lines = report.parity_lines(dataclasses.replace(context, parity=parity),
                                anomalies.parity_anomalies(parity))
    bad = [c.strip() for c in _row_of(lines, "| torch | fp16-emulated").strip("|").split("|")]
    assert bad[3].startswith(f"fp16_agreement 0.500 < {tol['fp16_om_min_match_rate']}") and bad[4] == "NO"
    assert "\\*" not in bad[6]  # a failing row's figures are no anomaly
    ok = [c.strip() for c in _row_of(lines, "| torch | onnxruntime").strip("|").split("|")]
    assert ok[3] == (f"max 0.0002 <= {tol['box_abs_tol_px']} px, 3e-06 <= {tol['score_abs_tol']}; "
                     "counts and labels equal") and ok[4] == "yes"


def test_pure_inference_below_end_to_end_and_a_wide_spread_are_flagged_beside_the_figure(context):
    found = anomalies.find_anomalies(context.perf_records, None, threads=1, perf_threads=2)
    by_kind = dict((a.kind, a) for a in found)
    assert set(by_kind) == {anomalies.PURE_BELOW_E2E, anomalies.WIDE_SPREAD}
    assert by_kind[anomalies.PURE_BELOW_E2E].subject == "torch pure_inference bs1 (cpu, fp32)"
    pure = by_kind[anomalies.PURE_BELOW_E2E].explanation
    assert "0.36 fps, below the same backend's end-to-end 2.35 fps" in pure
    assert "threads: 1 over the data set, 2 in the pure-inference timing" in pure
    assert "its 4 timed calls ran at (slowest to fastest) 0.2 to 5 fps" in by_kind[anomalies.WIDE_SPREAD].explanation
    lines = report_perf.measured_tables(context.perf_records, CANVAS, found)
    row = _row_of(lines, "| torch | fp32 | pure_inference |")
    assert "below e2e 2.35" in row and "spread 0.2-5 fps" in row
    assert _row_of(lines, "| onnxruntime | fp32 | e2e |").endswith("| - |")  # nothing to flag there
    # a pure figure above its e2e twin, with calls close together, is no anomaly
    quiet = [make_record(RecordLabel("cpu", "torch", "fp32", 1), 3.0, "pure_inference", "measured: test",
                         latencies_ms=latency_summary([0.33, 0.34]))] + list(context.perf_records[:1])
    assert anomalies.find_anomalies(quiet, None) == []
    # a record's own fps interval, where it has one, is the spread judged
    wide = dict(quiet[0], fps_interval={"low": 1.0, "high": 4.5, "kind": "bootstrap 95 %", "samples": 12})
    assert [a.flag for a in anomalies.wide_spreads([wide])] == ["spread 1-4.5 fps"]


def test_throughput_is_one_long_table_per_device_with_short_headers(context):
    emulated = make_record(RecordLabel("cpu", "fp16-emulated", "fp16", 1),
                           0.5, "e2e", "measured: test", coverage=Coverage(32, 64))
    lines = report_perf.perf_lines(list(context.perf_records) + [emulated], CANVAS)
    devices = [line for line in lines if line.startswith("Device ")]
    assert devices == ["Device cpu, input 256x384:", f"Device {emulated['device']}, input 256x384:"]
    headers = [line for line in lines if line.startswith("| backend |")]
    assert headers == ["| backend | precision | mode | batch | fps | images timed | flags |"] * 2
    assert _row_of(lines, "| torch | fp32 | e2e | 1 |").startswith("| torch | fp32 | e2e | 1 | 2.350 | 32 |")
    assert max(len(line.split("|")) - 2 for line in lines if line.startswith("|")) <= 11


def test_only_comparable_records_are_tabled_against_the_reference(context):
    lines = report_perf.perf_lines(context.perf_records, CANVAS)
    section = lines[lines.index("### Measured records against the reference cells"):]
    assert not any("not ratioed" in line for line in section)
    assert not any(line.startswith("| device |") for line in section)  # no comparable record: no table
    devices = ", ".join(performance_reference()["devices"])
    assert (f"None of the 3 measured records is comparable with a reference cell (the recipe's devices: {devices}): "
            "3 because device cpu has no column in the recipe's table.") in section
    npu = make_record(RecordLabel("310P", "aclruntime", "fp16", 1), 60.0, "inference", "measured: npu host")
    lines = report_perf.perf_lines(list(context.perf_records) + [npu], CANVAS)
    section = lines[lines.index("### Measured records against the reference cells"):]
    tabled = [line for line in section if line.startswith("| 310P |")]
    assert len(tabled) == 1 and "| aclruntime | fp16 | inference | 1 | 60.000 |" in tabled[0]
    assert any(line.startswith("The other 3 measured records are not comparable with a reference cell")
               for line in section)


def test_every_accuracy_verdict_states_its_figure(context):
    lines = report.accuracy_lines(context)
    verdicts = [line for line in lines if line.startswith("- ")]
    assert verdicts == [f"- torch: mAP 0.100: {report.NOT_APPLICABLE_EMBEDDED}",
                        f"- onnxruntime: mAP 0.100: {report.NOT_APPLICABLE_EMBEDDED}"]


def test_the_rendered_report_lists_the_anomalies_and_flags_them_in_place(context):
    text = report.render_report(context)
    listed = text.split("## Anomalies this run can see")[1].split("\n## ")[0]
    for kind in (anomalies.PURE_BELOW_E2E, anomalies.WIDE_SPREAD, anomalies.PARITY_MAX_PAST_TOLERANCE,
                 anomalies.PARITY_MATCH_RATE_BELOW_RULE):
        assert f"- **{kind}**: " in listed
    assert "| yes |" in text and "fp16_agreement 0.990" in text


# ----------------------------------------------------------------------------------------------
# plots


def test_per_class_plot_draws_only_classes_with_ground_truth_and_counts_the_others(context):
    pytest.importorskip("matplotlib", reason="the `plots` extra (matplotlib) is not installed on this stack")
    fig = report_plots.per_class_figure(context)
    ax = fig.axes[0]
    drawn = [t.get_text() for t in ax.get_xticklabels()]
    assert drawn == coco_class_names()[:GT_CLASSES]
    without = len(coco_class_names()) - GT_CLASSES
    assert ax.get_title() == report_plots.per_class_title(context.metrics)
    assert f"on the {GT_CLASSES} classes with ground truth" in ax.get_title()
    assert f"({without} of {len(coco_class_names())} classes have none and are not drawn)" in ax.get_title()
    # one bar per (class with ground truth, backend)
    assert len(ax.patches) == GT_CLASSES * len(context.metrics)


def test_fps_plot_keeps_its_legend_outside_the_axes_with_a_colour_per_series(context):
    pytest.importorskip("matplotlib", reason="the `plots` extra (matplotlib) is not installed on this stack")
    fig = report_plots.fps_figure(context)
    fig.canvas.draw()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    axes_box = ax.get_window_extent(renderer)
    assert legend_box.x0 >= axes_box.x1  # right of the axes, covering none of them
    figure_box = fig.bbox
    assert legend_box.x1 <= figure_box.x1 and legend_box.y0 >= figure_box.y0  # and inside the canvas
    from matplotlib.colors import to_rgba
    colours = [tuple(np.round(to_rgba(line.get_color()), 4)) for line in ax.get_lines()]
    series = len(performance_reference()["devices"]) + len(report_plots.measured_series(context.perf_records))
    assert len(colours) == series and len(set(colours)) == series
    assert f"input {CANVAS[0]}x{CANVAS[1]}" in ax.get_title()


def test_series_colours_stay_distinct_past_the_palettes():
    pytest.importorskip("matplotlib", reason="the `plots` extra (matplotlib) is not installed on this stack")
    assert len(set(report_plots.series_colours(40))) == 40


def test_labels_are_placed_without_overlap_even_on_stacked_boxes():
    anchors = [(100, 100, 140, 140)] * 12 + [(0, 0, 30, 30)] * 6
    sizes = [(90, 18)] * len(anchors)
    rects = report_plots.place_labels(anchors, sizes, (400, 600))
    assert all(rect is not None for rect in rects)
    for a, b in itertools.combinations(rects, 2):
        assert not report_plots._overlaps(a, b), (a, b)
    assert all(0 <= r[0] and 0 <= r[1] and r[2] <= 600 and r[3] <= 400 for r in rects)


def test_drawn_images_name_the_ground_truth_and_keep_labels_apart(tmp_path):
    import cv2
    image = np.zeros((128, 192, 3), np.uint8)
    image[:, :96] = (0, 200, 0)  # a green half: the ground truth must show on it too
    image[:, 96:] = (255, 255, 255)
    path = str(tmp_path / "img.png")
    cv2.imwrite(path, image)
    ground_truth = [{"category_id": 1, "bbox": [10, 10, 60, 60]}, {"category_id": 3, "bbox": [110, 20, 50, 50]}]
    detections = [{"category_id": 1, "bbox": [14 + 2 * k, 14 + 2 * k, 40, 40], "score": 0.9 - 0.01 * k}
                  for k in range(8)]  # stacked, so that their labels compete for one place
    made = report_plots.draw_detections(path, detections, ground_truth, str(tmp_path / "out.png"))
    assert made.detections_drawn == 8 and made.ground_truth_drawn == 2 and made.labels_not_placed == 0
    assert len(made.label_boxes) == 10
    for a, b in itertools.combinations(made.label_boxes, 2):
        assert not report_plots._overlaps(a, b), (a, b)
    drawn = cv2.imread(str(tmp_path / "out.png"))
    s = made.scale
    for x1, y1, _, _ in (gt["bbox"] for gt in ground_truth):  # the left edge: dark and light pixels on it
        edge = drawn[(y1 + 20) * s:(y1 + 40) * s, x1 * s].astype(int)
        assert (edge.sum(axis=1) < 150).any() and (edge.min(axis=1) > 230).any()


# ----------------------------------------------------------------------------------------------
# run directories


def test_run_directories_are_named_by_their_weights():
    fitted = default_run_dir(True, None, None, 1000)
    seeded = default_run_dir(True, None, None, 0)
    assert fitted != seeded and "fitted1000" in fitted and "seeded" in seeded
    assert default_run_dir(True, None, None, 200) != fitted
    assert default_run_dir(False, "/w/fsaf_r50.pth", "/data/coco", 0).endswith("fsaf_r50_coco")
    assert default_run_dir(False, None, "/data/coco", 1000).endswith("fitted1000_coco")
    assert default_run_dir(False, None, "/data/coco", 0).endswith("seeded_coco")


def test_fit_steps_zero_resolves_to_another_run_directory_than_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = dict(backends="torch", batch_sizes="1", environ={}, npu_present=False)
    default = resolve_config(ReproduceOptions(**common))
    seeded = resolve_config(ReproduceOptions(fit_steps=0, **common))
    assert default.fitted and not seeded.fitted
    assert default.run_dir != seeded.run_dir
    assert default.run_dir == str(tmp_path / default_run_dir(True, None, None, default.fit_steps))
