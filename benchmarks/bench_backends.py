"""ONNX Runtime CPU vs torch eager CPU: same model, same input, same thread count, one run.

Both backends go from a normalised input batch to the padded (dets, labels) outputs: torch runs the
eager detector then the reference post-processing (fsaf_repro.decode.detect), ONNX Runtime runs the
exported onnx-nms graph (NMS in the graph). The weights are the seeded checkpoint (deterministic).

Fair tuning, applied to both:
- the same intra-op thread count (`--threads`, default: all cores), one inter-op thread;
- warm-up runs before timing (ORT's first run allocates its arena; torch's first runs select kernels);
- one backend at a time, the other closed (idle runtime threads would steal cores);
- torch: eval mode, torch.no_grad, set_num_threads; ONNX Runtime: all graph optimisations,
  sequential execution.
Goal (issue 4): ORT throughput >= 1.3 x torch eager.

    .venv/bin/python benchmarks/bench_backends.py [--height 800 --width 1216 --batch-size 1 --loops 5]

Writes benchmarks/results/bench_backends.json (records in fsaf_repro.perf's format plus the ratio).
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

from fsaf_repro import perf  # noqa: E402
from fsaf_repro.backends import create_backend  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--loops", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--ort-spinning", type=int, default=1, choices=(0, 1),
                        help="ONNX Runtime intra-op thread spinning (default 1, its own default)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", default=None, help="where the checkpoint and ONNX model are written")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_backends.json"))
    args = parser.parse_args(argv)

    import torch
    from fsaf_repro.checkpoint import generated_network_inputs, write_seeded_checkpoint
    from fsaf_repro.export import export_onnx

    workdir = scratch_dir(args.workdir, "bench_backends_")
    checkpoint = os.path.join(workdir, "fsaf_seeded_0.pth")
    model = os.path.join(workdir, "fsaf_onnx-nms_{}x{}.onnx".format(args.height, args.width))
    if not os.path.exists(checkpoint):
        write_seeded_checkpoint(checkpoint, seed=0)
    if not os.path.exists(model):
        export_onnx(checkpoint, model, flavour="onnx-nms", height=args.height, width=args.width, batch_size=None)
    batch = generated_network_inputs(torch.Generator().manual_seed(0), args.batch_size, args.height,
                                     args.width).numpy()

    torch.set_num_interop_threads(1)
    load_before = list(os.getloadavg())
    records = []
    outputs = {}
    latencies = {}
    # One backend at a time, each closed before the next starts: idle runtime threads (OpenMP's and
    # ONNX Runtime's spin-waiting) would otherwise steal cores from the other one.
    setups = (("torch", checkpoint, {"threads": args.threads}),
              ("onnxruntime", model, {"threads": args.threads, "inter_op_threads": 1, "graph_optimization": "all",
                                      "execution_mode": "sequential", "allow_spinning": bool(args.ort_spinning)}))
    for name, path, options in setups:
        with create_backend(name, **options) as backend:
            backend.load(path)
            for _ in range(args.warmup):
                outputs[name] = backend.run(batch)
            latencies[name] = []
            for _ in range(args.loops):
                t0 = time.perf_counter()
                backend.run(batch)
                latencies[name].append(time.perf_counter() - t0)
    for name in ("torch", "onnxruntime"):
        seconds = sum(latencies[name])
        images = args.batch_size * args.loops
        records.append(perf.make_record(
            "cpu", name, "fp32", args.batch_size, images / seconds, "pure_inference",
            "measured: benchmarks/bench_backends.py, {} timed loops after {} warm-up runs, {} threads".format(
                args.loops, args.warmup, args.threads),
            latencies_ms=perf.latency_summary(latencies[name]), images=images, seconds=seconds))
    comparison = perf.compare_records(records[1], records[0])
    # The median per-run latency is robust to other processes taking the cores for a moment (a shared
    # 2-core machine); the mean-based ratio above is reported beside it.
    median_ratio = records[0]["latencies_ms"]["p50"] / records[1]["latencies_ms"]["p50"]
    detections = {name: int((out["dets"][..., 4] > 0).sum()) for name, out in outputs.items()}
    result = {
        "goal": "onnxruntime CPU fps >= 1.3 x torch eager CPU fps (issue 4)",
        "ratio_onnxruntime_over_torch": comparison["ratio"],
        "ratio_onnxruntime_over_torch_median_latency": median_ratio,
        "load_average_before_after": [load_before, list(os.getloadavg())],
        "caveats": comparison["caveats"],
        "records": records,
        "detections_per_backend": detections,
        "setup": {"height": args.height, "width": args.width, "batch_size": args.batch_size,
                  "threads": args.threads, "loops": args.loops, "warmup": args.warmup,
                  "ort_spinning": bool(args.ort_spinning),
                  "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                  "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
    }
    print(perf.format_records(records))
    print("onnxruntime / torch eager, same model, input and {} threads: fps ratio {:.3f}, median-latency "
          "ratio {:.3f} (goal >= 1.3)".format(args.threads, comparison["ratio"], median_ratio))
    print("load average before/after: {} / {}".format(load_before, list(os.getloadavg())))
    for caveat in comparison["caveats"]:
        print("caveat: " + caveat)
    atomic_write_json(args.out, result)
    print("written: {}".format(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
