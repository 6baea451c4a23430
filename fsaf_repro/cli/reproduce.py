"""The `reproduce` verb: every step this host can run, one run directory with report.md."""
import argparse

from ..reproduce import (DEFAULT_BACKENDS, DEFAULT_CPU_BATCH_SIZES, DEFAULT_FIT_STEPS, DEFAULT_PARITY_IMAGES,
                         DEFAULT_PERF_LOOPS, DEFAULT_PERF_WARMUP, EMBEDDED_BATCH_SIZES, EMBEDDED_INPUT_HW,
                         EMBEDDED_NUM_IMAGES, EMBEDDED_SEED, ENV_CHECKPOINT, ENV_COCO_ROOT, run_reproduce)
from .args import input_dir, input_file, output_dir


def register(subparsers):
    parser = subparsers.add_parser(
        "reproduce", help="run every step this host can run and write one run directory with report.md",
        description="With no argument: the embedded default (weights fitted on generated shapes - not COCO - in "
                    "the official checkpoint layout, a held-out generated mini COCO set, reduced input size): the "
                    "whole pipeline in about 4 minutes on 2 cores, most of it the fit (--fit-steps 0: seeded "
                    "weights, about a minute). "
                    "With --checkpoint and --coco-root: the recipe's run on this host. Re-running with the same "
                    "arguments reuses finished stages.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default=None, type=input_file("checkpoint"),
                        help=f"mmdetection checkpoint (default: ${ENV_CHECKPOINT}; absent: seeded weights)")
    parser.add_argument("--coco-root", default=None, type=input_dir("COCO root"),
                        help=f"COCO root with val2017/ and annotations/instances_val2017.json (default: "
                             f"${ENV_COCO_ROOT}; absent: a generated set)")
    parser.add_argument("--run-dir", default=None, type=output_dir("run directory"),
                        help="run directory (default: runs/embedded-default, or runs/<checkpoint>_<coco root>)")
    parser.add_argument("--backends", default=None,
                        help="comma-separated backends (default: the available ones among {})".format(
                            ", ".join(DEFAULT_BACKENDS)))
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated batch sizes for conversion and throughput (default: {} for the "
                             "embedded default, {} on a CPU host, the recipe's 1..64 with an NPU)".format(
                                 ",".join(map(str, EMBEDDED_BATCH_SIZES)), ",".join(map(str, DEFAULT_CPU_BATCH_SIZES))))
    parser.add_argument("--infer-batch-size", type=int, default=None,
                        help="batch size of the dataset inference (default: the first batch size)")
    parser.add_argument("--height", type=int, default=None,
                        help=f"network input height (default 800; {EMBEDDED_INPUT_HW[0]} for the embedded default)")
    parser.add_argument("--width", type=int, default=None,
                        help=f"network input width (default 1216; {EMBEDDED_INPUT_HW[1]} for the embedded default)")
    parser.add_argument("--num-images", type=int, default=None,
                        help=f"generated images when no COCO root is given (default {EMBEDDED_NUM_IMAGES})")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N images by id (a labelled partial run, never the recipe's claim)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="drop detections scoring below this before evaluation (default: the model's 0.05)")
    parser.add_argument("--scorer", default="pycocotools", choices=("pycocotools", "faster-coco-eval"))
    parser.add_argument("--perf-loops", type=int, default=None,
                        help=f"timed pure-inference loops per batch size (default {DEFAULT_PERF_LOOPS})")
    parser.add_argument("--perf-warmup", type=int, default=None,
                        help=f"untimed warm-up runs (default {DEFAULT_PERF_WARMUP})")
    parser.add_argument("--parity-images", type=int, default=None,
                        help=f"images of the parity batch (default {DEFAULT_PARITY_IMAGES})")
    parser.add_argument("--soc-version", default=None, help="atc --soc_version (default: from `npu-smi info`)")
    parser.add_argument("--precision-mode", default="force_fp16", help="atc --precision_mode")
    parser.add_argument("--extra-perf", action="append", default=[], metavar="PERF_JSON",
                        type=input_file("perf records file"),
                        help="perf records measured elsewhere (fsaf-repro perf --out), shown and gated beside "
                             "this host's; repeatable")
    _add_host_and_weight_options(parser)
    parser.set_defaults(func=_cli_reproduce)


def _add_host_and_weight_options(parser):
    """Threads, the seed, the fit and the checkpoint's trust: how this host runs and where the weights come from."""
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of the CPU backends (torch, ONNX Runtime) in the data set run and the "
                             "parity batch; default: all cores but one (the image loader's); 0: the runtimes' own")
    parser.add_argument("--perf-threads", type=int, default=None,
                        help="intra-op threads of the CPU backends in the pure-inference timing; default: all "
                             "cores; 0: the runtimes' own")
    parser.add_argument("--seed", type=int, default=EMBEDDED_SEED, help="seed of generated weights and data")
    parser.add_argument("--fit-steps", type=int, default=None,
                        help=f"without --checkpoint: fit the weights on generated shapes for this many steps "
                             f"(default {DEFAULT_FIT_STEPS}, a few minutes on 2 cores; reused afterwards); 0: seeded "
                             "weights, no fit")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load the checkpoint with the full unpickler (only for files you trust)")
    parser.add_argument("--progress", action="store_true", help="progress bars during inference")


def _cli_reproduce(args):
    summary = run_reproduce(
        run_dir=args.run_dir, checkpoint=args.checkpoint, coco_root=args.coco_root, backends=args.backends,
        batch_sizes=args.batch_sizes, infer_batch_size=args.infer_batch_size, height=args.height,
        width=args.width, num_images=args.num_images, limit=args.limit, score_threshold=args.score_threshold,
        scorer=args.scorer, perf_loops=args.perf_loops, perf_warmup=args.perf_warmup,
        parity_images=args.parity_images, seed=args.seed, soc_version=args.soc_version,
        precision_mode=args.precision_mode, extra_perf=args.extra_perf, threads=args.threads,
        perf_threads=args.perf_threads,
        trusted=args.trust_checkpoint, fit_steps=args.fit_steps,
        progress=args.progress)
    print("report: {}".format(summary["report"]))
    return 0

