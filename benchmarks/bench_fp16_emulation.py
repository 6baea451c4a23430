"""How far the fp16 emulation (backend `fp16-emulated`) moves detections from the fp32 torch path.

A CPU stand-in for the om built with atc --precision_mode=force_fp16, NOT an NPU measurement (see
docs/fp16-emulation.md for what it does and does not emulate). Over many generated images it runs the
`torch` backend (fp32) and the `fp16-emulated` backend on the same batches, pairs their detections as
the parity table does (same label, closest box and score; fsaf_repro.parity) and reports:
- box difference (largest coordinate difference of each pair, px): max, p99, p50, mean;
- score difference of each pair: max, p99, p50, mean;
- match rate: reference detections paired at IoU >= the spec's match_iou (and at 0.5);
- agreement within the spec's fp16 om tolerances (parity.fp16_om_box_abs_tol_px / _score_abs_tol):
  the fraction of reference detections with a same-label emulated detection within both, and the
  verdict reproduce's parity stage would give (match rate >= fp16_om_min_match_rate, max diffs within);
- the same differences over overlapping pairs only (IoU >= 0.5): a detection on one side only (a score
  crossing the threshold or the top-100 cut-off) is paired with another object and dominates the max;
- layers whose fp16 output overflowed to inf.

Any checkpoint in the official layout works (trained weights when they exist); --seeded writes seeded
weights into a scratch directory instead.

    .venv/bin/python benchmarks/bench_fp16_emulation.py --seeded 0 [--images 48] [--height 256 --width 320]
    .venv/bin/python benchmarks/bench_fp16_emulation.py --checkpoint fsaf_r50_fpn_1x_coco-94ccc51f.pth \
        --height 800 --width 1216 --out benchmarks/results/bench_fp16_emulation_trained.json

Writes benchmarks/results/bench_fp16_emulation.json unless --out says otherwise.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from _scratch import scratch_dir  # noqa: E402
from fsaf_repro.backends import create_backend  # noqa: E402
from fsaf_repro.backends.fp16_emulation import RECORD_DEVICE, RECORD_PRECISION  # noqa: E402
from fsaf_repro.fileio import atomic_write_json, file_sha256  # noqa: E402
from fsaf_repro.parity import _pair_rows, box_iou_pairs, compare_detections, valid_rows  # noqa: E402
from fsaf_repro.spec import parity_tolerances  # noqa: E402


def summary(values):
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0, "max": None, "p99": None, "p50": None, "mean": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"count": int(values.size), "max": float(values.max()), "p99": float(p99), "p50": float(p50),
            "mean": float(values.mean())}


def pair_differences(ref, emulated):
    """Per pair (reference row, emulated row) of every image: box diff, score diff, IoU; and counts."""
    tol = parity_tolerances()
    box, score, iou = [], [], []
    within = total = 0
    for image in range(ref["dets"].shape[0]):
        rows_ref = valid_rows(ref["dets"][image])
        rows_emu = valid_rows(emulated["dets"][image])
        a_all = ref["dets"][image][rows_ref].astype(np.float64)
        b_all = emulated["dets"][image][rows_emu].astype(np.float64)
        total += len(rows_ref)
        pairs = _pair_rows(a_all, ref["labels"][image][rows_ref], b_all, emulated["labels"][image][rows_emu])
        if not pairs:
            continue
        a = a_all[[i for i, _ in pairs]]
        b = b_all[[j for _, j in pairs]]
        box_diff = np.abs(a[:, :4] - b[:, :4]).max(axis=1)
        score_diff = np.abs(a[:, 4] - b[:, 4])
        box.extend(box_diff.tolist())
        score.extend(score_diff.tolist())
        iou.extend(box_iou_pairs(a[:, :4], b[:, :4]).tolist())
        within += int(np.sum((box_diff <= tol["fp16_om_box_abs_tol_px"])
                             & (score_diff <= tol["fp16_om_score_abs_tol"])))
    return box, score, iou, within, total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint in the official layout (trained or seeded)")
    source.add_argument("--seeded", type=int, metavar="SEED", help="write and use seeded weights")
    parser.add_argument("--trust-checkpoint", action="store_true", help="full unpickler (trusted files only)")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--seed", type=int, default=2024, help="seed of the generated images")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (both backends)")
    parser.add_argument("--workdir", default=None, help="keep the seeded checkpoint here")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_fp16_emulation.json"))
    args = parser.parse_args(argv)

    import torch
    from fsaf_repro.checkpoint import generated_network_inputs, write_seeded_checkpoint

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = os.path.join(scratch_dir(args.workdir, "bench-fp16-"), "seeded{}.pth".format(args.seeded))
        write_seeded_checkpoint(checkpoint, args.seeded)
    options = {"trusted": args.trust_checkpoint}
    if args.threads:
        options["threads"] = args.threads
    generator = torch.Generator().manual_seed(args.seed)
    tol = parity_tolerances()
    refs, emus, overflowed = [], [], set()
    started = time.time()
    with create_backend("torch", **options) as fp32, create_backend("fp16-emulated", **options) as fp16:
        fp32.load(checkpoint)
        fp16.load(checkpoint)
        done = 0
        while done < args.images:
            count = min(args.batch_size, args.images - done)
            batch = generated_network_inputs(generator, count, args.height, args.width).numpy()
            refs.append(fp32.run(batch))
            emus.append(fp16.run(batch))
            overflowed.update(fp16.overflowed_layers)
            done += count
            print("{}/{} images, {:.0f} s".format(done, args.images, time.time() - started), flush=True)
    ref = dict((k, np.concatenate([r[k] for r in refs])) for k in ("dets", "labels"))
    emu = dict((k, np.concatenate([e[k] for e in emus])) for k in ("dets", "labels"))
    box, score, iou, within, total = pair_differences(ref, emu)
    iou = np.asarray(iou)
    record = compare_detections(ref["dets"], ref["labels"], emu["dets"], emu["labels"], tol["match_iou"])
    reproduce_verdict = (record["match_rate"] >= tol["fp16_om_min_match_rate"]
                         and record["max_box_abs_diff"] <= tol["fp16_om_box_abs_tol_px"]
                         and record["max_score_abs_diff"] <= tol["fp16_om_score_abs_tol"])
    counts_ref = (ref["dets"][..., 4] > 0).sum(axis=1)
    counts_emu = (emu["dets"][..., 4] > 0).sum(axis=1)
    result = {
        "what": "fp16 emulation on the CPU vs the fp32 torch path; NOT an NPU measurement",
        "device": RECORD_DEVICE, "precision": RECORD_PRECISION,
        "checkpoint": {"path": os.path.abspath(checkpoint), "sha256": file_sha256(checkpoint),
                       "seeded": args.seeded},
        "images": args.images, "canvas": [args.height, args.width], "image_seed": args.seed,
        "batch_size": args.batch_size,
        "detections": {"reference": int(counts_ref.sum()), "emulated": int(counts_emu.sum()),
                       "paired": len(box), "images_with_equal_counts": int(np.sum(counts_ref == counts_emu))},
        "box_abs_diff_px": summary(box),
        "score_abs_diff": summary(score),
        # the same over pairs that overlap (IoU >= 0.5): fp16's arithmetic effect, without the pairs that
        # a detection present on one side only (threshold or top-100 cut-off crossed) makes far apart
        "box_abs_diff_px_iou_0.5": summary(np.asarray(box)[iou >= 0.5]),
        "score_abs_diff_iou_0.5": summary(np.asarray(score)[iou >= 0.5]),
        "match_rate": {"iou": tol["match_iou"], "value": float(np.sum(iou >= tol["match_iou"])) / total
                       if total else None},
        "match_rate_iou_0.5": float(np.sum(iou >= 0.5)) / total if total else None,
        "within_fp16_om_tolerances": {"box_abs_tol_px": tol["fp16_om_box_abs_tol_px"],
                                      "score_abs_tol": tol["fp16_om_score_abs_tol"],
                                      "found": within, "total": total,
                                      "rate": within / float(total) if total else None},
        "reproduce_parity_verdict": {"within_tolerance": bool(reproduce_verdict),
                                     "rule": "match_rate >= fp16_om_min_match_rate and max box/score diffs within "
                                             "fp16_om_* (as reproduce's parity stage judges an om)",
                                     "min_match_rate": tol["fp16_om_min_match_rate"],
                                     "record": record},
        "overflowed_layers": sorted(overflowed),
        "seconds": round(time.time() - started, 1),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()},
    }
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    atomic_write_json(args.out, result)
    print("box diff px max {} p99 {}; score diff max {} p99 {}; match rate (IoU >= {}) {}; within fp16 om "
          "tolerances {}/{}; written to {}".format(
              result["box_abs_diff_px"]["max"], result["box_abs_diff_px"]["p99"], result["score_abs_diff"]["max"],
              result["score_abs_diff"]["p99"], tol["match_iou"], result["match_rate"]["value"], within, total,
              args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
