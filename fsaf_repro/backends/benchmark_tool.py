"""The `benchmark` backend: the recipe's `benchmark.x86_64` / `benchmark.aarch64` offline tool (step 5).

`benchmark.<arch> -model_type=vision -om_path=x.om -device_id=0 -batch_size=N -input_text_path=x.info
-input_width=W -input_height=H -useDvpp=false -output_binary=true` reads the .bin files listed in the
info file and writes, under its working directory, `result/dumpOutput_device{id}/<stem>_1.bin` (dets)
and `<stem>_2.bin` (labels) per sample, and `result/perf_vision_batchsize_{N}_device_{id}.txt` (section
5.2 of the public recipe: Ascend ModelZoo-PyTorch, ACL_PyTorch/contrib/cv/detection/Fsaf).
`run_info_file` is the recipe's whole-dataset run; `run(batch)` writes one batch as .bin files with
their info file, runs the same offline mode in a scratch directory and reads the outputs and the perf
file back (`last_perf`: its `read_benchmark_perf` reading, which fsaf_repro.perf.benchmark_records
turns into records; this module reads the tool's output and makes no records, so that backends/ never
imports perf).

The tool prints no documented success line; its perf file, whose `[inference]` line must parse, is
its record of a finished run. Success is the exit code, that perf file and one output pair per
sample. Each `run(batch)` call's tool log is appended to the backend's log file (`tool_log_path`).
"""
import collections
import os
import platform
import re
import shutil

from .base import Availability, read_output_files
from .om_tool import NUMBER_PATTERN, OmToolBackend, read_tool_text, refuse_line
from ..errors import DataError, OutputFormatError, ResultsError, ToolError
from ..fileio import atomic_write_text
from ..options import TEXT
from ..tools import ToolCheck, run_tool

INSTALL_HINT = ("put the CANN benchmark tool (benchmark.x86_64 or benchmark.aarch64, from the ModelZoo "
                "benchmark tool package) on PATH, or pass executable=PATH, and "
                "`source /usr/local/Ascend/ascend-toolkit/set_env.sh`")


def default_executable():
    return "benchmark." + ("aarch64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64")


def benchmark_argv(executable, om_path, batch_size, info_path, width, height, device_id=0):
    return [executable, "-model_type=vision", f"-om_path={om_path}",
            f"-device_id={device_id}",
            f"-batch_size={int(batch_size)}", f"-input_text_path={info_path}",
            f"-input_width={int(width)}", f"-input_height={int(height)}", "-useDvpp=false",
            "-output_binary=true"]


def perf_file_path(workdir, batch_size, device_id=0):
    return os.path.join(workdir, "result",
                        f"perf_vision_batchsize_{batch_size}_device_{device_id}.txt")


def output_dir(workdir, device_id=0):
    return os.path.join(workdir, "result", f"dumpOutput_device{device_id}")


def resolved_info_copy(info_path, workdir, width, height):
    """Check the info file's .bin files before the tool starts and write a copy with absolute paths.

    The tool runs in `workdir` (where it writes result/) and opens each listed path from there, so
    a relative path written by `fsaf-repro preprocess` (relative to where the user stands) would not
    be found, many minutes into a run. Each .bin must exist with the byte size of a float32
    3 x height x width tensor, at the size the run is given. Returns (the copy's path, its entries
    as `read_info_file` gives them).
    """
    from ..data import BIN_MISSING, bin_file_problem, read_info_file
    info_path = str(info_path)
    entries = []
    for index, path, bin_w, bin_h in read_info_file(info_path):
        if (bin_w, bin_h) != (int(width), int(height)):
            raise DataError(f"{info_path}: entry {index} ({path}) is {bin_w}x{bin_h}, but this run is "
                            f"{width}x{height} (width x height)")
        absolute = os.path.abspath(path)
        problem = bin_file_problem(absolute, height, width)
        if problem == BIN_MISSING:
            raise DataError(f"{info_path}: entry {index} lists {path}, which does not exist (relative paths are "
                            f"taken from the current directory, {os.getcwd()})")
        if problem:
            raise DataError(f"{info_path}: entry {index} ({path}) {problem}")
        entries.append((index, absolute, bin_w, bin_h))
    if not entries:
        raise DataError(f"{info_path} lists no .bin files: nothing to run")
    copy = os.path.join(workdir, os.path.splitext(os.path.basename(info_path))[0] + ".resolved.info")
    atomic_write_text(copy, "".join("{} {} {} {}\n".format(*entry) for entry in entries))
    return copy, entries


def remove_stale_outputs(perf_path, outputs_dir):
    """Remove a previous run's perf file and output folder from a reused workdir before the tool runs:
    the tool writes them under fixed names, so a run that writes none would otherwise be read as the
    previous run's figures and outputs."""
    if os.path.lexists(perf_path):
        os.remove(perf_path)
    if os.path.isdir(outputs_dir):
        shutil.rmtree(outputs_dir)


def run_info_file(om_path, batch_size, info_path, width, height, workdir, device_id=0, executable=None,
                  timeout=None):
    """The recipe's offline run over a whole info file, in `workdir` (where the tool writes result/).

    The tool is given a checked copy of the info file with absolute paths (`resolved_info_copy`).
    Returns {"outputs_dir", "perf_file", "perf" (its `read_benchmark_perf` reading; fsaf_repro.perf
    makes records of it), "log", "info"}; every listed sample must have its output pair (ToolError
    names the first missing ones).
    """
    workdir = os.path.abspath(str(workdir))
    if not os.path.isdir(workdir):
        os.makedirs(workdir)
    executable = executable or default_executable()
    perf_path = perf_file_path(workdir, batch_size, device_id)
    log_path = os.path.join(workdir, "benchmark.log")
    tool_info, entries = resolved_info_copy(info_path, workdir, width, height)
    remove_stale_outputs(perf_path, output_dir(workdir, device_id))
    argv = benchmark_argv(executable, os.path.abspath(str(om_path)), batch_size, tool_info, width, height,
                          device_id)
    run_tool(argv, cwd=workdir, log_path=log_path, check=ToolCheck(artifacts=(perf_path,)), timeout=timeout,
             tool_name=os.path.basename(executable), setup_hint=INSTALL_HINT)
    outputs = output_dir(workdir, device_id)
    stems = [os.path.splitext(os.path.basename(path))[0] for _, path, _, _ in entries]
    missing = [s for s in stems if not (os.path.isfile(os.path.join(outputs, s + "_1.bin"))
                                        and os.path.isfile(os.path.join(outputs, s + "_2.bin")))]
    if missing:
        raise ToolError("{}: exited 0 but wrote no output pair for {} of {} samples (first: {}); log: {}"
                        .format(os.path.basename(executable), len(missing), len(stems),
                                ", ".join(missing[:3]), log_path))
    return {"outputs_dir": outputs, "perf_file": perf_path, "perf": read_benchmark_perf(perf_path), "log": log_path,
            "info": tool_info}


# The benchmark tool's output has several published spellings (tests/unit/fixtures/tool_outputs, with
# their sources): perf files with `[infer]`/`[post]` or `[inference]`/`[postprocess]` stage names, and
# the pure-inference summary as `ave_throughputRate: Xsamples/s, ave_latency: Yms` or
# `ave_throughputRate = Xsamples/s, ave_latency = Yms`, with or without an `[INFO]` tag (even glued to
# it). Every line must be one of the forms below: a line that is none of them is quoted in the error
# rather than skipped, so that a changed format never yields a silently wrong number.

_STAGE_LINE = re.compile(r"^\[(?P<stage>[A-Za-z][A-Za-z0-9 ]*)\]\s*(?P<body>.*)$")
_FIELD_ITEM = re.compile(rf"^(?P<key>[A-Za-z][A-Za-z ]*?)\s*:\s*(?P<value>{NUMBER_PATTERN})$")
_PURE_LINE = re.compile(rf"^(?:\[INFO\]\s*)?ave_throughputRate\s*[:=]\s*(?P<fps>{NUMBER_PATTERN})\s*samples/s\s*,"
                        rf"\s*ave_latency\s*[:=]\s*(?P<latency>{NUMBER_PATTERN})\s*ms$")
# log lines of the tools' consoles: "[INFO] Dataset number: 19 finished cost 2.635ms", "[ERROR] ..."
_LOG_LINE = re.compile(r"^\[(?:INFO|WARN|WARNING|ERROR|DEBUG|EVENT)\]", re.IGNORECASE)
# "-----------------PureInfer Performance Summary------------------", "------------"
_SEPARATOR_LINE = re.compile(r"^-{3,}(?:[A-Za-z ]+-{3,})?$")
# the header fsaf_repro.tools.run_tool writes at the top of a kept tool log
_RUN_TOOL_HEADER = re.compile(r"^# (?:argv|cwd|outcome): ")
# the spellings of the perf file's stages, mapped to one name each
PERF_STAGE_SPELLINGS = {"e2e": "e2e", "data read": "data read", "preprocess": "preprocess",
                        "inference": "inference", "infer": "inference",
                        "postprocess": "postprocess", "post": "postprocess"}
_PERF_NAME = re.compile(r"perf_vision_batchsize_(\d+)_device_(\d+)\.txt$")
PURE_SPELLINGS = ("`ave_throughputRate: Xsamples/s, ave_latency: Yms`",
                  "`ave_throughputRate = Xsamples/s, ave_latency = Yms` (either with an `[INFO]` tag)")
BENCHMARK_LINE_FORMS = ("a perf line `[stage] key: number, ...` (stages {}), a pure-inference summary {}, "
                        "a tagged log line (`[INFO] ...`) or a dashed separator".format(
                            ", ".join(sorted(PERF_STAGE_SPELLINGS)), " or ".join(PURE_SPELLINGS)))


def _stage_fields(source, number, line, stage, body):
    """The `key: number` pairs of one perf line, every item of it parsed."""
    fields = {}
    for item in body.split(","):
        match = _FIELD_ITEM.match(item.strip())
        if match is None:
            raise refuse_line(source, number, line, f"`[{stage}]` followed by `key: number` pairs separated by "
                                                     "commas")
        fields[match.group("key").strip()] = float(match.group("value"))
    return fields


def read_benchmark_output(text, source):
    """The benchmark tool's perf file or console text, line by line: (stages, pure summaries).

    stages: {stage: (line number, {field: value})} with stage names unified (`infer` -> `inference`,
    `post` -> `postprocess`); pure: [(line number, fps, latency ms)]. ResultsError quotes the first line
    that is none of BENCHMARK_LINE_FORMS, a perf line whose fields do not all parse, or a stage given
    twice (two runs in one text).
    """
    stages, pure, unknown = {}, [], None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or _SEPARATOR_LINE.match(line) or _RUN_TOOL_HEADER.match(line):
            continue
        match = _PURE_LINE.match(line)
        if match:
            pure.append((number, float(match.group("fps")), float(match.group("latency"))))
            continue
        if "ave_throughputRate" in line:
            raise refuse_line(source, number, line, "a pure-inference summary " + " or ".join(PURE_SPELLINGS))
        if _LOG_LINE.match(line):
            continue
        match = _STAGE_LINE.match(line)
        if match:
            _add_stage(stages, source, number, line, match)
            continue
        if unknown is None:
            unknown = (number, line)
    _check_benchmark_read(stages, pure, unknown, source)
    return stages, pure


def _add_stage(stages, source, number, line, match):
    """Record the perf line `match` (of _STAGE_LINE) in `stages` under its unified stage name."""
    spelled = match.group("stage").strip().lower()
    if spelled not in PERF_STAGE_SPELLINGS:
        raise refuse_line(source, number, line, "a perf stage among {}".format(
            ", ".join(f"[{s}]" for s in sorted(PERF_STAGE_SPELLINGS))))
    stage = PERF_STAGE_SPELLINGS[spelled]
    if stage in stages:
        raise ResultsError(f"{source}: lines {stages[stage][0]} and {number} both give the `[{stage}]` "
                           "stage (two runs in one text?); give one run's perf file")
    stages[stage] = (number, _stage_fields(source, number, line, match.group("stage"), match.group("body")))


def _check_benchmark_read(stages, pure, unknown, source):
    """Refuse a text with an unknown line (`unknown`: the first, (number, line)) or with no output at all."""
    if unknown is not None:
        if not stages and not pure:
            raise ResultsError(f"{source}: neither a perf file (`[e2e]`, `[inference]` lines) nor pure-inference "
                               f"output (`ave_throughputRate`); nothing to parse; line {unknown[0]} reads "
                               f"{unknown[1]!r}")
        raise refuse_line(source, unknown[0], unknown[1], BENCHMARK_LINE_FORMS)
    if not stages and not pure:
        raise ResultsError(f"{source}: no benchmark output in it (empty, or only log lines); expected a perf file "
                           "(`[e2e]`, `[inference]` lines) or pure-inference output (`ave_throughputRate`)"
                           )



# What `read_benchmark_perf` gives: `stages` {stage: {field: value}} of a dataset-mode perf file
# (`inference` always among them, with its `Interface throughputRate`), or `pure` (fps, latency ms) of
# a pure-inference summary; `batch_size` as the perf file's name gives it (None for text or another
# name); `source` names the file (or "perf text") for the records and errors.
BenchmarkPerf = collections.namedtuple("BenchmarkPerf", "source batch_size stages pure")


def read_benchmark_perf(path_or_text):
    """One run's benchmark output (a perf file path, or the console/perf text itself), checked: exactly
    one run (perf stage lines or one pure-inference summary, not both), and a perf file with its
    `[inference]` (or `[infer]`) line's `Interface throughputRate`. ResultsError otherwise."""
    text, path = read_tool_text(str(path_or_text), "benchmark tool's perf file or console output")
    source = "benchmark tool: {}".format(path or "perf text")
    match = _PERF_NAME.search(os.path.basename(path)) if path else None
    stages, pure = read_benchmark_output(text, source)
    if stages and pure:
        raise ResultsError(f"{source}: holds both perf stage lines (line {min(n for n, _ in stages.values())}) "
                           f"and a pure-inference summary (line {pure[0][0]}); give one run's output")
    if len(pure) > 1:
        raise ResultsError("{}: {} pure-inference summaries (lines {}); give one run's output".format(
            source, len(pure), ", ".join(str(p[0]) for p in pure)))
    if stages and "Interface throughputRate" not in stages.get("inference", (None, {}))[1]:
        raise ResultsError("{}: no `[inference]`/`[infer]` line with `Interface throughputRate` "
                           "(stages found: {})".format(source, ", ".join(sorted(stages))))
    return BenchmarkPerf(source, int(match.group(1)) if match else None,
                         {stage: fields for stage, (_, fields) in stages.items()},
                         (pure[0][1], pure[0][2]) if pure else None)


class BenchmarkToolBackend(OmToolBackend):
    """Options: executable, device_id, workdir (scratch parent and tool log folder), log_path (the tool
    log), timeout, batch_size (om without sidecar), keep_scratch."""

    name = "benchmark"
    option_kinds = dict(OmToolBackend.option_kinds, executable=TEXT)

    @classmethod
    def availability(cls):
        executable = default_executable()
        if shutil.which(executable) is None:
            return Availability(False, f"{executable} is not on PATH; {INSTALL_HINT}")
        return Availability(True, "")

    def load(self, model_path):
        self.attach_om(model_path)
        self.executable = self.options.get("executable") or default_executable()
        self.last_perf = None
        return self

    def run(self, batch, image_hw=None):
        size, scratch = self.begin_call(batch, image_hw, "benchmark_")
        height, width = int(batch.shape[2]), int(batch.shape[3])
        bin_dir = os.path.join(scratch, "bins")
        os.makedirs(bin_dir)
        info_path = os.path.join(scratch, "batch.info")
        stems = []
        with open(info_path, "w") as info:
            for n in range(size):
                stem = f"b{self.calls:06d}_{n:03d}"
                path = os.path.join(bin_dir, stem + ".bin")
                batch[n].tofile(path)
                info.write(f"{n} {path} {width} {height}\n")
                stems.append(stem)
        device_id = int(self.options.get("device_id", 0))
        try:
            try:
                result = run_info_file(self.model_path, size, info_path, width, height, scratch, device_id,
                                       self.executable, self.options.get("timeout"))
            finally:
                self.keep_tool_log(os.path.join(scratch, "benchmark.log"))
            per_sample = [read_output_files(os.path.join(result["outputs_dir"], stem + "_1.bin"),
                                            os.path.join(result["outputs_dir"], stem + "_2.bin"), 1,
                                            "benchmark output of " + self.model_path) for stem in stems]
        except (ToolError, OutputFormatError, ResultsError, DataError) as exc:
            raise type(exc)(f"{exc} (scratch directory kept: {scratch})") from None
        self.last_perf = result["perf"]
        if not self.options.get("keep_scratch"):
            shutil.rmtree(scratch, ignore_errors=True)
        import numpy as np
        return {"dets": np.concatenate([o["dets"] for o in per_sample]),
                "labels": np.concatenate([o["labels"] for o in per_sample])}
