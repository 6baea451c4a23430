"""The `fsaf-repro` command line: one verb per step of the recipe.

One module of this package per verb or group of verbs; each defines `register(subparsers)`, parses
its arguments and calls library functions. Library modules know nothing of the command line (no
argparse outside this package). Verb handlers take the parsed namespace and return an exit status.
"""
import argparse
import errno
import importlib
import sys

from .. import __version__
from ..errors import FsafReproError

# The verb modules in the recipe's order (the order `--help` lists the verbs in), each defining
# register(subparsers). Imported when the parser is built, so that importing fsaf_repro.cli (for
# fsaf_repro.cli.args, say) loads no stage module.
VERB_MODULES = [
    "checkpoint",   # make-checkpoint
    "export",       # export
    "convert",      # convert
    "dataset",      # make-dataset
    "preprocess",   # preprocess, info
    "infer",        # infer
    "postprocess",  # postprocess
    "evaluate",     # evaluate
    "perf",         # perf, gates
    "reproduce",    # reproduce
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fsaf-repro",
        description="Reproduce the Ascend ModelZoo FSAF recipe: export, convert, preprocess, infer, "
                    "evaluate and benchmark mmdetection's FSAF R50-FPN detector.")
    parser.add_argument("--version", action="version", version="fsaf-repro " + __version__)
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for module_name in VERB_MODULES:
        importlib.import_module("." + module_name, __name__).register(subparsers)
    return parser


# What to do about an operating-system error that reached the command line (the verbs check their
# paths first; this covers what changes during a run, such as a full disk or a folder made read-only).
OS_ERROR_ADVICE = {
    errno.EACCES: "fix its permissions or choose another location",
    errno.EPERM: "fix its permissions or choose another location",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.ENOSPC: "the disk is full: free space or choose another location",
    errno.EISDIR: "a folder is where a file is expected: give a file path",
    errno.ENOTDIR: "a file is where a folder is expected: choose another path",
    errno.ENOENT: "check the path",
}


def _os_error_line(exc):
    path = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    advice = OS_ERROR_ADVICE.get(exc.errno, "check the path and retry")
    return f"cannot use {path}: {exc.strerror or exc}; {advice}"


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # path arguments are checked while parsing (fsaf_repro.cli.args input_file & co): a bad path is
        # refused before any work
        args = parser.parse_args(argv)
    except FsafReproError as exc:
        verb = next((a for a in argv if not a.startswith("-")), None)
        program = "fsaf-repro " + verb if verb else "fsaf-repro"
        sys.stderr.write(f"{program}: error: {exc}\n")
        return 1
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FsafReproError as exc:
        sys.stderr.write(f"fsaf-repro {args.verb}: error: {exc}\n")
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise  # not about a path: a fault of this program, whose traceback is wanted
        sys.stderr.write(f"fsaf-repro {args.verb}: error: {_os_error_line(exc)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
