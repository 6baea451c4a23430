"""Argument types and small parsers shared by the verbs.

The path types run fsaf_repro.fileio's checks while the arguments are parsed, so a bad path is
refused (PathError, printed as one line by `main`) before any work: a run does not load a model or
process a data set only to fail on its first or last write.
"""

from ..errors import DataError
from ..jsonio import MAX_DEPTH, nesting_depth, parse_json
from ..fileio import check_input_dir, check_input_file, check_input_path, check_output_dir, check_output_file


def _path_type(check, what):
    def check_argument(text):
        return check(text, what)
    check_argument.__name__ = what.replace(" ", "_")  # argparse names the type by it in its messages
    return check_argument


def input_file(what="input file"):
    """An argparse `type` that checks a file to read at parse time."""
    return _path_type(check_input_file, what)


def input_dir(what="input folder"):
    return _path_type(check_input_dir, what)


def input_path(what="input"):
    return _path_type(check_input_path, what)


def output_file(what="output file"):
    return _path_type(check_output_file, what)


def output_dir(what="output folder"):
    return _path_type(check_output_dir, what)


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
