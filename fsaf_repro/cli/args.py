"""Argument types and small parsers shared by the verbs.

The path types run fsaf_repro.fileio's checks while the arguments are parsed, so a bad path is
refused (PathError, printed as one line by `main`) before any work: a run does not load a model or
process a data set only to fail on its first or last write.
"""
import argparse
import re

from ..errors import DataError, OptionError
from ..jsonio import MAX_DEPTH, nesting_depth, parse_json
from ..fileio import check_input_dir, check_input_file, check_input_path, check_output_dir, check_output_file
from ..options import TEXT, OptionKind
from ..pathroles import INPUT, OUTPUT


# A help text's mention of a default ("(default: X)", "default: X"), not the name of the embedded default
# run ("for the embedded default", "runs/embedded-default") nor a value named 'default' (a style).
DEFAULT_MENTION = re.compile(r"(?<!embedded[ -])(?<!')\bdefault\b(?!')", re.IGNORECASE)


class HelpFormatter(argparse.HelpFormatter):
    """Every verb's help formatter (set on each subparser by `fsaf_repro.cli.build_parser`): an option's
    default is shown once, as `(default: X)`, unless its help already says its default in words (argparse's
    ArgumentDefaultsHelpFormatter appends one even then, and `(default: None)` for an option whose absence
    means something the help explains); a required option is marked `(required)`."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.help is argparse.SUPPRESS:
            return text
        if action.option_strings and action.required and "required" not in text:
            text += " (required)"
        if _shows_default(action) and not DEFAULT_MENTION.search(text):
            text += " (default: %(default)s)"
        return text


def _shows_default(action):
    """Whether an option's default is worth printing: a value, not absence (None), an unset flag, an
    empty list of repeated values or argparse's own SUPPRESS."""
    default = action.default
    # by identity: 0 == False, and a default of 0 (a seed, a device id) is a value worth showing
    absent = default is None or default is False or default is argparse.SUPPRESS or default == []
    return bool(action.option_strings) and not action.required and not absent and action.nargs != 0


def _path_type(check, what, role, form):
    def check_argument(text):
        return check(text, what)
    check_argument.__name__ = what.replace(" ", "_")  # argparse names the type by it in its messages
    # the path's role, read by fsaf_repro.pathroles.declared_roles: an output must not alias an input
    check_argument.path_role = role
    check_argument.path_form = form  # "file", "dir" or "any"
    check_argument.what = what
    return check_argument


def input_file(what="input file"):
    """An argparse `type` that checks a file to read at parse time."""
    return _path_type(check_input_file, what, INPUT, "file")


def input_dir(what="input folder"):
    return _path_type(check_input_dir, what, INPUT, "dir")


def input_path(what="input"):
    return _path_type(check_input_path, what, INPUT, "any")


def output_file(what="output file"):
    return _path_type(check_output_file, what, OUTPUT, "file")


def output_dir(what="output folder"):
    return _path_type(check_output_dir, what, OUTPUT, "dir")


def output_place(what="output folder"):
    """An output folder given as text, checked only when written (a default that may go unused)."""
    def place(text):
        return TEXT.check(text, None)
    return _named_output(place, what)




def _named_output(function, what):
    function.__name__ = what.replace(" ", "_")
    function.path_role, function.path_form, function.what = OUTPUT, "dir", what
    return function


def typed(kind: OptionKind):
    """An argparse `type` from a declared option kind (fsaf_repro.options): a value of the wrong type or
    out of range is argparse's one-line error (exit 2) naming the option and the declared range."""
    def parse(text):
        try:
            return kind(text)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = type(kind).__name__.lower()
    parse.kind = kind  # the declaration, for the test that every option has one
    return parse


class KeyValue(OptionKind):
    """`KEY=VALUE` (a backend option): a non-empty key; the value is read by parse_backend_options."""

    describe = "KEY=VALUE"

    def check(self, value, option):
        if not isinstance(value, str) or "=" not in value or not value.split("=", 1)[0].strip():
            raise self.refuse(value, option)
        return value


class BackendName(OptionKind):
    """A registered backend's name (the registry is asked when the value is parsed, so a plugin's
    registration counts)."""

    describe = "a registered backend name"

    def check(self, value, option):
        from ..backends import backend_names
        if value not in backend_names():
            raise OptionError("{}unknown backend {!r}; known backends: {}".format(
                f"{option}: " if option else "", value, ", ".join(backend_names())))
        return value


KEY_VALUE = KeyValue()
BACKEND_NAME = BackendName()


def parse_backend_options(pairs):
    """`KEY=VALUE` strings -> dict; values are JSON when they parse (numbers, true/false), else strings."""
    options = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise DataError(f"--backend-option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = parse_json(value, DataError, f"--backend-option {key.strip()}")
        except DataError:
            if nesting_depth(value.encode("utf-8", "surrogatepass")) > MAX_DEPTH:
                raise  # not a value any backend takes, as JSON or as text
            options[key.strip()] = value
    return options
