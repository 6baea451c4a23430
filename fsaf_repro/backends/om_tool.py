"""What the om command-line tool backends (`benchmark`, `ais_bench`) share: `OmToolBackend`.

Both run an atc-built om through an external tool, one call per batch, in a scratch directory:
- load: the om must exist; its static batch size comes from its conversion sidecar (`<om>.json`,
  written by `fsaf-repro convert`) or the `batch_size` option; the call counter restarts and a new
  section of the tool log begins (`log_path` option, else `<workdir or om folder>/<om>.<backend>.log`);
- each call: the batch checked against the om's static size, uint8 models (image_hw) refused, a scratch
  directory made under the `workdir` option, and the call's tool log appended to the backend's log.
Subclasses implement `availability`, `load` (calling `attach_om` first) and `run` (calling
`begin_call` first and `keep_tool_log` when the tool has run).
"""
import os
import re
import tempfile
import time
import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .base import OmBackend
from ..errors import BackendError, ResultsError, ToolError
from ..options import BATCH_SIZE, BOOLEAN, NON_NEGATIVE_INT, TEXT, TIMEOUT


# a decimal number as the tools print it (sign, fraction and exponent optional)
NUMBER_PATTERN = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def read_tool_text(path_or_text, what):
    """(text, path) of a tool output given as a file path or as the text itself (ResultsError naming
    the path when it is a folder, unreadable or missing)."""
    if "\n" in path_or_text:
        return path_or_text, None
    if os.path.isdir(path_or_text):
        raise ResultsError(f"{path_or_text} is a directory; give the {what} file")
    if os.path.isfile(path_or_text):
        try:
            with open(path_or_text) as handle:
                return handle.read(), path_or_text
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsError(f"{path_or_text} cannot be read as {what} ({exc})") from None
    if path_or_text.strip() and not re.search(r"throughput", path_or_text, re.IGNORECASE):
        raise ResultsError(f"{path_or_text}: no such file (expected the {what})")
    return path_or_text, None



def refuse_line(source, number, line, expected):
    """The error for a tool output line that is none of the forms its reader knows: quoted, never skipped."""
    return ResultsError(f"{source} line {number}: expected {expected}; got: {line!r}")


def om_batch_size(model_path: str, options: Dict[str, Any], backend_name: str) -> Tuple[int, Optional[dict]]:
    """The om's static batch size and its sidecar: from its conversion sidecar, else the `batch_size`
    option."""
    from ..convert import read_om_sidecar
    try:
        sidecar = read_om_sidecar(model_path)
    except ToolError as exc:
        raise BackendError(f"{backend_name}: {exc}") from exc
    if sidecar is not None:
        if options.get("batch_size") not in (None, sidecar["batch_size"]):
            raise BackendError("{}: batch_size option {} contradicts {}.json (batch size {})".format(
                backend_name, options["batch_size"], model_path, sidecar["batch_size"]))
        return int(sidecar["batch_size"]), sidecar
    if options.get("batch_size") is None:
        raise BackendError(f"{backend_name}: {model_path} has no conversion sidecar ({model_path}.json); pass "
                           "batch_size=N for the om's static batch size, or convert it with `fsaf-repro convert`")
    return int(options["batch_size"]), None


class OmToolBackend(OmBackend):
    """An om run by an external command-line tool, one call per batch (see the module docstring).

    Options shared by the tools: workdir (scratch parent and tool log folder), log_path (the tool
    log), timeout, keep_scratch, batch_size (for an om without sidecar), device_id.
    """

    device_option = "device_id"
    option_kinds = {"workdir": TEXT, "log_path": TEXT, "timeout": TIMEOUT, "keep_scratch": BOOLEAN,
                    "batch_size": BATCH_SIZE, "device_id": NON_NEGATIVE_INT}

    def attach_om(self, model_path: str) -> None:
        """The shared load step: check the om, take its static batch size, start the tool log."""
        model_path = os.path.abspath(str(model_path))
        if not os.path.isfile(model_path):
            raise BackendError(f"{self.name}: om file {model_path} does not exist")
        self.model_path = model_path
        self.batch_size, self.sidecar = om_batch_size(model_path, self.options, self.name)
        self.calls = 0
        self.tool_log_path = self._open_tool_log(model_path)

    def begin_call(self, batch: np.ndarray, image_hw: Optional[np.ndarray], scratch_prefix: str) -> Tuple[int, str]:
        """The shared start of `run`: the batch checked, uint8 models refused, a scratch directory made
        (under the `workdir` option) and the call counted. Returns (batch size, scratch directory)."""
        size = self.check_batch(batch)
        if image_hw is not None:
            raise BackendError(f"{self.name}: uint8 models with an image_hw input are not supported by this "
                               "backend; use aclruntime")
        scratch = tempfile.mkdtemp(prefix=scratch_prefix, dir=self.options.get("workdir"))
        self.calls += 1
        return size, scratch

    def _open_tool_log(self, model_path: str) -> str:
        """Start this run's section of the tool log; returns its path.

        The log is appended to, a section per load, so that runs on the same om keep each other's
        logs. A log path the user gave (log_path, workdir) must be writable; the default place, beside
        the om, may not be (a read-only model folder), and then the system temp folder is used, with a
        warning naming it.
        """
        name = f"{os.path.basename(model_path)}.{self.name}.log"
        given = self.options.get("log_path") or (
            os.path.join(self.options["workdir"], name) if self.options.get("workdir") else None)
        header = "# {} on {}, loaded {}\n".format(self.name, model_path, time.strftime("%Y-%m-%dT%H:%M:%S"))
        places = [given] if given else [os.path.join(os.path.dirname(model_path), name),
                                        os.path.join(tempfile.gettempdir(), name)]
        failures = []
        for place in places:
            place = os.path.abspath(str(place))
            try:
                with open(place, "a") as handle:
                    handle.write(header)
            except OSError as exc:
                failures.append(f"{place} ({exc.strerror or exc})")
                continue
            if failures:
                warnings.warn(f"{self.name}: cannot write the tool log {failures[0]}; writing it to {place}",
                              RuntimeWarning, stacklevel=3)
            return place
        raise BackendError("{}: cannot write the tool log {}; pass log_path=FILE or workdir=DIR (backend options) "
                           "for a writable place".format(self.name, "; ".join(failures)))

    def keep_tool_log(self, call_log_path: str) -> None:
        """Append one call's tool log (in a scratch directory about to be removed) to the backend's log.

        Called also while a tool error is on its way up: a failure to write here only warns, so that
        the tool's own error is the one reported.
        """
        try:
            with open(call_log_path) as source:
                text = source.read()
        except OSError:
            text = f"(the tool wrote no log at {call_log_path})\n"
        try:
            with open(self.tool_log_path, "a") as handle:
                handle.write("## call {}\n{}".format(self.calls, text if text.endswith("\n") else text + "\n"))
        except OSError as exc:
            warnings.warn(f"{self.name}: could not append call {self.calls}'s log to {self.tool_log_path} "
                          f"({exc.strerror or exc}); it is in {call_log_path}", RuntimeWarning, stacklevel=2)
