"""`reproduce --dry-run`: the plan, each stage's key, whether it would run or be reused and why; nothing runs.

One real run on given inputs (the session's tiny run's checkpoint and generated set, copied, given as
--checkpoint and --coco-root), then dry runs against it: unchanged, everything is reused; a changed
image, score threshold or checkpoint names what changed at the stage that reads it.
"""
import os
import shutil

import pytest

from fsaf_repro.cli import main
from fsaf_repro.reproduce import run_reproduce
from fsaf_repro.reproduce_options import ReproduceOptions
from tests.support import tree_state

BACKEND = "onnxruntime"


@pytest.fixture(scope="module")
def given_run(tiny_run, tmp_path_factory):
    """(options of a run on a given checkpoint and COCO root, after one real run of them)."""
    base = tmp_path_factory.mktemp("dry_run")
    checkpoint = str(base / "given.pth")
    shutil.copyfile(os.path.join(tiny_run[0], "inputs", "fsaf_seeded_0.pth"), checkpoint)
    coco = str(base / "coco")
    shutil.copytree(os.path.join(tiny_run[0], "inputs", "coco"), coco)
    options = dict(run_dir=str(base / "run"), checkpoint=checkpoint, coco_root=coco, backends=BACKEND, height=128,
                   width=192, batch_sizes="1", parity_images=2, perf_loops=1, perf_warmup=0, threads=1,
                   perf_threads=1, echo=False, environ={})
    summary = run_reproduce(ReproduceOptions(**options))
    assert not summary["failed"] and summary["stages"][f"evaluate:{BACKEND}"] == "ran"
    return options


def _dry(options, **changes):
    summary = run_reproduce(ReproduceOptions(**dict(options, dry_run=True, **changes)))
    assert summary["dry_run"] is True
    return dict((entry["name"], entry) for entry in summary["plan"])


def test_an_unchanged_run_would_reuse_every_stage_and_nothing_runs(given_run):
    before = tree_state(given_run["run_dir"], skip_top=("logs",))
    planned = _dry(given_run)
    assert {entry["action"] for entry in planned.values()} <= {"reuse", "skip"}
    assert planned["report"]["action"] == "reuse" and len(planned["report"]["key"]) == 64
    assert tree_state(given_run["run_dir"], skip_top=("logs",)) == before


def test_a_changed_threshold_names_the_parameter(given_run, monkeypatch, capsys):
    planned = _dry(given_run, score_threshold=0.3)
    assert planned[f"results:{BACKEND}"]["why"] == "changed: param score_threshold"
    assert planned[f"evaluate:{BACKEND}"]["why"] == f"upstream results:{BACKEND} runs"
    assert planned[f"infer:{BACKEND}"]["action"] == "reuse" and planned["export"]["action"] == "reuse"
    # the command line prints the same plan, one line per stage
    monkeypatch.delenv("FSAF_CHECKPOINT", raising=False)
    monkeypatch.delenv("FSAF_COCO_ROOT", raising=False)
    argv = ["reproduce", "--dry-run", "--score-threshold", "0.3"]
    for name, value in given_run.items():
        if name not in ("echo", "environ"):
            argv += ["--" + name.replace("_", "-"), str(value)]
    assert main(argv) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if f" results:{BACKEND} " in line)
    assert "run" in line and "changed: param score_threshold" in line


def test_a_changed_image_names_the_images_input(given_run):
    image_dir = os.path.join(given_run["coco_root"], "val2017")
    image = os.path.join(image_dir, sorted(os.listdir(image_dir))[-1])
    with open(image, "rb") as handle:
        original = handle.read()
    try:
        with open(image, "wb") as handle:
            handle.write(original[:-1] + bytes([original[-1] ^ 1]))
        planned = _dry(given_run)
    finally:
        with open(image, "wb") as handle:
            handle.write(original)
    assert planned[f"infer:{BACKEND}"]["why"] == "changed: input images"
    assert planned["export"]["action"] == "reuse" and planned["data"]["action"] == "reuse"


def test_a_changed_checkpoint_names_the_checkpoint_input(given_run, tmp_path):
    changed = str(tmp_path / "changed.pth")
    with open(given_run["checkpoint"], "rb") as handle:
        payload = handle.read()
    with open(changed, "wb") as handle:
        handle.write(payload + b"\0")  # another file's bytes: the stages that read it would run again
    planned = _dry(given_run, checkpoint=changed)
    assert planned["export"]["why"] == "changed: input checkpoint"
    assert planned[f"infer:{BACKEND}"]["why"] == "upstream export runs"
    assert planned["data"]["action"] == "reuse"
