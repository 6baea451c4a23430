"""The `make-checkpoint` verb: seeded weights in the official layout, or (--fit-generated) weights fitted
on a generated set with FSAF's training rule."""
from ..checkpoint import write_seeded_checkpoint
from ..fileio import file_sha256
from ..options import NON_NEGATIVE_INT, SEED, THREADS, TIMEOUT
from ..fit_progress import PROGRESS_INTERVAL_S, FitReporting
from ..train import DEFAULTS, PARAMETER_HELP, PARAMETER_KINDS, fit_generated
from .args import output_file, typed


def register(subparsers):
    parser = subparsers.add_parser(
        "make-checkpoint",
        help="write seeded FSAF weights in the official checkpoint layout (a stand-in for "
             "fsaf_r50_fpn_1x_coco-94ccc51f.pth where it is absent)")
    parser.add_argument("output", type=output_file("checkpoint file"), help="path of the .pth file to write")
    parser.add_argument("--seed", type=typed(SEED), default=0, help="seed of the weights (default: 0)")
    _add_fit_arguments(parser)
    parser.set_defaults(func=_cli_make_checkpoint)


def _cli_make_checkpoint(args):
    if args.fit_generated:
        return _cli_fit_generated(args)
    write_seeded_checkpoint(args.output, args.seed)
    print(f"wrote seeded checkpoint {args.output} (sha256 {file_sha256(args.output)})")
    return 0


def _add_fit_arguments(parser):
    group = parser.add_argument_group("--fit-generated (weights that detect on generated images)")
    group.add_argument("--fit-generated", action="store_true",
                       help="fit neck and head with FSAF's training rule on a generated set (style 'classes') "
                            "instead of writing untrained seeded weights")
    group.add_argument("--data-seed", type=typed(SEED), default=1000, help="seed of the generated training set")
    group.add_argument("--eval-images", type=typed(NON_NEGATIVE_INT), default=0,
                       help="score on a held-out generated set of this many images (seed --data-seed + 1); "
                            "0 (the default): no held-out scoring")
    group.add_argument("--threads", type=typed(THREADS), default=None,
                       help="torch intra-op threads (default: torch's own count)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--progress-interval", type=typed(TIMEOUT), default=PROGRESS_INTERVAL_S, metavar="SECONDS",
                       help="seconds between the fit's progress lines (step, loss, elapsed, ETA) on stderr")
    # the fit's own declarations (fsaf_repro.train.PARAMETER_KINDS): the same kinds fit_parameters checks
    for name in ("train_images", "steps", "batch_size", "channels", "height", "width", "warmup_steps",
                 "max_objects", "lr", "feature_dropout", "optimizer"):
        kind = PARAMETER_KINDS[name]
        group.add_argument("--" + name.replace("_", "-"), type=typed(kind), default=DEFAULTS[name], dest="fit_" + name,
                           help=f"{PARAMETER_HELP[name]}: {kind.describe}")


def _cli_fit_generated(args):
    overrides = {key[len("fit_"):]: value for key, value in vars(args).items() if key.startswith("fit_")
                 and key != "fit_generated"}
    summary = fit_generated(args.output, seed=args.seed, data_seed=args.data_seed, eval_images=args.eval_images,
                            threads=args.threads,
                            reporting=FitReporting(bar=not args.no_progress, interval_s=args.progress_interval),
                            **overrides)
    last = summary["history"][-1] if summary["history"] else {}
    line = "wrote fitted checkpoint {} ({} steps in {:.0f} s, {:.2f} steps/s".format(
        args.output, summary["params"]["steps"], summary["wall_s"], summary["steps_per_s"])
    if "ap" in last:
        line += "; held-out AP {:.3f} AP50 {:.3f}".format(last["ap"], last["ap50"])
    print(line + ")")
    return 0
