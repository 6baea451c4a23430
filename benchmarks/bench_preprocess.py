"""Preprocessing throughput: `fsaf-repro preprocess` vs a plain per-image version of the recipe's script.

Both turn the same generated COCO-format images (COCO-like sizes: 640x480, 480x640, 640x427, 500x375,
plus a grayscale and a PNG) into the same `<stem>.bin` files (the outputs are compared byte for byte):

- plain: the recipe's steps one image after the other in one process, written the obvious way
  (cv2.imread, cv2.resize, BGR->RGB, astype float32, (x - mean) / std, np.zeros canvas, transpose,
  tofile);
- ours with 1 worker: the same transform with a table look-up for the normalisation, writing the
  CHW planes in place (no intermediate HWC float image), tmp + rename;
- ours with all cores (default 2 here): the same, in a process pool.
Each variant runs `--rounds` times on a cleared output directory, alternating; the best round counts.
Goal (issue 3): ours (all cores) >= 2 x plain.

    .venv/bin/python benchmarks/bench_preprocess.py [--images 150 --rounds 2]

Writes benchmarks/results/bench_preprocess.json.
"""
import argparse
import math
import os
import platform
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from fsaf_repro.data import CocoImageSet, write_bins  # noqa: E402
from _scratch import scratch_dir  # noqa: E402
from fsaf_repro.fileio import atomic_write_json  # noqa: E402
from fsaf_repro.spec import input_constants  # noqa: E402
from fsaf_repro.synthetic import make_synthetic_coco  # noqa: E402

COCO_LIKE = [(640, 480, "jpg"), (480, 640, "jpg"), (640, 427, "jpg"), (500, 375, "jpg"), (640, 480, "gray"),
             (612, 612, "png")]


def plain_recipe_preprocess(image_paths, out_dir, height, width):
    """The recipe's per-image steps, one image at a time, written plainly."""
    const = input_constants()
    mean = np.array(const["mean_rgb"], dtype=np.float32)
    std = np.array(const["std_rgb"], dtype=np.float32)
    for path in image_paths:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        scale = min(width / w, height / h)
        new_w, new_h = int(math.floor(w * scale)), int(math.floor(h * scale))
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32)
        img = (img - mean) / std
        canvas = np.zeros((height, width, 3), dtype=np.float32)
        canvas[:new_h, :new_w] = img
        canvas = canvas.transpose(2, 0, 1)
        stem = os.path.splitext(os.path.basename(path))[0]
        np.ascontiguousarray(canvas).tofile(os.path.join(out_dir, stem + ".bin"))


def _fresh(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_preprocess.json"))
    args = parser.parse_args(argv)
    const = input_constants()
    height, width = const["height"], const["width"]

    workdir = scratch_dir(args.workdir, "bench_preprocess_")
    annotation_file, image_dir = make_synthetic_coco(os.path.join(workdir, "ds"), num_images=args.images,
                                                     seed=0, layouts=COCO_LIKE)
    image_set = CocoImageSet(annotation_file, image_dir)
    paths = [meta.path for meta in image_set.metas]
    out = {"plain": os.path.join(workdir, "plain"), "ours_1": os.path.join(workdir, "ours_1"),
           "ours_all": os.path.join(workdir, "ours_all")}
    load_before = os.getloadavg()[0]  # the machine may be shared: recorded with the figures
    timings = {name: [] for name in out}
    for _ in range(args.rounds):
        for name, directory in out.items():
            _fresh(directory)
            if hasattr(os, "sync"):  # earlier rounds' dirty pages are not this one's cost
                os.sync()
            start = time.perf_counter()
            if name == "plain":
                plain_recipe_preprocess(paths, directory, height, width)
            else:
                write_bins(image_set, directory, workers=1 if name == "ours_1" else args.workers, progress=False)
            timings[name].append(time.perf_counter() - start)

    identical = True
    for meta in image_set.metas:
        stem = os.path.splitext(meta.file_name)[0] + ".bin"
        with open(os.path.join(out["plain"], stem), "rb") as a, open(os.path.join(out["ours_all"], stem), "rb") as b:
            identical = identical and a.read() == b.read()
    best = {name: min(values) for name, values in timings.items()}
    fps = {name: args.images / seconds for name, seconds in best.items()}
    record = {
        "benchmark": "preprocess",
        "command": "python benchmarks/bench_preprocess.py --images {} --rounds {} --workers {}".format(
            args.images, args.rounds, args.workers),
        "images": args.images,
        "canvas": [height, width],
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "seconds": timings,
        "images_per_s": fps,
        "ratio_ours_all_vs_plain": fps["ours_all"] / fps["plain"],
        "ratio_ours_1_vs_plain": fps["ours_1"] / fps["plain"],
        "goal_ratio": 2.0,
        "outputs_identical": identical,
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
    }
    atomic_write_json(args.out, record)
    for name in ("plain", "ours_1", "ours_all"):
        print("{:<9} {:7.2f} images/s  (best of {} rounds: {:.2f} s for {} images)".format(
            name, fps[name], args.rounds, best[name], args.images))
    print("ratio ours({} workers)/plain = {:.2f}  (goal >= 2.0); ours(1 worker)/plain = {:.2f}; "
          "outputs identical: {}".format(args.workers, record["ratio_ours_all_vs_plain"],
                                         record["ratio_ours_1_vs_plain"], identical))
    print("written to {}".format(args.out))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
