"""The benchmark suite's configuration: the `bench` marker, sizes, shared model fixtures and the ratio
table (benchmarks/ratios.py) in the JSON and the terminal summary.

    pytest benchmarks/ --benchmark-json bench.json          # reduced sizes: a few minutes on 2 cores
    pytest benchmarks/ --bench-full                          # the recipe's sizes (or FSAF_BENCH_FULL=1)

pyproject.toml's testpaths is `tests`, so a run from the repository root (`pytest -m unit`, `-m "unit
or acceptance"`) never collects this folder, and every test here carries only the `bench` marker, so
naming the folder with `-m unit` deselects them all.
"""
import os

import pytest

from ratios import RatioBook

HERE = os.path.dirname(os.path.abspath(__file__))
RATIO_BOOK = pytest.StashKey()

# (option, environment variable, default, help); the option wins over the variable.
OPTIONS = (
    ("--bench-full", "FSAF_BENCH_FULL", False,
     "the recipe's sizes (800x1216 canvases, 5000 images for scoring and memory) instead of the reduced ones"),
    ("--bench-isa", "FSAF_BENCH_ISA", None,
     "DNNL_MAX_CPU_ISA for test_bench_thread_guard's subprocesses, e.g. AVX2 (a CPU without AVX-512)"),
    ("--bench-checkpoint", "FSAF_BENCH_CHECKPOINT", None,
     "checkpoint (official layout) for test_bench_fp16_emulation; default: seeded weights (seed 0)"),
    ("--bench-trust-checkpoint", "FSAF_BENCH_TRUST_CHECKPOINT", False,
     "load --bench-checkpoint with the full unpickler (trusted files only)"),
    ("--bench-images", "FSAF_BENCH_IMAGES", None,
     "a COCO-format root (val2017/, annotations/instances_val2017.json) whose images test_bench_fp16_emulation "
     "runs on, e.g. a run's inputs/coco (for fitted weights); default: generated network inputs"),
)
TRUE_WORDS = ("1", "true", "yes", "on")


def pytest_addoption(parser):
    group = parser.getgroup("fsaf-bench", "fsaf-repro benchmarks (each also read from its env var)")
    for option, env, default, text in OPTIONS:
        if default is False:
            group.addoption(option, action="store_true", default=None, help=f"{text} [env {env}=1]")
        else:
            group.addoption(option, default=None, help=f"{text} [env {env}]")


def bench_option(config, option):
    """The value of one of OPTIONS: the command line first, then its environment variable."""
    for name, env, default, _ in OPTIONS:
        if name == option:
            given = config.getoption(name)
            if given is not None:
                return given
            value = os.environ.get(env)
            if value is None or value == "":
                return default
            return value.strip().lower() in TRUE_WORDS if default is False else value
    raise KeyError(option)


def pytest_configure(config):
    config.stash[RATIO_BOOK] = RatioBook()


def pytest_collection_modifyitems(config, items):
    # Everything in this folder is a benchmark, and only a benchmark: the marker follows the folder
    # (relative to it, so a checkout under a folder named like a marker changes nothing).
    for item in items:
        relative = os.path.relpath(str(item.fspath), HERE)
        if not relative.startswith(os.pardir):
            item.add_marker(pytest.mark.bench)


def pytest_runtest_teardown(item):
    # ratios of the groups whose members have all run are in extra_info as soon as they can be
    item.config.stash[RATIO_BOOK].settle()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fsaf_ratios"] = config.stash[RATIO_BOOK].settle()


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter, config):
    lines = config.stash[RATIO_BOOK].summary_lines()
    if lines:
        terminalreporter.write_sep("-", "fsaf-repro ratios (candidate over baseline, goal, source)")
        for line in lines:
            terminalreporter.write_line(line)


# ------------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="session")
def ratio_book(request):
    return request.config.stash[RATIO_BOOK]


@pytest.fixture(scope="session")
def bench_scale(request):
    """"full" (the recipe's sizes) or "reduced"; each module holds its sizes per scale."""
    return "full" if bench_option(request.config, "--bench-full") else "reduced"


@pytest.fixture(scope="session")
def bench_options(request):
    """{"--bench-isa": ..., ...}: every one of OPTIONS as resolved from the command line or environment."""
    return {option: bench_option(request.config, option) for option, _, _, _ in OPTIONS}


@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory):
    """Seeded weights in the official checkpoint layout (seed 0), through the real writer."""
    from fsaf_repro.checkpoint import write_seeded_checkpoint

    path = tmp_path_factory.mktemp("checkpoint") / "fsaf_seeded_0.pth"
    return str(write_seeded_checkpoint(str(path), seed=0))


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory, seeded_checkpoint):
    """onnx_export(flavour, height, width, batch_size=None, input_dtype="float32") -> .onnx path of the
    seeded checkpoint, exported once per session."""
    from fsaf_repro.export import export_onnx

    directory = tmp_path_factory.mktemp("onnx")
    made = {}

    def get(flavour, height, width, batch_size=None, input_dtype="float32"):
        key = (flavour, height, width, batch_size, input_dtype)
        if key not in made:
            path = str(directory / f"fsaf_{flavour}_{height}x{width}_bs{batch_size or 'dyn'}_{input_dtype}.onnx")
            export_onnx(seeded_checkpoint, path, flavour=flavour, height=height, width=width,
                        batch_size=batch_size, input_dtype=input_dtype)
            made[key] = path
        return made[key]

    return get
