"""Streaming end-to-end fps vs pure-inference fps of the same backend, measured in one run.

- pure inference: the images, decoded beforehand and held in memory, run through the backend
  (`backend.run` time only);
- end to end: `fsaf-repro infer`'s runner over the same images (decode, letterbox, normalise on loader
  threads with prefetch, inference, COCO conversion, journal, results json), wall-clock time.
The two alternate over `--rounds` rounds of fresh generated images, so a drift of the machine's speed
(a shared host) hits both. The recipe's fixed-input pure-inference mode is `fsaf-repro perf --backend`;
it is not the comparator here because the in-graph NMS cost depends on the image content.
Goal (issue 4): e2e / pure >= 0.95.

    .venv/bin/python benchmarks/bench_streaming.py [--images 6 --rounds 3 --height 800 --width 1216]

Writes benchmarks/results/bench_streaming.json.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from _scratch import scratch_dir  # noqa: E402
from fsaf_repro.fileio import atomic_write_json  # noqa: E402

from fsaf_repro import perf, runner  # noqa: E402
from fsaf_repro.backends import create_backend  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--images", type=int, default=6, help="images per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of pure inference and streaming (a drift of the machine's speed "
                             "then hits both)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="backend intra-op threads")
    parser.add_argument("--workers", type=int, default=1, help="loader decoding threads")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_streaming.json"))
    args = parser.parse_args(argv)

    import numpy as np
    from fsaf_repro.data import CocoImageSet
    from fsaf_repro.synthetic import make_synthetic_coco

    workdir = scratch_dir(args.workdir, "bench_streaming_")
    model, options = _model(args, workdir)
    if args.images % args.batch_size:
        parser.error("--images must be a multiple of --batch-size (no partial batch in the pure-inference loop)")
    sets = []
    for r in range(args.rounds):
        annotations, images = make_synthetic_coco(os.path.join(workdir, "data_{}".format(r)),
                                                  num_images=args.images, seed=r)
        sets.append(CocoImageSet(annotations, images, height=args.height, width=args.width))
    load_before = list(os.getloadavg())
    pure_seconds, pure_latencies, wall_seconds, inside_seconds = 0.0, [], 0.0, 0.0
    with create_backend(args.backend, **options) as backend:
        backend.load(model)
        first = np.stack([sets[0].load(i)[0] for i in range(args.batch_size)])
        for _ in range(args.warmup):
            backend.run(first)
        for r, image_set in enumerate(sets):
            # pure inference: the round's own images, decoded beforehand and held in memory (same content
            # as the streamed images: the in-graph NMS cost depends on the image)
            arrays = np.stack([image_set.load(i)[0] for i in range(len(image_set))])
            for b in range(0, len(arrays), args.batch_size):
                t0 = time.perf_counter()
                backend.run(arrays[b:b + args.batch_size])
                pure_latencies.append(time.perf_counter() - t0)
            pure_seconds = sum(pure_latencies)
            del arrays
            # streaming end to end over the same images
            summary = runner.infer_dataset(image_set, backend, os.path.join(workdir, "results_{}.json".format(r)),
                                           batch_size=args.batch_size, prefetch=args.prefetch,
                                           workers=args.workers, progress=False, backend_name=args.backend,
                                           backend_options=options, model_path=model, restart=True)
            wall_seconds += summary["wall_seconds"]
            inside_seconds += summary["inference_seconds"]
    images = args.images * args.rounds
    pure = perf.make_record("cpu", args.backend, "fp32", args.batch_size, images / pure_seconds, "pure_inference",
                            "measured: benchmarks/bench_streaming.py, the streamed images preloaded in memory",
                            latencies_ms=perf.latency_summary(pure_latencies), images=images, seconds=pure_seconds)
    e2e, dataset_inference = perf.dataset_records(
        images, wall_seconds, inside_seconds, [], "cpu", args.backend, "fp32", args.batch_size,
        source="measured: benchmarks/bench_streaming.py, fsaf_repro.runner over {} rounds".format(args.rounds))
    ratio = e2e["fps"] / pure["fps"]
    result = {
        "goal": "streaming end-to-end fps >= 0.95 x pure-inference fps of the same backend (issue 4)",
        "ratio_e2e_over_pure_inference": ratio,
        # the recipe's other pair: both figures of the same full-dataset runs (e2e vs time in the runtime)
        "ratio_e2e_over_dataset_inference": e2e["fps"] / dataset_inference["fps"],
        "records": [pure, e2e, dataset_inference],
        "definitions": perf.MODE_DEFINITIONS,
        "setup": {"backend": args.backend, "backend_options": options, "images_per_round": args.images,
                  "rounds": args.rounds, "height": args.height, "width": args.width,
                  "batch_size": args.batch_size, "loader_workers": args.workers, "prefetch": args.prefetch,
                  "cpu_count": os.cpu_count(), "load_average_before_after": [load_before, list(os.getloadavg())]},
    }
    print(perf.format_records(result["records"]))
    print("streaming e2e fps / pure-inference fps of the same images ({}): {:.3f} (goal >= 0.95)".format(
        args.backend, ratio))
    print("same run, e2e fps / fps of the time inside the runtime: {:.3f}".format(
        result["ratio_e2e_over_dataset_inference"]))
    print("load average before/after: {}".format(result["setup"]["load_average_before_after"]))
    atomic_write_json(args.out, result)
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
