"""The newcomer's command: `fsaf-repro reproduce` runs the whole pipeline on any host and writes one run
directory with report.md.

GENERATED: the session's tiny embedded-default run (tests/conftest.py `tiny_run`: seeded weights in the
official layout, generated COCO data, at a reduced size so the suite stays short, with FSAF_CHECKPOINT /
FSAF_COCO_ROOT hidden from it: the recipe's own numbers are the other acceptance tests' business). Its
report must say in its first lines that the weights are seeded and the mAP is not the recipe's claim.
The command itself is then run on a copy with the same settings: it must exit 0 and reuse every stage but
the report (which names the run's folder). The run lives in a temporary folder (its perf records must
not reach a gate); report.md is copied to <run dir>/reproduce-embedded/.
"""
import json
import os
import shutil

from fsaf_repro.cli import main as cli_main
from fsaf_repro.data import file_sha256
from fsaf_repro.evaluate import stat_names
from fsaf_repro.reproduce_options import declarations
from fsaf_repro.spec import load_recipe_spec, parity_tolerances

from tests.acceptance.conftest import ENV_OF
from tests.conftest import tiny_run_options

REPORT_HEAD_LINES = 5
# run_reproduce's options that are not command-line settings (declared so)
NOT_ON_THE_COMMAND_LINE = tuple(name for name, _, spec in declarations() if not spec.cli)


def command_line(options):
    """The `fsaf-repro reproduce` arguments that give run_reproduce(ReproduceOptions(**options))."""
    argv = []
    for name, value in sorted(options.items()):
        if name not in NOT_ON_THE_COMMAND_LINE:
            argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def test_reproduce_runs_the_whole_pipeline_on_the_embedded_default(tiny_run, tiny_run_copy, monkeypatch, run_dir):
    work, summary = tiny_run
    assert set(summary["stages"].values()) == {"ran"}
    with open(os.path.join(work, "report.md")) as handle:
        head = "".join(handle.readline() for _ in range(REPORT_HEAD_LINES))
    assert "seeded" in head and "not the recipe's claim" in head.lower(), head

    last = read_json(os.path.join(work, "logs", "last_run.json"))
    assert last["embedded"] is True and {"torch", "onnxruntime"} <= set(last["backends_run"])
    assert last["stages"] == summary["stages"]
    for backend in last["backends_run"]:
        metrics = read_json(os.path.join(work, f"metrics_{backend}.json"))
        assert metrics["annotation_sha256"] == file_sha256(metrics["annotation_file"])
        assert metrics["num_images"] == tiny_run_options()["num_images"] and metrics["stat_names"] == stat_names()
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

    # the command itself, with the same settings, on a copy of the run
    for option in ("--checkpoint", "--coco-root"):
        monkeypatch.delenv(ENV_OF[option], raising=False)
    assert cli_main(["reproduce", "--run-dir", tiny_run_copy] + command_line(tiny_run_options())) == 0
    again = read_json(os.path.join(tiny_run_copy, "logs", "last_run.json"))["stages"]
    assert set(again) == set(summary["stages"])
    assert [name for name, status in again.items() if status == "ran"] == ["report"], again
