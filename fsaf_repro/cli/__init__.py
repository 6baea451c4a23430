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
from ..pathroles import check_path_roles, declared_paths
from .args import HelpFormatter

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
    for verb_parser in subparsers.choices.values():
        # one help convention for every verb (fsaf_repro.cli.args.HelpFormatter), whichever its module names
        verb_parser.formatter_class = HelpFormatter
    return parser


# What to do about an operating-system error that reached the command line (the verbs check their
# paths first; this covers what changes during a run, such as a full disk or a folder made read-only).
OS_ERROR_ADVICE = {
    errno.EACCES: "fix its permissions or choose another location",
    errno.EPERM: "fix its permissions or choose another location",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.ENOSPC: "the disk is full: free space or choose another location",
    errno.EDQUOT: "the disk quota is used up: free space or choose another location",
    errno.EFBIG: "the file is too large for this file system: choose another location",
    errno.ENAMETOOLONG: "the path or a name in it is too long: choose a shorter path",
    errno.ELOOP: "the path has a symbolic link loop: fix the links or choose another path",
    errno.EIO: "the device reported an I/O error: check the disk or the network mount, then retry",
    errno.EISDIR: "a folder is where a file is expected: give a file path",
    errno.ENOTDIR: "a file is where a folder is expected: choose another path",
    errno.ENOENT: "check the path",
}

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a process stopped by Ctrl-C


def _os_error_line(exc):
    """One line for an OSError, or None for one that is not about a file and has no advice (a fault of
    this program, whose traceback is wanted)."""
    advice = OS_ERROR_ADVICE.get(exc.errno)
    if exc.filename is None:
        return None if advice is None else f"{exc.strerror or exc} (the system named no file); {advice}"
    path = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"cannot use {path}: {exc.strerror or exc}; {advice or 'check the path and retry'}"


def _verb_parser(parser, verb):
    for action in parser._actions:  # argparse keeps its subparsers only there
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[verb]
    raise LookupError(verb)


def main(argv=None):
    """The command line's one error boundary: an FsafReproError or an OSError about a file is one line
    on stderr and exit 1, Ctrl-C one line and exit 130; files already finished stay as they are (each
    write is atomic) and the writers remove their scratch as the exception passes (try/finally)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    program = "fsaf-repro " + verb if verb else "fsaf-repro"
    try:
        return _run(argv)
    except KeyboardInterrupt:
        sys.stderr.write(f"{program}: interrupted; finished outputs are kept, unfinished ones removed (run the "
                         "same command again to continue)\n")
        return INTERRUPTED_EXIT
    except FsafReproError as exc:
        sys.stderr.write(f"{program}: error: {exc}\n")
        return 1
    except OSError as exc:
        line = _os_error_line(exc)
        if line is None:
            raise
        sys.stderr.write(f"{program}: error: {line}\n")
        return 1


def _run(argv):
    parser = build_parser()
    # path arguments are checked while parsing (fsaf_repro.cli.args input_file & co) and option values
    # against their declared kinds (fsaf_repro.options): a bad path or value is refused before any work
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # an output that is one of the verb's inputs (or inside an input folder) is refused before any work
    check_path_roles(declared_paths(_verb_parser(parser, args.verb), args))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
