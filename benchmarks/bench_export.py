"""Export time and model size of each ONNX flavour (issue 2's figure), measured in one run.

For each flavour the seeded checkpoint (official layout, written first) is exported at the recipe's
800x1216 with a static batch of 1, opset 11, through the real loader. Recorded per flavour: wall time
of `export_onnx` (checkpoint load + trace + checks + sidecar), file size, and their ratios to the
checkpoint's own load time and size, so the figures compare across machines.

    .venv/bin/python benchmarks/bench_export.py [--height 800 --width 1216 --repeats 2]

Writes benchmarks/results/bench_export.json.
"""
import argparse
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from _scratch import scratch_dir  # noqa: E402
from fsaf_repro.fileio import atomic_write_json  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--repeats", type=int, default=2, help="exports per flavour; the fastest is kept")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_export.json"))
    args = parser.parse_args(argv)

    import onnx
    import torch

    from fsaf_repro.checkpoint import load_detector, write_seeded_checkpoint
    from fsaf_repro.export import FLAVOURS, export_onnx

    workdir = scratch_dir(None, "bench_export_")
    checkpoint = os.path.join(workdir, "fsaf_seeded_0.pth")
    started = time.perf_counter()
    write_seeded_checkpoint(checkpoint, seed=0)
    seeded_seconds = time.perf_counter() - started
    started = time.perf_counter()
    load_detector(checkpoint)
    load_seconds = time.perf_counter() - started
    checkpoint_bytes = os.path.getsize(checkpoint)

    records = []
    for flavour in FLAVOURS:
        times = []
        for repeat in range(args.repeats):
            path = os.path.join(workdir, "fsaf_{}_{}.onnx".format(flavour, repeat))
            started = time.perf_counter()
            sidecar = export_onnx(checkpoint, path, flavour=flavour, height=args.height, width=args.width,
                                  batch_size=1)
            times.append(time.perf_counter() - started)
        model = onnx.load(path)
        record = {
            "flavour": flavour,
            "export_seconds": round(min(times), 3),
            "export_seconds_all": [round(t, 3) for t in times],
            "onnx_bytes": sidecar["file_size"],
            "onnx_mb": round(sidecar["file_size"] / 1e6, 2),
            "nodes": len(model.graph.node),
            "export_over_checkpoint_load": round(min(times) / load_seconds, 2),
            "onnx_over_checkpoint_size": round(sidecar["file_size"] / float(checkpoint_bytes), 4),
        }
        records.append(record)
        print("{flavour:>10}: export {export_seconds:6.2f} s ({export_over_checkpoint_load:.1f}x a checkpoint "
              "load), {onnx_mb:7.2f} MB ({onnx_over_checkpoint_size:.3f}x the checkpoint), {nodes} nodes".format(
                  **record))

    result = {
        "benchmark": "export",
        "input_hw": [args.height, args.width],
        "batch_size": 1,
        "checkpoint_mb": round(checkpoint_bytes / 1e6, 2),
        "checkpoint_load_seconds": round(load_seconds, 3),
        "seeded_checkpoint_seconds": round(seeded_seconds, 3),
        "records": records,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    atomic_write_json(args.out, result)
    print("checkpoint {:.1f} MB, load {:.2f} s; wrote {}".format(result["checkpoint_mb"], load_seconds, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
