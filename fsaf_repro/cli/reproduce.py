"""The `reproduce` verb: every step this host can run, one run directory with report.md."""
import argparse

from ..reproduce import (DEFAULT_BACKENDS, DEFAULT_CPU_BATCH_SIZES, DEFAULT_FIT_STEPS, DEFAULT_PARITY_IMAGES,
                         DEFAULT_PERF_LOOPS, DEFAULT_PERF_MIN_SECONDS, DEFAULT_PERF_WARMUP, EMBEDDED_BATCH_SIZES,
                         EMBEDDED_INPUT_HW,
                         EMBEDDED_NUM_IMAGES, EMBEDDED_SEED, ENV_CHECKPOINT, ENV_COCO_ROOT, OPTION_KINDS, run_reproduce)
from ..convert import DEFAULT_PRECISION_MODE
from ..evaluate import DEFAULT_SCORER
from .args import input_dir, input_file, output_dir, typed


def kind(name):
    """The argparse type of reproduce's option `name`: its declaration in fsaf_repro.reproduce.OPTION_KINDS,
    the one resolve_config checks too."""
    return typed(OPTION_KINDS[name])


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
                        help="run directory (default: runs/<weights>_<data>, named by where the weights come "
                             "from: runs/embedded-fitted1000 for the embedded default, runs/embedded-seeded with "
                             "--fit-steps 0, runs/<checkpoint>_<coco root> with both given)")
    parser.add_argument("--backends", default=None, type=kind("backends"),
                        help="comma-separated backends (default: the available ones among {})".format(
                            ", ".join(DEFAULT_BACKENDS)))
    parser.add_argument("--batch-sizes", default=None, type=kind("batch_sizes"),
                        help="comma-separated batch sizes for conversion and throughput (default: {} for the "
                             "embedded default, {} on a CPU host, the recipe's 1..64 with an NPU)".format(
                                 ",".join(map(str, EMBEDDED_BATCH_SIZES)), ",".join(map(str, DEFAULT_CPU_BATCH_SIZES))))
    parser.add_argument("--infer-batch-size", type=kind("infer_batch_size"), default=None,
                        help="batch size of the dataset inference, at most the images run (default: the first "
                             "batch size)")
    parser.add_argument("--height", type=kind("height"), default=None,
                        help=f"network input height (default 800; {EMBEDDED_INPUT_HW[0]} for the embedded default)")
    parser.add_argument("--width", type=kind("width"), default=None,
                        help=f"network input width (default 1216; {EMBEDDED_INPUT_HW[1]} for the embedded default)")
    parser.add_argument("--num-images", type=kind("num_images"), default=None,
                        help=f"generated images when no COCO root is given (default {EMBEDDED_NUM_IMAGES})")
    parser.add_argument("--limit", type=kind("limit"), default=None,
                        help="only the first N images by id (a labelled partial run, never the recipe's claim)")
    parser.add_argument("--score-threshold", type=kind("score_threshold"), default=None,
                        help="drop detections scoring below this (in [0, 1]) before evaluation (default: the "
                             "model's 0.05)")
    parser.add_argument("--scorer", default=DEFAULT_SCORER, type=kind("scorer"), choices=OPTION_KINDS["scorer"].values)
    parser.add_argument("--perf-loops", type=kind("perf_loops"), default=None,
                        help=f"at least this many timed pure-inference runs per batch size (default "
                             f"{DEFAULT_PERF_LOOPS})")
    parser.add_argument("--perf-min-seconds", type=kind("perf_min_seconds"), default=None,
                        help=f"and timed runs for at least this many seconds (default {DEFAULT_PERF_MIN_SECONDS:g}; "
                             "0: no minimum duration)")
    parser.add_argument("--perf-warmup", type=kind("perf_warmup"), default=None,
                        help=f"untimed warm-up runs (default {DEFAULT_PERF_WARMUP}; 0: none)")
    parser.add_argument("--parity-images", type=kind("parity_images"), default=None,
                        help=f"images of the parity batch (default {DEFAULT_PARITY_IMAGES})")
    parser.add_argument("--soc-version", default=None, type=kind("soc_version"),
                        help="atc --soc_version (default: from `npu-smi info`)")
    parser.add_argument("--precision-mode", default=DEFAULT_PRECISION_MODE, type=kind("precision_mode"),
                        choices=OPTION_KINDS["precision_mode"].values, help="atc --precision_mode")
    parser.add_argument("--extra-perf", action="append", default=[], metavar="PERF_JSON",
                        type=input_file("perf records file"),
                        help="perf records measured elsewhere (fsaf-repro perf --out), shown and gated beside "
                             "this host's; repeatable")
    _add_host_and_weight_options(parser)
    parser.set_defaults(func=_cli_reproduce)


def _add_host_and_weight_options(parser):
    """Threads, the seed, the fit and the checkpoint's trust: how this host runs and where the weights come from."""
    parser.add_argument("--threads", type=kind("threads"), default=None,
                        help="intra-op threads of the CPU backends (torch, ONNX Runtime) in the data set run and the "
                             "parity batch; default: all cores but one (the image loader's); 0: the runtimes' own")
    parser.add_argument("--perf-threads", type=kind("perf_threads"), default=None,
                        help="intra-op threads of the CPU backends in the pure-inference timing; default: all "
                             "cores; 0: the runtimes' own")
    parser.add_argument("--seed", type=kind("seed"), default=EMBEDDED_SEED, help="seed of generated weights and data")
    parser.add_argument("--fit-steps", type=kind("fit_steps"), default=None,
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
        perf_min_seconds=args.perf_min_seconds,
        parity_images=args.parity_images, seed=args.seed, soc_version=args.soc_version,
        precision_mode=args.precision_mode, extra_perf=args.extra_perf, threads=args.threads,
        perf_threads=args.perf_threads,
        trusted=args.trust_checkpoint, fit_steps=args.fit_steps,
        progress=args.progress)
    print("report: {}".format(summary["report"]))
    return 0

