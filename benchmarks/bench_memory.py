"""Peak RSS of a 5000-image streaming run vs a 50-image run (null backend, generated data), one run.

Each run is a fresh child process (`--child`) running the runner over the first N images of the same
generated COCO-format set, with the null backend (no model: the harness alone: decode, letterbox to
the full 800x1216 canvas, batches, prefetch queue, COCO conversion, journal, results json); it reports
its own peak resident set size (getrusage ru_maxrss). A streaming harness keeps memory bounded by
prefetch x batch size, not by the dataset size. Goal (issue 4): peak RSS(5000) <= 1.2 x peak RSS(50).

    .venv/bin/python benchmarks/bench_memory.py [--large 5000 --small 50 --batch-size 4]

Writes benchmarks/results/bench_memory.json.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from _scratch import scratch_dir  # noqa: E402
from fsaf_repro.fileio import atomic_write_json  # noqa: E402

# Small source images keep generating 5000 files quick; every image is still letterboxed (upscaled)
# onto the full canvas, which is what the loader's memory depends on.
LAYOUTS = ((64, 48, "jpg"), (48, 64, "jpg"), (80, 20, "png"), (32, 32, "gray"))


def child(args):
    from fsaf_repro import runner
    from fsaf_repro.backends import create_backend
    from fsaf_repro.data import CocoImageSet
    image_set = CocoImageSet(args.annotations, args.images, limit=args.limit)
    start = time.perf_counter()
    with create_backend("null") as backend:
        backend.load()
        summary = runner.infer_dataset(image_set, backend, args.results, batch_size=args.batch_size,
                                       prefetch=args.prefetch, workers=args.workers, progress=False,
                                       backend_name="null", restart=True)
    print(json.dumps({"images": summary["images"], "seconds": time.perf_counter() - start,
                      "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "canvas": [image_set.height, image_set.width]}))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--middle", type=int, default=500,
                        help="a third run showing where the peak saturates (0: skip)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_memory.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--annotations", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    from fsaf_repro.synthetic import make_synthetic_coco
    workdir = scratch_dir(args.workdir, "bench_memory_")
    data_dir = os.path.join(workdir, "data_{}".format(args.large))
    annotations = os.path.join(data_dir, "annotations", "instances_val2017.json")
    images = os.path.join(data_dir, "val2017")
    if not os.path.exists(annotations):
        t0 = time.perf_counter()
        make_synthetic_coco(data_dir, num_images=args.large, seed=0, layouts=LAYOUTS, max_objects=1)
        print("generated {} images in {:.1f} s".format(args.large, time.perf_counter() - t0))
    runs = {}
    counts = [args.small] + ([args.middle] if args.middle else []) + [args.large]
    for count in counts:
        argv_child = [sys.executable, os.path.abspath(__file__), "--child", "--annotations", annotations,
                      "--images", images, "--limit", str(count), "--batch-size", str(args.batch_size),
                      "--prefetch", str(args.prefetch), "--workers", str(args.workers),
                      "--results", os.path.join(workdir, "results_{}.json".format(count))]
        output = subprocess.check_output(argv_child, cwd=ROOT).decode("utf-8")
        runs[count] = json.loads(output.strip().splitlines()[-1])
        print("{} images: peak RSS {:.1f} MiB, {:.1f} s".format(
            count, runs[count]["maxrss_kib"] / 1024.0, runs[count]["seconds"]))
    ratio = runs[args.large]["maxrss_kib"] / float(runs[args.small]["maxrss_kib"])
    batch_mib = args.batch_size * 3 * runs[args.large]["canvas"][0] * runs[args.large]["canvas"][1] * 4 / 2.0 ** 20
    result = {"goal": "peak RSS of the {}-image run <= 1.2 x that of the {}-image run (issue 4)".format(
        args.large, args.small),
        "ratio_peak_rss_large_over_small": ratio, "runs": {str(k): v for k, v in runs.items()},
        "ratio_peak_rss_large_over_middle": (runs[args.large]["maxrss_kib"] / float(runs[args.middle]["maxrss_kib"])
                                             if args.middle else None),
        "batch_mib": batch_mib,
        "bound_note": "the loader holds at most prefetch + 2 batches (queue, producer, consumer): the peak "
                      "saturates at about baseline + (prefetch + 2) x batch_mib once the queue has filled",
        "setup": {"backend": "null", "batch_size": args.batch_size, "prefetch": args.prefetch,
                  "workers": args.workers, "layouts": LAYOUTS}}
    print("peak RSS {} images / {} images: {:.3f} (goal <= 1.2); one batch = {:.1f} MiB".format(
        args.large, args.small, ratio, batch_mib))
    if args.middle:
        print("peak RSS {} images / {} images: {:.3f}".format(
            args.large, args.middle, runs[args.large]["maxrss_kib"] / float(runs[args.middle]["maxrss_kib"])))
    atomic_write_json(args.out, result)
    print("written: {}".format(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
