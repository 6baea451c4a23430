"""AP against steps and wall time of `fsaf_repro.train.fit_generated` on a held-out generated set.

    python scripts/fit_generated_curve.py [--steps 400 --train-images 160 --eval-images 32 --threads 2]
    python scripts/fit_generated_curve.py --summary run.json   # re-plot a fit summary written before

Writes benchmarks/results/fit_generated.json (the fit's summary: params, per-evaluation step, wall
time, running loss, AP@[.50:.95], AP50; steps/s; host load) and fit_generated.png (AP and AP50
against steps, wall time on the top axis). The held-out set is scored by the thin network on cached
backbone features, which the official-layout checkpoint reproduces exactly (test_train.py).
"""
import argparse
import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from fsaf_repro.fit_progress import FitReporting  # noqa: E402
from fsaf_repro.train import fit_generated  # noqa: E402

RESULTS = os.path.join(os.path.dirname(HERE), "benchmarks", "results")  # beside the benchmark records


def plot(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    points = [entry for entry in summary["history"] if "ap" in entry]
    steps = [entry["step"] for entry in points]
    figure, axis = pyplot.subplots(figsize=(7, 4))
    axis.plot(steps, [entry["ap"] for entry in points], "o-", label="AP@[.50:.95]")
    axis.plot(steps, [entry["ap50"] for entry in points], "s-", label="AP50")
    axis.axhline(0.30, color="C0", linestyle=":", label="goal AP 0.30")
    axis.axhline(0.50, color="C1", linestyle=":", label="goal AP50 0.50")
    params = summary["params"]
    axis.set_xlabel(f"steps (batch {params['batch_size']})")
    axis.set_ylabel(f"held-out AP ({summary.get('eval_images', '?')} images)")
    axis.set_ylim(0, 0.6)
    for entry in points:
        axis.annotate(f"{entry['wall_s']:.0f}s", (entry["step"], entry["ap50"]), fontsize=7,
                      textcoords="offset points", xytext=(0, 5))
    axis.set_title(f"fit_generated at {params['height']}x{params['width']} ({summary.get('threads')} threads, "
                   "shared host: wall times pessimistic)", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", help="re-plot this fit summary json instead of fitting")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--train-images", type=int, default=160)
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(RESULTS, "fit_generated.json"))
    args = parser.parse_args(argv)
    if args.summary:
        with open(args.summary) as handle:
            summary = json.load(handle)
    else:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            summary = fit_generated(os.path.join(tmp, "fit.pth"), threads=args.threads, steps=args.steps,
                                    train_images=args.train_images, eval_images=args.eval_images,
                                    reporting=FitReporting(eval_every=args.eval_every))
        summary["eval_images"] = args.eval_images
        summary.pop("output", None)
        summary["host"] = {"cpus": os.cpu_count(), "machine": platform.machine(),
                           "load_avg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=1, sort_keys=True)
    plot(summary, os.path.splitext(args.out)[0] + ".png")
    print(json.dumps({k: summary[k] for k in ("steps_per_s", "train_s", "features_s", "wall_s") if k in summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
