"""The `ais_bench` backend: the ais_bench command line run over a directory of .bin inputs.

`python3 -m ais_bench --model x.om --input dir --output out --outfmt BIN --batchsize N --device ID`
(the ais_bench README, Ascend/tools repository, ais-bench_workload/tool/ais_bench). Each call of
`run(batch)` writes the batch as one input file whose byte size equals the model's input tensor, runs
the tool in a scratch directory, finds the one output folder the tool made under `out` (named by the
time) and its summary, in either published layout (ais_bench: `<folder>_summary.json` beside it;
ais_infer: `sumary.json` inside it), and reads the two output files (dets, labels) the summary's
`filesinfo` names for that input. The summary is kept in `last_summary`. The summary, with its
`throughput`, is the tool's own record of a finished run, so a call without it failed whatever the exit
code. The scratch directory is removed after a success and kept (and named in the error) after a
failure; every call's tool log is appended to the backend's log file (`tool_log_path`), next to the om
unless told otherwise.
"""
import importlib.util
import math
import os
import re
import shutil
import sys

from .base import Availability, read_output_files
from .om_tool import NUMBER_PATTERN, OmToolBackend, read_tool_text, refuse_line
from ..errors import BackendError, OutputFormatError, ResultsError, ToolError
from ..jsonio import load_json, parse_json
from ..options import OfType
from ..tools import run_tool

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


class AisBenchCliBackend(OmToolBackend):
    """Options: command (argv prefix), device_id, workdir (scratch parent and tool log folder), log_path
    (the tool log), timeout, keep_scratch, batch_size (for an om without sidecar)."""

    name = "ais_bench"
    option_kinds = dict(OmToolBackend.option_kinds,
                        command=OfType((str, list, tuple), "a command: text or a list of arguments"))

    @classmethod
    def availability(cls):
        if default_command() is None:
            return Availability(False, "neither an `ais_bench` executable nor the ais_bench module is "
                                       "installed; " + INSTALL_HINT)
        return Availability(True, "")

    def load(self, model_path):
        self.attach_om(model_path)
        command = self.options.get("command") or default_command()
        if not command:
            raise BackendError(f"{self.name}: no ais_bench command; {INSTALL_HINT}")
        self.command = [command] if isinstance(command, str) else list(command)
        self.last_summary = None
        return self

    def run(self, batch, image_hw=None):
        size, scratch = self.begin_call(batch, image_hw, "ais_bench_")
        stem = f"batch_{self.calls:06d}"
        in_dir, out_dir = os.path.join(scratch, "input"), os.path.join(scratch, "output")
        os.makedirs(in_dir)
        os.makedirs(out_dir)
        input_path = os.path.join(in_dir, stem + ".bin")
        batch.tofile(input_path)
        argv = self.command + ["--model", self.model_path, "--input", in_dir, "--output", out_dir,
                               "--outfmt", "BIN", "--batchsize", str(size),
                               "--device", str(self.options.get("device_id", 0))]
        log_path = os.path.join(scratch, "ais_bench.log")
        origin = "ais_bench output of " + self.model_path
        try:
            try:
                run_tool(argv, cwd=scratch, log_path=log_path, timeout=self.options.get("timeout"),
                         tool_name="ais_bench", setup_hint=INSTALL_HINT)
            finally:
                self.keep_tool_log(log_path)
            run_dir = find_run_dir(out_dir, log_path)
            summary_path, summary = run_summary(run_dir, log_path)
            dets_path, labels_path = output_files(summary, summary_path, input_path, run_dir, 2)
            outputs = read_output_files(dets_path, labels_path, size, origin)
            self.last_summary = summary
        except (ToolError, OutputFormatError) as exc:
            raise type(exc)(f"{exc} (scratch directory kept: {scratch})") from None
        if not self.options.get("keep_scratch"):
            shutil.rmtree(scratch, ignore_errors=True)
        return outputs


# ais_bench writes its summary as `<dirname>_summary.json` beside the output folder; ais_infer (its
# predecessor, 2022) wrote `sumary.json` (sic) inside it and knew no --output_dirname, naming the
# folder by the time (`2022_12_01-10_20_30`). Both layouts are read; the backend passes no
# --output_dirname so that either version runs, and finds the one folder the run made.
SUMMARY_SUFFIX = "_summary.json"
OLD_SUMMARY_NAME = "sumary.json"
# folders ais_bench puts beside the output folder for --dump / --profiler
NOT_RUN_FOLDERS = ("dump", "profiler")


def summary_paths(run_dir):
    """Where a run folder's summary may be: the ais_bench place, then the ais_infer one."""
    run_dir = os.path.normpath(str(run_dir))
    return [run_dir + SUMMARY_SUFFIX, os.path.join(run_dir, OLD_SUMMARY_NAME)]


def find_run_dir(output_root, log_path=None):
    """The one output folder an ais_bench/ais_infer run made under its --output folder."""
    runs = sorted(name for name in os.listdir(output_root)
                  if os.path.isdir(os.path.join(output_root, name)) and name not in NOT_RUN_FOLDERS)
    if len(runs) != 1:
        raise ToolError("ais_bench: expected one output folder (e.g. 2022_12_01-10_20_30) in {}, found {}{}".format(
            output_root, "none" if not runs else "{} ({})".format(len(runs), ", ".join(runs)),
            f"; log: {log_path}" if log_path else ""))
    return os.path.join(output_root, runs[0])


def run_summary(run_dir, log_path=None):
    """(summary path, checked summary) of one output folder, in either layout."""
    candidates = summary_paths(run_dir)
    found = [c for c in candidates if os.path.isfile(c)]
    if not found:
        raise ToolError("ais_bench: no summary for the output folder {}: expected {} (ais_bench) or {} "
                        "(ais_infer), the tool's record of a finished run{}".format(
                            run_dir, candidates[0], candidates[1], f"; log: {log_path}" if log_path else ""))
    return found[0], read_summary(found[0], log_path)


def summary_of_output(path, log_path=None):
    """(summary path, checked summary) of an output folder, or of an --output folder holding one run."""
    path = os.path.normpath(str(path))
    if any(os.path.isfile(c) for c in summary_paths(path)):
        return run_summary(path, log_path)
    runs = [name for name in os.listdir(path)
            if os.path.isdir(os.path.join(path, name)) and name not in NOT_RUN_FOLDERS]
    if len(runs) > 1:
        return run_summary(find_run_dir(path, log_path), log_path)  # names the several folders
    return run_summary(os.path.join(path, runs[0]) if runs else path, log_path)


def read_summary(summary_path, log_path=None):
    """An ais_bench summary json (either name): it must exist and be a checked summary (`check_summary`)."""
    if not os.path.isfile(summary_path):
        raise ToolError("ais_bench: exited 0 and wrote its outputs but no summary {}, its record of a finished "
                        "run; treating the call as failed{}".format(
                            summary_path, f"; log: {log_path}" if log_path else ""))
    return check_summary(load_json(summary_path, OutputFormatError, "ais_bench summary"), summary_path)


def _number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_summary(summary, summary_path):
    """The keys this package reads from a summary, checked: a positive `throughput`, and
    `NPU_compute_time` (when present) an object of numbers. The tool writes throughput 0 when it timed
    no inference; that is refused, as is any value other than a number. Returns the summary."""
    if not isinstance(summary, dict):
        raise OutputFormatError(f"ais_bench summary {summary_path} is not a JSON object (got {type(summary).__name__})")
    throughput = summary.get("throughput")
    if not _number(throughput):
        raise OutputFormatError(f"ais_bench summary {summary_path} has no numeric `throughput` (got {throughput!r}); "
                                "expected `\"throughput\": <images per second>`")
    if throughput <= 0:
        raise OutputFormatError("ais_bench summary {} has `throughput` {!r}: the tool timed no inference "
                                "(NPU_compute_time {!r})".format(summary_path, throughput,
                                                                 summary.get("NPU_compute_time")))
    compute = summary.get("NPU_compute_time", {})
    bad = [key for key, value in compute.items() if not _number(value)] if isinstance(compute, dict) else None
    if bad is None or bad:
        raise OutputFormatError(f"ais_bench summary {summary_path}: `NPU_compute_time` must map min/max/mean/median/"
                                f"percentile(99%) to numbers; got {compute!r}")
    return summary


def output_files(summary, summary_path, input_path, run_dir, count):
    """The `count` output files a run wrote for one input file, in output order.

    The summary's `filesinfo` lists each sample's `infiles` and `outfiles`: that is where the names
    come from, since they changed across versions (`<stem>_0.bin`, `input0_output_0.bin`,
    `sample_id_0_output_0.bin`). A summary without `filesinfo` falls back to the current naming,
    `<stem of the input>_{i}.bin`.
    """
    infos = summary.get("filesinfo")
    if not infos:
        stem = os.path.splitext(os.path.basename(input_path))[0]
        return [os.path.join(run_dir, f"{stem}_{i}.bin") for i in range(count)]
    if not isinstance(infos, dict):
        raise OutputFormatError(f"ais_bench summary {summary_path}: `filesinfo` must be an object of samples, "
                                f"got {infos!r}")
    name = os.path.basename(input_path)
    for sample in infos.values():
        infiles = sample.get("infiles") if isinstance(sample, dict) else None
        if isinstance(infiles, list) and any(os.path.basename(str(f)) == name for f in infiles):
            outfiles = sample.get("outfiles")
            if not isinstance(outfiles, list) or len(outfiles) != count:
                raise OutputFormatError(f"ais_bench summary {summary_path}: sample of {name} lists outfiles "
                                        f"{outfiles!r}; expected {count} (dets, labels)")
            # the tool writes every output into the run folder; its basename is taken so that a
            # relative path (relative to the tool's cwd) or a moved folder still resolves
            return [os.path.join(run_dir, os.path.basename(str(f))) for f in outfiles]
    raise OutputFormatError(f"ais_bench summary {summary_path}: `filesinfo` has no sample whose infiles include {name}")


# ais_bench / ais_infer console summary, in the published spellings:
#   [INFO] throughput 1000*batchsize.mean(1)/NPU_compute_time.mean(0.661): 1512.859   (ais_bench)
#   [INFO] throughput (1000*batchsize/NPU_compute_time): 2935.132                     (ais_infer)
#   [INFO] NPU_compute_time (ms): min = 1.36, max = 1.36, mean = 1.36, median = 1.36, percentile(99%) = 1.36
_AIS_THROUGHPUT = re.compile(rf"^(?:\[INFO\]\s*)?throughput\b[^:]*:\s*(?P<value>{NUMBER_PATTERN})$")
_AIS_STATS = re.compile(r"^(?:\[INFO\]\s*)?(?P<name>NPU_compute_time|H2D_latency|D2H_latency)\s*\(ms\)\s*:\s*"
                        r"(?P<body>.*)$")
_AIS_STAT_ITEM = re.compile(rf"^(?P<key>min|max|mean|median|percentile\(\d+%\))\s*=\s*(?P<value>{NUMBER_PATTERN})$")


def read_ais_bench_console(text, source):
    """The summary an ais_bench/ais_infer console printed, as the summary json's keys.

    Other console lines (progress bars, log lines) are not the summary and are passed over; a
    `throughput` or `*_latency`/`NPU_compute_time` summary line that does not parse is quoted in the
    error, and there must be exactly one throughput line.
    """
    summary, throughput_lines = {}, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        bare = re.sub(r"^\[INFO\]\s*", "", line)
        if bare.startswith("throughput"):
            match = _AIS_THROUGHPUT.match(line)
            if match is None:
                raise refuse_line(source, number, line, "`[INFO] throughput ...: <number>` (ais_bench "
                                                         "`throughput 1000*batchsize.mean(B)/NPU_compute_time"
                                                         ".mean(T): X` or ais_infer `throughput (1000*batchsize/"
                                                         "NPU_compute_time): X`)")
            throughput_lines.append(number)
            summary["throughput"] = float(match.group("value"))
            continue
        if bare.startswith(("NPU_compute_time", "H2D_latency", "D2H_latency")):
            match = _AIS_STATS.match(line)
            items = [_AIS_STAT_ITEM.match(item.strip()) for item in match.group("body").split(",")] if match else [None]
            if not all(items):
                raise refuse_line(source, number, line, "`<name> (ms): min = a, max = b, mean = c, median = d, "
                                                         "percentile(99%) = e`")
            summary[match.group("name")] = dict((m.group("key"), float(m.group("value"))) for m in items)
    if len(throughput_lines) != 1:
        raise ResultsError("{}: expected one ais_bench summary line `[INFO] throughput ...: <number>`, found {}{}"
                           .format(source, len(throughput_lines),
                                   " (lines {})".format(", ".join(map(str, throughput_lines)))
                                   if throughput_lines else ""))
    return summary



def read_ais_bench_result(path):
    """(where, checked summary) of an ais_bench/ais_infer run: `path` may be the summary json
    (ais_bench's `<dir>_summary.json` beside the output folder, or ais_infer's `sumary.json` inside
    it), the output folder itself, the `--output` folder holding one run, or a saved console log."""
    path = str(path)
    if os.path.isdir(path):
        return summary_of_output(path)
    text, _ = read_tool_text(path, "ais_bench summary json or console log")
    if text.lstrip().startswith("{"):
        return path, check_summary(parse_json(text, ResultsError, f"ais_bench summary {path}"), path)
    return path, read_ais_bench_console(text, f"ais_bench console log {path}")
