"""Shared test configuration: markers by directory, acceptance options, generated fixtures."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------
# Tiers (README, "Tests"). `pytest -m unit` is every unit test; `--fast` leaves out the tests
# marked `slow`, which is the fast tier a contributor runs on every change. A test is `slow` when it
# asks for one of these fixtures (the marker follows from what the test needs, so it cannot be
# forgotten) or carries the marker itself (a test that exports at 800x1216 or trains by its own means).
HEAVY_FIXTURES = {
    "tiny_run": "a whole `reproduce` run (built once per session)",
    "tiny_run_copy": "a copy of the session's `reproduce` run, re-run",
    "fitted_checkpoint": "a fit on generated shapes",
}
# A test of the fast tier that takes longer than this is listed at the end of a --fast session, so
# that the test that slows the tier is seen on the change that adds it (a listing, not a failure:
# timings vary with the host).
FAST_TEST_BUDGET_S = 5.0


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
        if HEAVY_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if config.getoption("--fast"):
        kept = [item for item in items if item.get_closest_marker("slow") is None]
        deselected = [item for item in items if item.get_closest_marker("slow") is not None]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = kept


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not config.getoption("--fast"):
        return
    # the reports pytest keeps (the ones --durations reads); setup counts too: a session fixture's cost
    # lands on the first test that asks for it
    totals = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call"):
                totals[report.nodeid] = totals.get(report.nodeid, 0.0) + report.duration
    over = sorted(((s, n) for n, s in totals.items() if s > FAST_TEST_BUDGET_S), reverse=True)
    if over:
        terminalreporter.section(f"fast tier: tests over {FAST_TEST_BUDGET_S:.0f} s "
                                 "(mark them slow or make them cheaper)")
        for seconds, nodeid in over:
            terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")


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
    parser.addoption("--fast", action="store_true", default=False,
                     help="the fast tier: leave out the tests marked slow (a whole reproduce run, a fit, an "
                          "export at 800x1216); see README, 'Tests'")
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
    from fsaf_repro.fit_progress import FitReporting
    from fsaf_repro.train import fit_generated

    path = str(tmp_path_factory.mktemp("checkpoint") / "fsaf_fit_generated_short.pth")
    fit_generated(path, seed=0, data_seed=1000, reporting=FitReporting(bar=False), **SHORT_FIT)
    return path


# ------------------------------------------------------------------------------------------------
# The session's one real `reproduce` run: the embedded default at a tiny size (seeded weights, 6
# generated images at 128x192, the default backends), built once and shared by every test that needs a
# real run: reproduce's artifacts and report, the end-to-end reuse and tamper checks, the backend
# plugin, the acceptance run. A test that re-runs or changes it works on a copy (tiny_run_copy); the
# shared run is checked unchanged when the session ends.


def tiny_run_options(**changes):
    """run_reproduce's keyword arguments for the session's tiny run, with `changes` applied."""
    from fsaf_repro.reproduce_options import DEFAULT_BACKENDS

    options = dict(height=128, width=192, num_images=6, batch_sizes="1,2", parity_images=2, perf_loops=1,
                   perf_warmup=0, perf_min_seconds=0, threads=1, perf_threads=1, echo=False, environ={}, fit_steps=0,
                   backends=",".join(DEFAULT_BACKENDS))
    options.update(changes)
    return options


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run directory, summary) of the session's tiny embedded-default run. Read it; never change it."""
    import shutil

    from tests.support import tree_state

    from fsaf_repro.reproduce import run_reproduce
    from fsaf_repro.reproduce_options import ReproduceOptions

    base = tmp_path_factory.mktemp("tiny_run")
    run_dir = str(base / "run")
    summary = run_reproduce(ReproduceOptions(run_dir=run_dir, **tiny_run_options()))
    before = tree_state(run_dir)
    yield run_dir, summary
    changed = sorted(set(before.items()) ^ set(tree_state(run_dir).items()))
    # The run holds a checkpoint and three ONNX models (about 560 MB): gone with the session.
    shutil.rmtree(str(base), ignore_errors=True)
    assert not changed, f"a test changed the session's shared tiny run (use tiny_run_copy): {changed[:3]}"


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A copy of the session's tiny run for a test that re-runs or changes it: the big model files are
    hard links (the package replaces them atomically, never in place), the rest are copies."""
    import shutil

    from tests.support import link_or_copy

    target = str(tmp_path / "run_copy")
    shutil.copytree(tiny_run[0], target, copy_function=link_or_copy)
    return target


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
