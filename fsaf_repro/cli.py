"""The `fsaf-repro` command line: one verb per step of the recipe.

Each stage module registers its own verbs through `register_cli(subparsers)`, so the argument
definitions live beside the code they drive. Verb handlers take the parsed namespace and return an
exit status.
"""
import argparse
import importlib
import sys

from . import __version__
from .errors import FsafReproError

# Stage modules in the recipe's order; each defines register_cli(subparsers).
STAGE_MODULES = [
    # Keep the recipe's order: checkpoint, export, convert, synthetic, data, runner, postprocess,
    # evaluate, perf, reproduce. A module is listed once it defines register_cli.
    "fsaf_repro.checkpoint",
    "fsaf_repro.export",
    "fsaf_repro.convert",
    "fsaf_repro.synthetic",
    "fsaf_repro.data",
    "fsaf_repro.runner",
    "fsaf_repro.postprocess",
    "fsaf_repro.evaluate",
    "fsaf_repro.perf",
    "fsaf_repro.reproduce",
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fsaf-repro",
        description="Reproduce the Ascend ModelZoo FSAF recipe: export, convert, preprocess, infer, "
                    "evaluate and benchmark mmdetection's FSAF R50-FPN detector.")
    parser.add_argument("--version", action="version", version="fsaf-repro " + __version__)
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for module_name in STAGE_MODULES:
        module = importlib.import_module(module_name)
        module.register_cli(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FsafReproError as exc:
        sys.stderr.write("fsaf-repro {}: error: {}\n".format(args.verb, exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
