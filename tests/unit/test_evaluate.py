"""Scoring: the recipe's 12-line table, sanity checks that could fail, and the optional fast scorer."""
import contextlib
import io
import json
import os

import numpy as np
import pytest

from fsaf_repro import cli
from fsaf_repro.errors import ResultsError
from fsaf_repro.evaluate import (evaluate_results, faster_coco_eval_availability, format_per_class_table,
                                 format_recipe_table)
from fsaf_repro.spec import accuracy_reference, load_recipe_spec
from fsaf_repro.synthetic import make_synthetic_coco, make_synthetic_results

SEED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "seed",
                         load_recipe_spec()["recipe"]["seed_file"].split("/")[-1])


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    annotation_file, _ = make_synthetic_coco(str(tmp_path_factory.mktemp("coco")), num_images=40, seed=11,
                                             max_objects=6, write_images=False)
    with open(annotation_file) as handle:
        return annotation_file, json.load(handle)


def _gt_as_detections(data, shift=0.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": [a["bbox"][0] + shift * a["bbox"][2], a["bbox"][1], a["bbox"][2], a["bbox"][3]],
             "score": 1.0} for a in data["annotations"]]


def test_table_reproduces_the_recipe_wording():
    spec = load_recipe_spec()["evaluation"]
    table = format_recipe_table(accuracy_reference()["npu_stats"]["values"])
    assert table.split("\n") == spec["npu_table_lines"]["lines"]
    if os.path.isfile(SEED_FILE):  # the recipe itself, where the checkout has it
        with open(SEED_FILE, encoding="utf-8") as handle:
            recipe = handle.read()
        assert table in recipe.replace("\r\n", "\n")


def test_ground_truth_as_detections_scores_one(gt):
    metrics = evaluate_results(gt[0], _gt_as_detections(gt[1]))
    assert metrics["stats"][0] == pytest.approx(1.0, abs=1e-12)
    assert all(s == pytest.approx(1.0, abs=1e-12) or s == -1.0 for s in metrics["stats"])
    # the per-class mean of 1.0s over 1010 recall points may land one ulp short of 1
    assert all(row["ap"] is None or row["ap"] == pytest.approx(1.0, abs=1e-12) for row in metrics["per_class"])
    assert any(row["ap"] is not None for row in metrics["per_class"])


def test_shifted_boxes_score_strictly_lower(gt):
    exact = evaluate_results(gt[0], _gt_as_detections(gt[1]))["stats"][0]
    shifted = evaluate_results(gt[0], _gt_as_detections(gt[1], shift=0.15))["stats"][0]
    assert 0 < shifted < exact


def test_swapped_category_ids_are_caught(gt):
    dets = _gt_as_detections(gt[1])
    ids = sorted({d["category_id"] for d in dets})
    swap = {ids[i]: ids[i + 1] for i in range(0, len(ids) - 1, 2)}
    swap.update({v: k for k, v in swap.items()})
    swapped = [dict(d, category_id=swap.get(d["category_id"], d["category_id"])) for d in dets]
    assert evaluate_results(gt[0], swapped)["stats"][0] < 0.5
    # a category id the file does not have (label map off by one past 90) is an error, not a 0
    with pytest.raises(ResultsError, match="category id"):
        evaluate_results(gt[0], [dict(dets[0], category_id=91)])


def test_zero_detections_is_map_zero(gt):
    metrics = evaluate_results(gt[0], [])
    assert metrics["stats"][0] == 0.0 and metrics["num_detections"] == 0
    assert max(metrics["stats"]) <= 0.0


def test_record_carries_hash_and_image_count(gt):
    import hashlib
    ids = sorted(i["id"] for i in gt[1]["images"])[:10]
    dets = [d for d in _gt_as_detections(gt[1]) if d["image_id"] in ids]
    metrics = evaluate_results(gt[0], dets, image_ids=ids)
    with open(gt[0], "rb") as handle:
        assert metrics["annotation_sha256"] == hashlib.sha256(handle.read()).hexdigest()
    assert metrics["num_images"] == 10 and metrics["stats"][0] == pytest.approx(1.0, abs=1e-12)
    assert metrics["stat_names"] == accuracy_reference()["stat_names"]
    with pytest.raises(ResultsError, match="outside the scored image ids"):
        evaluate_results(gt[0], _gt_as_detections(gt[1]), image_ids=ids)


def test_summary_equals_pycocotools_own_summarize(gt):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    results = make_synthetic_results(gt[0], per_image=60, seed=3)
    ours = evaluate_results(gt[0], results)["stats"]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco = COCO(gt[0])
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.params.maxDets = [100, 300, 1000]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert ours == [float(s) for s in evaluator.stats]
    assert 0.1 < ours[0] < 0.9
    assert format_recipe_table(ours) in printed.getvalue()


def test_faster_coco_eval_matches_pycocotools(gt):
    ok, reason = faster_coco_eval_availability()
    if not ok:
        pytest.skip(reason)
    results = make_synthetic_results(gt[0], per_image=100, seed=4)
    slow = evaluate_results(gt[0], results, scorer="pycocotools")
    fast = evaluate_results(gt[0], results, scorer="faster-coco-eval")
    # identical up to the last bit of the interpolated precision (observed: <= 2.3e-16)
    assert np.max(np.abs(np.array(slow["stats"]) - np.array(fast["stats"]))) <= 1e-12
    assert format_recipe_table(slow["stats"]) == format_recipe_table(fast["stats"])
    assert np.array_equal(slow["_recall"], fast["_recall"])
    assert [r["ap"] for r in slow["per_class"]] == pytest.approx([r["ap"] for r in fast["per_class"]],
                                                                 abs=1e-12)
    assert evaluate_results(gt[0], [], scorer="faster-coco-eval")["stats"][0] == 0.0


def test_malformed_results_are_errors(gt, tmp_path):
    with pytest.raises(ResultsError, match="needs image_id"):
        evaluate_results(gt[0], [{"image_id": 1}])
    with pytest.raises(ResultsError, match="not in the annotation file"):
        evaluate_results(gt[0], [{"image_id": -5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ResultsError, match="bad.json is not valid JSON"):
        evaluate_results(gt[0], str(bad))
    with pytest.raises(ResultsError, match="unknown scorer"):
        evaluate_results(gt[0], [], scorer="cocoapi")


def test_per_class_table_lists_every_class(gt):
    metrics = evaluate_results(gt[0], _gt_as_detections(gt[1]))
    table = format_per_class_table(metrics["per_class"])
    for row in metrics["per_class"]:
        assert row["name"] in table
    assert "nan" in table or all(row["ap"] is not None for row in metrics["per_class"])


def test_evaluate_cli_rescores_a_results_json(gt, tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_gt_as_detections(gt[1], shift=0.15)))
    metrics_out = tmp_path / "metrics.json"
    assert cli.main(["evaluate", "--annotations", gt[0], "--results", str(results),
                     "--metrics-out", str(metrics_out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(metrics_out.read_text())
    assert format_recipe_table(record["stats"]) in printed
    assert record["num_images"] == 40 and len(record["annotation_sha256"]) == 64
    assert 0 < record["stats"][0] < 1


def _degenerate(dets, rows):
    """Copies of `dets` where row r gets width (r odd: height) w for each (r, w) of `rows`."""
    out = [dict(det, bbox=list(det["bbox"])) for det in dets]
    for row, size in rows:
        out[row]["bbox"][3 if row % 2 else 2] = size
    return out


@pytest.mark.parametrize("size", [-4.0, 0.0])
def test_a_box_without_area_is_an_error_naming_the_file_and_row(gt, tmp_path, capsys, size):
    dets = _degenerate(_gt_as_detections(gt[1]), [(3, size), (8, size)])
    results = tmp_path / "results.json"
    results.write_text(json.dumps(dets))
    with pytest.raises(ResultsError, match="results.json: detection 3 .*--drop-degenerate"):
        evaluate_results(gt[0], str(results))
    metrics_out = tmp_path / "metrics.json"
    argv = ["evaluate", "--annotations", gt[0], "--results", str(results), "--metrics-out", str(metrics_out)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "results.json: detection 3" in err and "Traceback" not in err
    assert not metrics_out.exists()


def test_drop_degenerate_scores_the_rest_and_counts_the_dropped(gt, tmp_path, capsys):
    dets = _gt_as_detections(gt[1])
    broken = _degenerate(dets, [(0, -1.0), (5, 0.0), (6, -0.5)])
    metrics = evaluate_results(gt[0], broken, drop_degenerate=True)
    kept = [det for row, det in enumerate(broken) if row not in (0, 5, 6)]
    reference = evaluate_results(gt[0], kept)
    assert metrics["degenerate_dropped"] == 3 and metrics["num_detections"] == len(dets) - 3
    assert metrics["stats"] == reference["stats"] and reference["degenerate_dropped"] == 0
    assert metrics["stats"][0] < 1.0  # the dropped rows were ground-truth matches: their objects are missed
    results, metrics_out = tmp_path / "results.json", tmp_path / "metrics.json"
    results.write_text(json.dumps(broken))
    assert cli.main(["evaluate", "--annotations", gt[0], "--results", str(results), "--metrics-out",
                     str(metrics_out), "--drop-degenerate", "--no-per-class"]) == 0
    assert "dropped 3 detection(s)" in capsys.readouterr().out
    record = json.loads(metrics_out.read_text())
    assert record["degenerate_dropped"] == 3 and record["stats"] == reference["stats"]


@pytest.mark.parametrize("fault, message", [
    (lambda data: data["images"].append(dict(data["images"][0], file_name="copy.jpg")), "image id {id0} appears twice"),
    (lambda data: data["annotations"].append(dict(data["annotations"][0])), "repeats annotation id"),
    (lambda data: data.pop("annotations"), "has no 'annotations' list"),
    (lambda data: data["annotations"][0].update(image_id=-1), "image_id -1, which 'images' does not list"),
    (lambda data: data["annotations"][0].pop("area"), "needs a finite number 'area'"),
])
def test_evaluate_checks_the_annotation_file_before_scoring(gt, tmp_path, capsys, fault, message):
    data = json.loads(json.dumps(gt[1]))
    fault(data)
    annotation_file = tmp_path / "instances_broken.json"
    annotation_file.write_text(json.dumps(data))
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_gt_as_detections(gt[1])))
    assert cli.main(["evaluate", "--annotations", str(annotation_file), "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert str(annotation_file) + ": " in err or f"annotation file {annotation_file}" in err
    assert message.format(id0=gt[1]["images"][0]["id"]) in err and "Traceback" not in err


def test_accuracy_gate_reads_the_recipe_claim():
    from fsaf_repro.evaluate import accuracy_gate
    from fsaf_repro.spec import accuracy_reference
    ref = accuracy_reference()
    minimum, pytorch, drop = ref["min_map"]["value"], ref["pytorch_map"]["value"], ref["max_drop_vs_pytorch"]["value"]
    assert accuracy_gate(ref["om_310_map"]["value"])[0] is True
    assert accuracy_gate(max(minimum, pytorch - drop) - 1e-3)[0] is False
    passed, line = accuracy_gate(pytorch)
    assert passed and line.startswith("PASS") and ref["min_map"]["source"] in line
