"""Recipe section 6: bbox mAP on COCO val2017, and the pipeline that produces it.

- The recipe's claim (official weights, full val2017, each batch size): AP@[.5:.95] >= accuracy.min_map
  and within accuracy.max_drop_vs_pytorch of accuracy.pytorch_map. The set must be the whole val2017:
  its annotation file must list the spec's 5000 images and every one must be on disk; the metrics record
  keeps the annotation sha256 and the image count. This run also measures the full-dataset throughput and
  writes the perf records (`perf_<device>_<backend>_bs<N>.json`) into the run directory.
- A smoke run (FSAF_SMOKE_IMAGES=N, N >= accuracy.smoke.num_images): the first N val2017 images, checked
  against accuracy.smoke.min_map, labelled smoke in its id and metrics, never the recipe's claim.
- On any host: the same pipeline (fsaf_repro.synthetic -> data -> runner with the onnxruntime backend ->
  postprocess -> evaluate) over generated COCO data with seeded weights at a reduced canvas, and the
  scorer's sanity claim that the ground truth given back as detections scores AP 1.0.
"""
import os

import pytest

from fsaf_repro.backends import backend_availability, create_backend
from fsaf_repro.data import CocoImageSet, file_sha256, load_annotation_json
from fsaf_repro.evaluate import evaluate_results, metrics_record, stat_names
from fsaf_repro.runner import infer_dataset
from fsaf_repro.spec import accuracy_reference, load_recipe_spec
from fsaf_repro.synthetic import make_synthetic_coco

from tests.acceptance.conftest import ENV_OF, val2017_paths, verified_full_val2017, write_json
from tests.support import UNIT_INPUT_HW

GENERATED_IMAGES = 6
GENERATED_BATCH = 4  # 6 images in static batches of 4: the last batch is padded by the runner


def test_map_on_full_val2017(require, batch_size, request):
    """The recipe's accuracy claim for the official weights on the whole val2017."""
    require("--checkpoint", "--coco-root")
    full_val2017 = request.getfixturevalue("full_val2017")
    dataset_run = request.getfixturevalue("dataset_run")
    accuracy = accuracy_reference()
    val2017 = load_recipe_spec()["acceptance"]["val2017"]
    run = dataset_run(full_val2017, "official", batch_size, "val2017")
    metrics = run["metrics"]
    assert metrics["num_images"] == val2017["num_images"], "a partial set cannot stand for val2017"
    assert metrics["annotation_sha256"] == full_val2017.annotation_sha256
    assert run["summary"]["skipped"] == []
    ap = metrics["stats"][0]
    assert ap >= accuracy["min_map"]["value"], "mAP {:.4f} < {} ({})".format(
        ap, accuracy["min_map"]["value"], accuracy["min_map"]["source"])
    assert abs(ap - accuracy["pytorch_map"]["value"]) <= accuracy["max_drop_vs_pytorch"]["value"] + 1e-9, (
        "mAP {:.4f} is more than {} from the PyTorch {} ({})".format(
            ap, accuracy["max_drop_vs_pytorch"]["value"], accuracy["pytorch_map"]["value"],
            accuracy["max_drop_vs_pytorch"]["source"]))
    assert os.path.isfile(run["perf_path"])


def test_smoke_map_on_first_val2017_images(settings, require, request):
    """SMOKE, not the recipe's claim: the first N val2017 images against accuracy.smoke.min_map."""
    smoke = accuracy_reference()["smoke"]
    require("--smoke-images", "--checkpoint", "--coco-root")
    coco_root = request.getfixturevalue("coco_root")
    request.getfixturevalue("official_checkpoint")
    dataset_run = request.getfixturevalue("dataset_run")
    if settings.smoke_images < smoke["num_images"]:
        pytest.fail("{}={}: the smoke expected value ({}) is defined for at least {} images".format(
            ENV_OF["--smoke-images"], settings.smoke_images, smoke["min_map"]["value"], smoke["num_images"]))
    annotation_file, image_dir = val2017_paths(coco_root)
    image_set = CocoImageSet(annotation_file, image_dir, limit=settings.smoke_images)
    val2017 = load_recipe_spec()["acceptance"]["val2017"]
    assert image_set.total_images == val2017["num_images"], f"{annotation_file} is not val2017's annotation file"
    run = dataset_run(image_set, "official", settings.batch_sizes[0], "smoke")
    metrics = run["metrics"]
    assert metrics["label"] == "smoke" and run["perf_path"] is None
    assert metrics["num_images"] == settings.smoke_images
    assert metrics["stats"][0] >= smoke["min_map"]["value"], "smoke mAP {:.4f} < {} ({})".format(
        metrics["stats"][0], smoke["min_map"]["value"], smoke["min_map"]["source"])


def test_a_partial_or_generated_set_cannot_pass_for_val2017(tmp_path):
    """The check behind the accuracy claim refuses a set that lists fewer images or lacks some files."""
    root = str(tmp_path / "coco")
    annotation_file, image_dir = make_synthetic_coco(root, num_images=3, seed=5)
    os.remove(os.path.join(image_dir, sorted(os.listdir(image_dir))[0]))
    expected = load_recipe_spec()["acceptance"]["val2017"]["num_images"]
    image_set, problems = verified_full_val2017(root)
    assert image_set is not None and len(problems) == 2, problems
    assert f"lists 3 images, val2017 has {expected}" in problems[0]
    assert "1 of the listed images are not in" in problems[1]
    assert verified_full_val2017(str(tmp_path / "absent"))[1]


@pytest.fixture(scope="module")
def generated_coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("generated_coco"))
    return make_synthetic_coco(root, num_images=GENERATED_IMAGES, seed=3)


def test_generated_pipeline_produces_a_metrics_record(generated_coco, seeded_checkpoint, onnx_export, run_dir):
    """GENERATED data and seeded weights: synthetic COCO -> recipe transform -> onnxruntime (onnx-nms, static
    batch) through the streaming runner -> COCO results -> pycocotools; the metrics record names the
    annotation sha256 and the image count. Its mAP is not a claim (the weights are not trained)."""
    availability = backend_availability("onnxruntime")
    if not availability.ok:
        pytest.skip("onnxruntime unavailable: " + availability.reason)
    annotation_file, image_dir = generated_coco
    height, width = UNIT_INPUT_HW
    image_set = CocoImageSet(annotation_file, image_dir, height=height, width=width)
    model, _ = onnx_export(seeded_checkpoint, "generated", "onnx-nms", height, width, GENERATED_BATCH)
    out_dir = os.path.join(run_dir, "generated-pipeline")
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    results_path = os.path.join(out_dir, "results.json")
    with create_backend("onnxruntime") as backend:
        backend.load(model)
        assert backend.batch_size == GENERATED_BATCH
        summary = infer_dataset(image_set, backend, results_path, progress=False, backend_name="onnxruntime",
                                model_path=model)
    assert summary["images"] == GENERATED_IMAGES and summary["skipped"] == []
    assert summary["detections"] > 0, "seeded weights detect something on generated images"
    metrics = metrics_record(evaluate_results(annotation_file, results_path))
    metrics.update(label="generated", claim="generated data and seeded weights: not the recipe's claim")
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    assert metrics["annotation_sha256"] == file_sha256(annotation_file)
    assert metrics["num_images"] == GENERATED_IMAGES
    assert metrics["num_detections"] == summary["detections"]
    assert metrics["stat_names"] == stat_names() and len(metrics["stats"]) == len(stat_names())
    assert all(-1.0 <= value <= 1.0 for value in metrics["stats"])
    ground_truth, _ = load_annotation_json(annotation_file)
    assert set(image_set.image_ids) == set(image["id"] for image in ground_truth["images"])


def test_ground_truth_as_detections_scores_ap_one(generated_coco):
    """The scorer's sanity claim: the generated ground truth given back as detections (score 1) scores the
    spec's acceptance.ground_truth_ap through the same pycocotools path as the runs above."""
    annotation_file, _ = generated_coco
    data, _ = load_annotation_json(annotation_file)
    detections = [{"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": list(ann["bbox"]),
                   "score": 1.0} for ann in data["annotations"]]
    assert detections
    metrics = evaluate_results(annotation_file, detections)
    expected = load_recipe_spec()["acceptance"]["ground_truth_ap"]["value"]
    assert metrics["stats"][0] == pytest.approx(expected)
    assert metrics["num_images"] == len(data["images"])
