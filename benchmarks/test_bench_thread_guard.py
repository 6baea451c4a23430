"""What torch 1.8.0's thread-count guard costs (fsaf_repro.torch_threads), as ratios from one run.

On torch 1.8.0 a rise of the intra-op thread count after a forward pass corrupts memory, so the guard
keeps the lower count. Every configuration runs in a fresh subprocess (a process's thread and oneDNN
state is what is measured), which times one detector forward (seeded weights, generated input) after
a warm-up and reports its best loop; that time, not the subprocess's wall time that pytest-benchmark
records, is the groups' figure:
- `thread_guard_forward`: `healthy_2t` (2 threads, oneDNN on: an unaffected process, the baseline)
  vs `clamped_1t` (1 thread, oneDNN on: what the guard leaves after a rise from 1 to 2, its cost) and
  `onednn_off_2t` (2 threads, oneDNN off: the other guard the issue proposed, rejected);
- `thread_guard_calibration`: the seeded-weights calibration as the guard runs it (one thread, oneDNN
  off, `calibration_guarded`) vs with oneDNN on (`calibration_onednn`).
Ratios are seconds over the baseline's (> 1: slower). `--bench-isa AVX2` (or FSAF_BENCH_ISA, sets
DNNL_MAX_CPU_ISA) times the kernels of a CPU without AVX-512 on any x86 CPU. Meant for the recipe's
stack (torch 1.8.0, .venv37); on another torch it times the same configurations.
"""
import json
import os
import subprocess
import sys

import pytest

from ratios import RatioGroup

from fsaf_repro.torch_threads import cpu_model

SOURCE = "docs/torch-1.8.0-thread-crash.md: the cost of the thread-count guard (no goal: a cost to know)"
FORWARD = RatioGroup("thread_guard_forward", baseline="healthy_2t", candidates={"clamped_1t": None,
                                                                                 "onednn_off_2t": None},
                     source=SOURCE, figure="forward_seconds")
CALIBRATION = RatioGroup("thread_guard_calibration", baseline="calibration_onednn",
                         candidates={"calibration_guarded": None}, source=SOURCE, figure="calibration_seconds")
FORWARD_CONFIGS = {"healthy_2t": (2, "on"), "clamped_1t": (1, "on"), "onednn_off_2t": (2, "off")}
SIZES = {
    "reduced": {"height": 320, "width": 480, "loops": 3, "rounds": 2},
    "full": {"height": 320, "width": 480, "loops": 5, "rounds": 3},
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FORWARD_CHILD = """
import json, sys, time, torch
from fsaf_repro.model import build_detector
threads, onednn, height, width, loops = int(sys.argv[1]), sys.argv[2] == "on", int(sys.argv[3]), int(sys.argv[4]), \\
    int(sys.argv[5])
torch.manual_seed(0)
model, x = build_detector(), torch.randn(1, 3, height, width)
torch.set_num_threads(threads)
torch.backends.mkldnn.enabled = onednn
times = []
with torch.no_grad():
    model(x)
    for _ in range(loops):
        start = time.perf_counter(); model(x); times.append(time.perf_counter() - start)
print(json.dumps({"best_s": min(times), "torch": torch.__version__}))
"""

CALIBRATION_CHILD = """
import json, sys, time, torch
from fsaf_repro import checkpoint
guarded = sys.argv[1] == "guarded"
if not guarded:  # the calibration as it was: one thread, oneDNN on
    import contextlib
    @contextlib.contextmanager
    def one_thread(count):
        previous = torch.get_num_threads(); torch.set_num_threads(count)
        try:
            yield count
        finally:
            torch.set_num_threads(previous)
    checkpoint.temporarily_intra_op_threads = one_thread
start = time.perf_counter()
checkpoint.seeded_state_dict(seed=0)
print(json.dumps({"best_s": time.perf_counter() - start, "torch": torch.__version__}))
"""


def child_env(isa):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    if isa:
        env["DNNL_MAX_CPU_ISA"] = isa
    return env


def run_child(code, args, env, reports):
    out = subprocess.run([sys.executable, "-c", code] + [str(a) for a in args], cwd=ROOT, env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    reports.append(json.loads(out.strip().splitlines()[-1]))


def describe(bench_options):
    return {"cpu": cpu_model(), "dnnl_max_cpu_isa": bench_options["--bench-isa"] or "(unset: the CPU's best)"}


@pytest.mark.parametrize("config", FORWARD.roles)
def test_forward(benchmark, ratio_book, bench_scale, bench_options, config):
    size = SIZES[bench_scale]
    threads, onednn = FORWARD_CONFIGS[config]
    reports = []
    ratio_book.join(benchmark, FORWARD, config)
    benchmark.pedantic(run_child, args=(FORWARD_CHILD, [threads, onednn, size["height"], size["width"], size["loops"]],
                                        child_env(bench_options["--bench-isa"]), reports),
                       rounds=size["rounds"], iterations=1)
    benchmark.extra_info.update({"forward_seconds": min(r["best_s"] for r in reports), "threads": threads,
                                 "onednn": onednn, "torch": reports[0]["torch"], "scale": bench_scale,
                                 **describe(bench_options), **size})


@pytest.mark.parametrize("config", CALIBRATION.roles)
def test_calibration(benchmark, ratio_book, bench_scale, bench_options, config):
    reports = []
    ratio_book.join(benchmark, CALIBRATION, config)
    benchmark.pedantic(run_child, args=(CALIBRATION_CHILD, [config.split("_")[1]],
                                        child_env(bench_options["--bench-isa"]), reports),
                       rounds=SIZES[bench_scale]["rounds"], iterations=1)
    benchmark.extra_info.update({"calibration_seconds": min(r["best_s"] for r in reports),
                                 "torch": reports[0]["torch"], "scale": bench_scale, **describe(bench_options)})
