"""Streaming end-to-end fps vs pure-inference fps of the same backend, measured in one run.

- pure inference: one fixed input batch (the set's first image) run `--loops` times after warm-up;
- end to end: `fsaf-repro infer`'s runner over a generated COCO-format image set (decode, letterbox,
  normalise on loader threads with prefetch, inference, COCO conversion, journal, results json).
The pure-inference figure is measured before and after the streaming run and averaged, so a drift
of the machine's speed shows in the output instead of in the ratio. Goal (issue 4): e2e / pure >= 0.95.

    .venv/bin/python benchmarks/bench_streaming.py [--images 12 --height 800 --width 1216 --workers 1]

Writes benchmarks/results/bench_streaming.json.
"""
import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from fsaf_repro import perf, runner  # noqa: E402
from fsaf_repro.backends import create_backend  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="backend intra-op threads")
    parser.add_argument("--workers", type=int, default=1, help="loader decoding threads")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--loops", type=int, default=None, help="pure-inference loops (default: --images)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_streaming.json"))
    args = parser.parse_args(argv)

    from fsaf_repro.data import CocoImageSet
    from fsaf_repro.synthetic import make_synthetic_coco

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_streaming_")
    model, options = _model(args, workdir)
    annotations, images = make_synthetic_coco(os.path.join(workdir, "data"), num_images=args.images, seed=0)
    image_set = CocoImageSet(annotations, images, height=args.height, width=args.width)
    loops = args.loops or max(1, args.images // args.batch_size)
    load_before = list(os.getloadavg())
    with create_backend(args.backend, **options) as backend:
        backend.load(model)
        # the fixed input is the set's first image(s): a random tensor would give the in-graph NMS another
        # number of candidates than real images do, and so another cost per image
        import numpy as np
        batch = np.stack([image_set.load(i % len(image_set))[0] for i in range(args.batch_size)])
        pure_before = perf.measure_pure_inference(backend, batch, loops, args.warmup, "cpu", "fp32", args.backend)
        summary = runner.infer_dataset(image_set, backend, os.path.join(workdir, "results.json"),
                                       batch_size=args.batch_size, prefetch=args.prefetch, workers=args.workers,
                                       progress=False, backend_name=args.backend, backend_options=options,
                                       model_path=model, restart=True)
        pure_after = perf.measure_pure_inference(backend, batch, loops, 0, "cpu", "fp32", args.backend)
    e2e, dataset_inference = summary["records"]
    pure_fps = (pure_before["fps"] + pure_after["fps"]) / 2.0
    ratio = e2e["fps"] / pure_fps
    result = {
        "goal": "streaming end-to-end fps >= 0.95 x pure-inference fps of the same backend (issue 4)",
        "ratio_e2e_over_pure_inference": ratio,
        "pure_inference_fps_before_after": [pure_before["fps"], pure_after["fps"]],
        # the recipe's other pair: both figures of the same full-dataset run (e2e vs time in the runtime)
        "ratio_e2e_over_dataset_inference": e2e["fps"] / dataset_inference["fps"],
        "records": [pure_before, e2e, dataset_inference, pure_after],
        "definitions": perf.MODE_DEFINITIONS,
        "setup": {"backend": args.backend, "backend_options": options, "images": args.images,
                  "height": args.height, "width": args.width, "batch_size": args.batch_size,
                  "loader_workers": args.workers, "prefetch": args.prefetch, "cpu_count": os.cpu_count(),
                  "load_average_before_after": [load_before, list(os.getloadavg())]},
    }
    print(perf.format_records(result["records"]))
    print("streaming e2e fps / pure-inference fps ({}): {:.3f} (goal >= 0.95); pure before/after: "
          "{:.3f} / {:.3f} fps".format(args.backend, ratio, pure_before["fps"], pure_after["fps"]))
    print("same run, e2e fps / fps of the time inside the runtime: {:.3f}".format(
        result["ratio_e2e_over_dataset_inference"]))
    print("load average before/after: {}".format(result["setup"]["load_average_before_after"]))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2, sort_keys=True)
        handle.write("\n")
    print("written: {}".format(args.out))
    return 0


def _model(args, workdir):
    """The model file and options of the measured backend (seeded weights, exported when needed)."""
    if args.backend == "null":
        return None, {}
    from fsaf_repro.checkpoint import write_seeded_checkpoint
    checkpoint = os.path.join(workdir, "fsaf_seeded_0.pth")
    if not os.path.exists(checkpoint):
        write_seeded_checkpoint(checkpoint, seed=0)
    if args.backend == "torch":
        return checkpoint, {"threads": args.threads}
    from fsaf_repro.export import export_onnx
    model = os.path.join(workdir, "fsaf_onnx-nms_{}x{}.onnx".format(args.height, args.width))
    if not os.path.exists(model):
        export_onnx(checkpoint, model, flavour="onnx-nms", height=args.height, width=args.width, batch_size=None)
    # no spinning: idle ORT threads would otherwise take cores from the loader threads
    return model, {"threads": args.threads, "allow_spinning": False}


if __name__ == "__main__":
    sys.exit(main())
