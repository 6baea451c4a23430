"""Path roles: an output must never be an input.

Each path a command takes has a role, input or output, declared once with the path itself: on the
command line by its argument type (fsaf_repro.cli.args input_file, output_dir, ...; `declared_paths`
reads them off a verb's parser), in the library by the caller's list (run_reproduce: the run directory
against the checkpoint and the COCO root). Before any work, `check_path_roles` refuses an output that
- is an input after symlinks (os.path.realpath),
- is the same file as an input (st_dev and st_ino: a hard link, a bind mount), or
- lies inside an input folder (a write there could replace the input's files),
with a one-line PathRoleError naming both options and both paths.
"""
import os
from collections import namedtuple
from typing import Iterable, List, Optional

from .errors import PathRoleError

INPUT = "input"
OUTPUT = "output"

# option: how the user gave it ("--out", "output"); role: INPUT or OUTPUT; path: the value
RolePath = namedtuple("RolePath", ["option", "role", "path"])


def declared_paths(parser, args) -> List[RolePath]:
    """The paths of a parsed verb, each with the role its argument type declares (`path_role`)."""
    paths = []
    for action in parser._actions:  # argparse keeps no public list of a parser's arguments
        role = getattr(action.type, "path_role", None)
        value = getattr(args, action.dest, None)
        if role is None or value is None:
            continue
        option = max(action.option_strings, key=len) if action.option_strings else action.dest
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path is not None:
                paths.append(RolePath(option, role, str(path)))
    return paths


def _stat(path):
    try:
        return os.stat(path)
    except OSError:
        return None


def _same(stat_a, stat_b):
    return stat_a is not None and stat_b is not None and (stat_a.st_dev, stat_a.st_ino) == (stat_b.st_dev,
                                                                                            stat_b.st_ino)


def _inside(output_real, input_real, input_stat):
    """True when `output_real` lies under the folder `input_real`, by path or by the inode of one of its
    existing ancestors (a bind mount or a second path to the same folder)."""
    if output_real.startswith(input_real.rstrip(os.sep) + os.sep):
        return True
    current = os.path.dirname(output_real)
    while True:
        if _same(_stat(current), input_stat):
            return True
        above = os.path.dirname(current)
        if above == current:
            return False
        current = above


def alias_reason(output: str, input_path: str) -> Optional[str]:
    """Why writing `output` could change `input_path` (a few words), or None when it cannot."""
    output_real, input_real = os.path.realpath(output), os.path.realpath(input_path)
    if output_real == input_real:
        return "is the same path (after symlinks) as"
    input_stat = _stat(input_real)
    if _same(_stat(output_real), input_stat):
        return "is the same file (same device and inode) as"
    if os.path.isdir(input_real) and _inside(output_real, input_real, input_stat):
        return "lies inside"
    return None


def check_path_roles(paths: Iterable[RolePath], command: str = "") -> None:
    """Refuse (PathRoleError) the first output that aliases an input; see the module docstring."""
    paths = list(paths)
    inputs = [p for p in paths if p.role == INPUT]
    for output in (p for p in paths if p.role == OUTPUT):
        for source in inputs:
            reason = alias_reason(output.path, source.path)
            if reason:
                where = f"{command}: " if command else ""
                raise PathRoleError(
                    f"{where}output {output.option} {output.path} {reason} input {source.option} {source.path}: "
                    f"writing it would change the input; give {output.option} a path outside the inputs")
