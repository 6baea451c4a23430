"""Scoring time: pycocotools vs faster-coco-eval on the same generated result set, one run.

A generated COCO-format ground truth of `--images` images (5000 by default, as val2017; about 7
objects per image, COCO's average) and `--per-image` detections per image (100 by default, the
model's cap: jittered ground truth plus clutter) are scored by `fsaf_repro.evaluate.evaluate_results`
with each scorer: load, validate, evaluate, accumulate and the recipe's 12-stat summary with
maxDets [100, 300, 1000]. Both timings cover the same steps; the scorer-only part (loadRes +
evaluate + accumulate) is reported separately. The 12 stats must agree (max abs difference
<= 1e-12, the last bit of the interpolated precision) and print the same 3-decimal table.
Goal (issue 3): faster-coco-eval >= 3 x pycocotools with identical stats.

    .venv/bin/python benchmarks/bench_scoring.py [--images 5000 --per-image 100]

Writes benchmarks/results/bench_scoring.json.
"""
import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from fsaf_repro import evaluate  # noqa: E402
from _scratch import scratch_dir  # noqa: E402
from fsaf_repro.fileio import atomic_write_json  # noqa: E402
from fsaf_repro.synthetic import make_synthetic_coco, make_synthetic_results  # noqa: E402

# COCO-like image sizes (no pixels are written: scoring never reads them)
LAYOUTS = [(640, 480, "jpg"), (480, 640, "jpg"), (640, 427, "jpg"), (500, 375, "jpg"), (612, 612, "jpg")]


def _timed(function, store, key):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            store[key] = time.perf_counter() - start
    return wrapper


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_scoring.json"))
    args = parser.parse_args(argv)
    ok, reason = evaluate.faster_coco_eval_availability()
    if not ok:
        print("skipped: " + reason)
        return 0

    load_before = os.getloadavg()[0]  # the machine may be shared: recorded with the figures
    workdir = scratch_dir(None, "bench_scoring_")
    annotation_file, _ = make_synthetic_coco(workdir, num_images=args.images, seed=args.seed,
                                             layouts=LAYOUTS, max_objects=14, write_images=False)
    results = make_synthetic_results(annotation_file, per_image=args.per_image, seed=args.seed)
    with open(annotation_file) as handle:
        num_gt = len(json.load(handle)["annotations"])
    seconds, scorer_only, metrics = {}, {}, {}
    originals = {"pycocotools": evaluate._accumulate_pycocotools,
                 "faster-coco-eval": evaluate._accumulate_faster}
    for scorer in ("pycocotools", "faster-coco-eval"):
        name = "_accumulate_pycocotools" if scorer == "pycocotools" else "_accumulate_faster"
        setattr(evaluate, name, _timed(originals[scorer], scorer_only, scorer))
        try:
            start = time.perf_counter()
            metrics[scorer] = evaluate.evaluate_results(annotation_file, results, scorer=scorer)
            seconds[scorer] = time.perf_counter() - start
        finally:
            setattr(evaluate, name, originals[scorer])

    slow, fast = metrics["pycocotools"], metrics["faster-coco-eval"]
    max_diff = float(np.max(np.abs(np.array(slow["stats"]) - np.array(fast["stats"]))))
    same_table = evaluate.format_recipe_table(slow["stats"]) == evaluate.format_recipe_table(fast["stats"])
    identical = max_diff <= 1e-12 and same_table
    record = {
        "benchmark": "scoring",
        "command": "python benchmarks/bench_scoring.py --images {} --per-image {} --seed {}".format(
            args.images, args.per_image, args.seed),
        "images": args.images,
        "detections": len(results),
        "ground_truth_boxes": num_gt,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "seconds_total": seconds,
        "seconds_scorer_only": scorer_only,
        "ratio_total": seconds["pycocotools"] / seconds["faster-coco-eval"],
        "ratio_scorer_only": scorer_only["pycocotools"] / scorer_only["faster-coco-eval"],
        "goal_ratio": 3.0,
        "stats_pycocotools": slow["stats"],
        "stats_faster_coco_eval": fast["stats"],
        "stats_max_abs_diff": max_diff,
        "stats_identical": identical,
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
    }
    atomic_write_json(args.out, record)
    print(evaluate.format_recipe_table(slow["stats"]))
    for scorer in ("pycocotools", "faster-coco-eval"):
        print("{:<17} {:7.2f} s total, {:7.2f} s scorer only".format(scorer, seconds[scorer], scorer_only[scorer]))
    print("ratio pycocotools/faster-coco-eval = {:.2f} total, {:.2f} scorer only (goal >= 3.0); "
          "{} detections on {} images; stats identical: {} (max abs diff {:.1e})".format(
              record["ratio_total"], record["ratio_scorer_only"], len(results), args.images, identical, max_diff))
    print("written to {}".format(args.out))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
