"""The newcomer's command: `fsaf-repro reproduce` runs the whole pipeline on any host and writes one run
directory with report.md.

GENERATED: run here on the embedded default (seeded weights in the official layout, generated COCO data)
at a reduced size so the suite stays short; FSAF_CHECKPOINT / FSAF_COCO_ROOT are hidden from it, because
the recipe's own numbers are the other acceptance tests' business. Its report must say in its first lines
that the weights are seeded and the mAP is not the recipe's claim. The run happens in a temporary folder
(its perf records must not reach a gate); report.md is copied to <run dir>/reproduce-embedded/.
"""
import json
import os
import shutil

from fsaf_repro.cli import main as cli_main
from fsaf_repro.data import file_sha256
from fsaf_repro.evaluate import stat_names
from fsaf_repro.spec import load_recipe_spec, parity_tolerances

from tests.acceptance.conftest import ENV_OF

TINY_ARGS = ["--height", "128", "--width", "192", "--num-images", "6", "--batch-sizes", "1,2",
             "--parity-images", "2", "--perf-loops", "1", "--perf-warmup", "0", "--backends", "torch,onnxruntime",
             "--fit-steps", "0"]
REPORT_HEAD_LINES = 5


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def test_reproduce_runs_the_whole_pipeline_on_the_embedded_default(tmp_path, monkeypatch, run_dir):
    for option in ("--checkpoint", "--coco-root"):
        monkeypatch.delenv(ENV_OF[option], raising=False)
    work = str(tmp_path / "reproduce")
    assert cli_main(["reproduce", "--run-dir", work] + TINY_ARGS) == 0

    with open(os.path.join(work, "report.md")) as handle:
        head = "".join(handle.readline() for _ in range(REPORT_HEAD_LINES))
    assert "seeded" in head and "not the recipe's claim" in head.lower(), head

    last = read_json(os.path.join(work, "logs", "last_run.json"))
    assert last["embedded"] is True and last["backends_run"] == ["torch", "onnxruntime"]
    assert set(last["stages"].values()) == {"ran"}
    for backend in last["backends_run"]:
        metrics = read_json(os.path.join(work, f"metrics_{backend}.json"))
        assert metrics["annotation_sha256"] == file_sha256(metrics["annotation_file"])
        assert metrics["num_images"] == 6 and metrics["stat_names"] == stat_names()
        assert metrics["num_detections"] > 0

    parity = read_json(os.path.join(work, "parity.json"))
    tolerances = parity_tolerances()
    assert parity["pairs"], "the stage-parity table is empty"
    for pair in parity["pairs"]:
        assert pair["detections_ref"] > 0 and pair["within_tolerance"], pair
        assert pair["max_box_abs_diff"] <= tolerances["box_abs_tol_px"]
        assert pair["max_score_abs_diff"] <= tolerances["score_abs_tol"]

    checkpoint = read_json(os.path.join(work, "report_inputs.json"))["checkpoint"]
    assert checkpoint["seeded"] is True
    assert not checkpoint["sha256"].startswith(load_recipe_spec()["checkpoint"]["sha256_prefix"])

    kept = os.path.join(run_dir, "reproduce-embedded")
    if not os.path.isdir(kept):
        os.makedirs(kept)
    shutil.copy2(os.path.join(work, "report.md"), kept)
