"""What torch 1.8.0's thread-count guard costs (fsaf_repro.torch_threads), as ratios from one run.

On torch 1.8.0 a rise of the intra-op thread count after a forward pass corrupts memory, so the guard
keeps the lower count. This times one detector forward (seeded weights, generated input) in fresh
subprocesses, each configuration alternating with the others over the repetitions:
- `healthy_2t`: 2 threads, oneDNN on: what an unaffected process runs (the baseline);
- `clamped_1t`: 1 thread, oneDNN on: what the guard leaves after a rise from 1 to 2 (its cost);
- `onednn_off_2t`: 2 threads, oneDNN off: the other guard the issue proposed (rejected: slower on
  AVX-512 and not the kernels the process has been running);
and the seeded-weights calibration, which the guard runs on one thread with oneDNN off
(`calibration_guarded`) instead of with oneDNN on (`calibration_onednn`).
Use `--isa AVX2` (DNNL_MAX_CPU_ISA) to time the kernels of a CPU without AVX-512 on any x86 CPU.

    .venv37/bin/python benchmarks/bench_thread_guard.py [--isa AVX2] [--height 320 --width 480]

Writes benchmarks/results/bench_thread_guard[_<isa>].json.
"""
import argparse
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from fsaf_repro.fileio import atomic_write_json  # noqa: E402

FORWARD = """
import json, sys, time, torch
from fsaf_repro.model import build_detector
threads, onednn, height, width, loops = int(sys.argv[1]), sys.argv[2] == "on", int(sys.argv[3]), int(sys.argv[4]), \
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
print(json.dumps({"best_s": min(times)}))
"""

CALIBRATION = """
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
print(json.dumps({"best_s": time.perf_counter() - start}))
"""


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(code, args, env):
    out = subprocess.run([sys.executable, "-c", code] + [str(a) for a in args], cwd=ROOT, env=env, check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    return json.loads(out.strip().splitlines()[-1])["best_s"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", default=None, help="DNNL_MAX_CPU_ISA for the subprocesses, e.g. AVX2")
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--loops", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; the best of each config")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=ROOT)
    if args.isa:
        env["DNNL_MAX_CPU_ISA"] = args.isa
    forward_configs = {"healthy_2t": (2, "on"), "clamped_1t": (1, "on"), "onednn_off_2t": (2, "off")}
    best = {}
    for _ in range(args.repeats):
        for name, (threads, onednn) in forward_configs.items():
            seconds = run(FORWARD, [threads, onednn, args.height, args.width, args.loops], env)
            best[name] = min(best.get(name, seconds), seconds)
        for name in ("calibration_onednn", "calibration_guarded"):
            seconds = run(CALIBRATION, [name.split("_")[1]], env)
            best[name] = min(best.get(name, seconds), seconds)
    import torch
    result = {
        "what": "cost of torch 1.8.0's thread-count guard: slowdown ratios against the healthy 2-thread forward "
                "(and against the oneDNN calibration), measured in one run",
        "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
        "dnnl_max_cpu_isa": args.isa or "(unset: the CPU's best)", "input": [args.height, args.width],
        "best_seconds": best,
        "ratios": {
            "clamped_1t_over_healthy_2t": best["clamped_1t"] / best["healthy_2t"],
            "onednn_off_2t_over_healthy_2t": best["onednn_off_2t"] / best["healthy_2t"],
            "calibration_guarded_over_onednn": best["calibration_guarded"] / best["calibration_onednn"],
        },
    }
    out = args.out or os.path.join(HERE, "results", "bench_thread_guard{}.json".format(
        "_" + args.isa.lower() if args.isa else ""))
    atomic_write_json(out, result)
    print(json.dumps(result["ratios"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
