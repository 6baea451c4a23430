"""The `reproduce` verb: every step this host can run, one run directory with report.md.

Its arguments are generated from fsaf_repro.reproduce_options.ReproduceOptions, where each option is
declared once (kind, default, help, path role); this module adds none of its own.
"""

from ..errors import StagesFailed
from ..options import Choice
from ..reproduce import run_reproduce
from ..reproduce_options import INPUT_DIR, INPUT_FILE, OUTPUT_DIR, ReproduceOptions, declarations, spell
from .args import HelpFormatter, input_dir, input_file, output_dir, typed

PATH_TYPES = {INPUT_FILE: input_file, INPUT_DIR: input_dir, OUTPUT_DIR: output_dir}


def register(subparsers):
    parser = subparsers.add_parser(
        "reproduce", help="run every step this host can run and write one run directory with report.md",
        description="With no argument: the embedded default (weights fitted on generated shapes - not COCO - in "
                    "the official checkpoint layout, a held-out generated mini COCO set, reduced input size): the "
                    "whole pipeline in about 4 minutes on 2 cores, most of it the fit (--fit-steps 0: seeded "
                    "weights, about a minute). "
                    "With --checkpoint and --coco-root: the recipe's run on this host. Re-running with the same "
                    "arguments reuses finished stages. Exit status 1 when a stage failed.",
        formatter_class=HelpFormatter)
    for name, default, spec in declarations():
        if spec.cli:
            _add_option(parser, name, default, spec)
    parser.set_defaults(func=_cli_reproduce)


def _add_option(parser, name, default, spec):
    """One argparse argument (two for a switch with a negation) from an option's declaration."""
    if spec.switch:
        group = parser.add_mutually_exclusive_group() if spec.negation else parser
        group.add_argument(spell(name), dest=name, action="store_true", default=default, help=spec.help)
        if spec.negation:
            group.add_argument(spec.negation, dest=name, action="store_false", help=f"instead of {spell(name)}")
        return
    kwargs = dict(dest=name, default=default, help=spec.help)
    if spec.path is not None:
        kwargs["type"] = PATH_TYPES[spec.path](spec.what)
    else:
        kwargs["type"] = typed(spec.kind)
        if isinstance(spec.kind, Choice):
            kwargs["choices"] = spec.kind.values
    if spec.repeatable:
        # argparse appends to the default it was given: a fresh list per parse, the record keeps a tuple
        kwargs.update(action="append", default=None)
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    parser.add_argument(spell(name), **kwargs)


def _cli_reproduce(args):
    given = dict((name, getattr(args, name)) for name, _, spec in declarations() if spec.cli)
    summary = run_reproduce(ReproduceOptions(**dict((k, v) for k, v in given.items() if v is not None)))
    if summary.get("dry_run"):
        return 0
    print("report: {}".format(summary["report"] or "not written (a stage it needs did not finish)"))
    failed = sorted((name, f) for name, f in (summary.get("failed") or {}).items() if f["status"] == "failed")
    if failed:
        raise StagesFailed("{} stage(s) failed, their dependents skipped, the others run: {}".format(
            len(failed), "; ".join(f"{name}: {f['reason']} (log {f['log']})" for name, f in failed)))
    return 0
