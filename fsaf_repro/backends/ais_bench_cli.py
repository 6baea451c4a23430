"""The `ais_bench` backend: the ais_bench command line run over a directory of .bin inputs.

`python3 -m ais_bench --model x.om --input dir --output out --output_dirname name --outfmt BIN
--batchsize N --device ID` (facts sheet section 3). Each call of `run(batch)` writes the batch as one
input file whose byte size equals the model's input tensor, runs the tool in a scratch directory,
and reads `<output>/<name>/<stem>_0.bin` (dets) and `<stem>_1.bin` (labels) back, with the tool's
`<name>_summary.json` kept in `last_summary`. The summary, with its `throughput`, is the tool's own
record of a finished run, so a call without it failed whatever the exit code. The scratch directory
is removed after a success and kept (and named in the error) after a failure; every call's tool log
is appended to the backend's log file (`tool_log_path`), next to the om unless told otherwise.
"""
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

from . import Availability
from .base import Backend, read_output_files
from ..errors import BackendError, OutputFormatError, ToolError

INSTALL_HINT = ("install the ais_bench and aclruntime wheels (Ascend/tools repository, "
                "ais-bench_workload/tool/ais_bench) and `source /usr/local/Ascend/ascend-toolkit/set_env.sh`")


def default_command():
    """`ais_bench` on PATH if there is one, else `python -m ais_bench` if the module is installed."""
    if shutil.which("ais_bench"):
        return ["ais_bench"]
    try:
        if importlib.util.find_spec("ais_bench") is not None:
            return [sys.executable, "-m", "ais_bench"]
    except (ImportError, ValueError):
        pass
    return None


def om_batch_size(model_path, options, backend_name):
    """The om's static batch size: from its conversion sidecar, else the `batch_size` option."""
    from ..convert import read_om_sidecar
    try:
        sidecar = read_om_sidecar(model_path)
    except ToolError as exc:
        raise BackendError("{}: {}".format(backend_name, exc)) from exc
    if sidecar is not None:
        if options.get("batch_size") not in (None, sidecar["batch_size"]):
            raise BackendError("{}: batch_size option {} contradicts {}.json (batch size {})".format(
                backend_name, options["batch_size"], model_path, sidecar["batch_size"]))
        return int(sidecar["batch_size"]), sidecar
    if options.get("batch_size") is None:
        raise BackendError("{}: {} has no conversion sidecar ({}.json); pass batch_size=N for the om's "
                           "static batch size, or convert it with `fsaf-repro convert`".format(
                               backend_name, model_path, model_path))
    return int(options["batch_size"]), None


def attach_om(backend, model_path):
    """Shared load step of the om-file CLI backends: the om must exist; its static batch size comes
    from the conversion sidecar (or the `batch_size` option); the per-run call counter restarts and
    a new section of the tool log begins (`log_path` option, else `<workdir or om folder>/<om>.<backend>.log`)."""
    model_path = os.path.abspath(str(model_path))
    if not os.path.isfile(model_path):
        raise BackendError("{}: om file {} does not exist".format(backend.name, model_path))
    backend.model_path = model_path
    backend.batch_size, backend.sidecar = om_batch_size(model_path, backend.options, backend.name)
    backend.calls = 0
    backend.tool_log_path = _open_tool_log(backend, model_path)


def begin_call(backend, batch, image_hw, scratch_prefix):
    """Shared start of an om CLI backend's `run`: the batch checked against the om's static size,
    uint8 models refused, a scratch directory made (under the `workdir` option) and the call counted.
    Returns (batch size, scratch directory)."""
    size = backend.check_batch(batch)
    if image_hw is not None:
        raise BackendError("{}: uint8 models with an image_hw input are not supported by this backend; "
                           "use aclruntime".format(backend.name))
    scratch = tempfile.mkdtemp(prefix=scratch_prefix, dir=backend.options.get("workdir"))
    backend.calls += 1
    return size, scratch


def _open_tool_log(backend, model_path):
    """Start this run's section of the tool log; returns its path.

    The log is appended to, a section per load, so that runs on the same om keep each other's
    logs. A log path the user gave (log_path, workdir) must be writable; the default place, beside
    the om, may not be (a read-only model folder), and then the system temp folder is used, with a
    warning naming it.
    """
    name = "{}.{}.log".format(os.path.basename(model_path), backend.name)
    given = backend.options.get("log_path") or (
        os.path.join(backend.options["workdir"], name) if backend.options.get("workdir") else None)
    header = "# {} on {}, loaded {}\n".format(backend.name, model_path, time.strftime("%Y-%m-%dT%H:%M:%S"))
    places = [given] if given else [os.path.join(os.path.dirname(model_path), name),
                                    os.path.join(tempfile.gettempdir(), name)]
    failures = []
    for place in places:
        place = os.path.abspath(str(place))
        try:
            with open(place, "a") as handle:
                handle.write(header)
        except OSError as exc:
            failures.append("{} ({})".format(place, exc.strerror or exc))
            continue
        if failures:
            warnings.warn("{}: cannot write the tool log {}; writing it to {}".format(
                backend.name, failures[0], place), RuntimeWarning, stacklevel=3)
        return place
    raise BackendError("{}: cannot write the tool log {}; pass log_path=FILE or workdir=DIR (backend options) "
                       "for a writable place".format(backend.name, "; ".join(failures)))


def keep_tool_log(backend, call_log_path):
    """Append one call's tool log (in a scratch directory about to be removed) to the backend's log.

    Called also while a tool error is on its way up: a failure to write here only warns, so that
    the tool's own error is the one reported.
    """
    try:
        with open(call_log_path) as source:
            text = source.read()
    except OSError:
        text = "(the tool wrote no log at {})\n".format(call_log_path)
    try:
        with open(backend.tool_log_path, "a") as handle:
            handle.write("## call {}\n{}".format(backend.calls, text if text.endswith("\n") else text + "\n"))
    except OSError as exc:
        warnings.warn("{}: could not append call {}'s log to {} ({}); it is in {}".format(
            backend.name, backend.calls, backend.tool_log_path, exc.strerror or exc, call_log_path),
            RuntimeWarning, stacklevel=2)


class AisBenchCliBackend(Backend):
    """Options: command (argv prefix), device_id, workdir (scratch parent and tool log folder), log_path
    (the tool log), timeout, keep_scratch, batch_size (for an om without sidecar)."""

    name = "ais_bench"

    @classmethod
    def availability(cls):
        if default_command() is None:
            return Availability(False, "neither an `ais_bench` executable nor the ais_bench module is "
                                       "installed; " + INSTALL_HINT)
        return Availability(True, "")

    def load(self, model_path):
        attach_om(self, model_path)
        command = self.options.get("command") or default_command()
        if not command:
            raise BackendError("{}: no ais_bench command; {}".format(self.name, INSTALL_HINT))
        self.command = [command] if isinstance(command, str) else list(command)
        self.last_summary = None
        return self

    def run(self, batch, image_hw=None):
        from ..convert import run_tool
        size, scratch = begin_call(self, batch, image_hw, "ais_bench_")
        stem = "batch_{:06d}".format(self.calls)
        in_dir, out_dir = os.path.join(scratch, "input"), os.path.join(scratch, "output")
        os.makedirs(in_dir)
        os.makedirs(out_dir)
        batch.tofile(os.path.join(in_dir, stem + ".bin"))
        argv = self.command + ["--model", self.model_path, "--input", in_dir, "--output", out_dir,
                               "--output_dirname", "run", "--outfmt", "BIN", "--batchsize", str(size),
                               "--device", str(self.options.get("device_id", 0))]
        dets_path = os.path.join(out_dir, "run", stem + "_0.bin")
        labels_path = os.path.join(out_dir, "run", stem + "_1.bin")
        log_path = os.path.join(scratch, "ais_bench.log")
        try:
            try:
                run_tool(argv, cwd=scratch, log_path=log_path, artifacts=[dets_path, labels_path],
                         timeout=self.options.get("timeout"), tool_name="ais_bench", setup_hint=INSTALL_HINT)
            finally:
                keep_tool_log(self, log_path)
            outputs = read_output_files(dets_path, labels_path, size, "ais_bench output of " + self.model_path)
            self.last_summary = read_summary(os.path.join(out_dir, "run_summary.json"), log_path)
        except (ToolError, OutputFormatError) as exc:
            raise type(exc)("{} (scratch directory kept: {})".format(exc, scratch)) from None
        if not self.options.get("keep_scratch"):
            shutil.rmtree(scratch, ignore_errors=True)
        return outputs


def read_summary(summary_path, log_path):
    """ais_bench's `<dirname>_summary.json`: it must exist and hold a numeric `throughput`."""
    if not os.path.isfile(summary_path):
        raise ToolError("ais_bench: exited 0 and wrote its outputs but no summary {}, its record of a finished "
                        "run; treating the call as failed; log: {}".format(summary_path, log_path))
    try:
        with open(summary_path) as handle:
            summary = json.load(handle)
    except ValueError as exc:
        raise OutputFormatError("ais_bench summary {} is not valid JSON ({})".format(summary_path, exc))
    throughput = summary.get("throughput") if isinstance(summary, dict) else None
    if isinstance(throughput, bool) or not isinstance(throughput, (int, float)):
        raise OutputFormatError("ais_bench summary {} has no numeric `throughput` (got {!r})".format(
            summary_path, throughput))
    return summary
