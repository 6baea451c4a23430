"""Shared test configuration: markers by directory, acceptance options, generated fixtures."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    # Every test under tests/unit is `unit`, under tests/acceptance `acceptance`: the marker follows
    # the directory, so a test cannot be forgotten by `pytest -m unit`. This hook sees every item of
    # the session (benchmarks/ too, when both folders are named): the folder is taken relative to
    # tests/, so neither a benchmark nor a checkout under a folder named `unit` is marked.
    tests_dir = os.path.join(ROOT, "tests")
    for item in items:
        relative = os.path.relpath(str(item.fspath), tests_dir).split(os.sep)
        if relative[0] == "unit":
            item.add_marker(pytest.mark.unit)
        elif relative[0] == "acceptance":
            item.add_marker(pytest.mark.acceptance)


# ------------------------------------------------------------------------------------------------
# Acceptance options. pytest reads `pytest_addoption` only from the root conftest and plugins, so the
# options live here; tests/acceptance/conftest.py resolves each one (option first, then its
# environment variable) and says in every skip which of them to provide.

ACCEPTANCE_OPTIONS = (
    # (option, environment variable, help)
    ("--checkpoint", "FSAF_CHECKPOINT", "the official fsaf_r50_fpn_1x_coco-94ccc51f.pth"),
    ("--coco-root", "FSAF_COCO_ROOT", "COCO folder holding val2017/ and annotations/instances_val2017.json"),
    ("--device", "FSAF_DEVICE", "device label of this host's records: 310, 310P, 310P_aoe, T4, cpu"),
    ("--device-id", "FSAF_DEVICE_ID", "NPU/GPU device id (default 0)"),
    ("--backend", "FSAF_BACKEND", "backend running the model: aclruntime, ais_bench, benchmark, onnxruntime, torch"),
    ("--ort-provider", "FSAF_ORT_PROVIDER", "ONNX Runtime execution provider (default CPUExecutionProvider)"),
    ("--batch-sizes", "FSAF_BATCH_SIZES", "comma-separated batch sizes (default: the recipe's 1,4,8,16,32,64)"),
    ("--soc-version", "FSAF_SOC_VERSION", "atc --soc_version, e.g. Ascend310P3 (default: read from npu-smi info)"),
    ("--run-dir", "FSAF_RUN_DIR", "folder for the run's artifacts: om, results, metrics, *perf*.json"),
    ("--reference-perf", "FSAF_REFERENCE_PERF", "perf records (json) measured on the other device of a gate"),
    ("--smoke-images", "FSAF_SMOKE_IMAGES", "run the labelled smoke accuracy check on the first N val2017 images"),
    ("--mmdet-config", "FSAF_MMDET_CONFIG", "mmdetection's configs/fsaf/fsaf_r50_fpn_1x_coco.py (default: mmdet's)"),
)


def pytest_addoption(parser):
    group = parser.getgroup("fsaf-acceptance", "fsaf-repro acceptance tests (each also read from its env var)")
    for option, env, text in ACCEPTANCE_OPTIONS:
        group.addoption(option, default=None, help=f"{text} [env {env}]")


# ------------------------------------------------------------------------------------------------
# Model fixtures: seeded weights written in the official checkpoint layout, so every test goes
# through the real loader; exports cached per session (an R50-FPN export takes seconds).



@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory):
    from fsaf_repro.checkpoint import write_seeded_checkpoint

    path = tmp_path_factory.mktemp("checkpoint") / "fsaf_seeded_0.pth"
    return str(write_seeded_checkpoint(str(path), seed=0))


# A short fit on generated shapes (fsaf_repro.train): enough steps to move every trained weight of the neck
# and head off its initialisation and make the scores confident, far from a detector that detects well
# (reproduce's 1000-step fit does that). About 20 s on 2 cores.
SHORT_FIT = {"steps": 60, "train_images": 16, "warmup_steps": 5}


@pytest.fixture(scope="session")
def fitted_checkpoint(tmp_path_factory):
    from fsaf_repro.train import fit_generated

    path = str(tmp_path_factory.mktemp("checkpoint") / "fsaf_fit_generated_short.pth")
    fit_generated(path, seed=0, data_seed=1000, progress=False, **SHORT_FIT)
    return path


@pytest.fixture(scope="session")
def seeded_detector(seeded_checkpoint):
    from fsaf_repro.checkpoint import load_detector

    return load_detector(seeded_checkpoint)


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory, seeded_checkpoint):
    """export_cache(flavour, height, width, batch_size=None, input_dtype="float32") -> .onnx path."""
    from fsaf_repro.export import export_onnx

    directory = tmp_path_factory.mktemp("onnx")
    made = {}

    def get(flavour, height, width, batch_size=None, input_dtype="float32"):
        key = (flavour, height, width, batch_size, input_dtype)
        if key not in made:
            name = "fsaf_{}_{}x{}_bs{}_{}.onnx".format(flavour, height, width, batch_size or "dyn", input_dtype)
            path = str(directory / name)
            export_onnx(seeded_checkpoint, path, flavour=flavour, height=height, width=width,
                        batch_size=batch_size, input_dtype=input_dtype)
            made[key] = path
        return made[key]

    return get
