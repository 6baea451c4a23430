"""The `benchmark` backend: the recipe's `benchmark.x86_64` / `benchmark.aarch64` offline tool (step 5).

`benchmark.<arch> -model_type=vision -om_path=x.om -device_id=0 -batch_size=N -input_text_path=x.info
-input_width=W -input_height=H -useDvpp=false -output_binary=true` reads the .bin files listed in the
info file and writes, under its working directory, `result/dumpOutput_device{id}/<stem>_1.bin` (dets)
and `<stem>_2.bin` (labels) per sample, and `result/perf_vision_batchsize_{N}_device_{id}.txt`
(facts sheet section 3). `run_info_file` is the recipe's whole-dataset run; `run(batch)` writes one
batch as .bin files with their info file, runs the same offline mode in a scratch directory and reads
the outputs and the perf file back (`last_perf`: fsaf_repro.perf records).

The tool prints no documented success line; its perf file, whose `[inference]` line must parse, is
its record of a finished run. Success is the exit code, that perf file and one output pair per
sample. Each `run(batch)` call's tool log is appended to the backend's log file (`tool_log_path`).
"""
import os
import platform
import shutil

from .base import Availability, read_output_files
from .om_tool import OmToolBackend
from ..errors import DataError, OutputFormatError, ResultsError, ToolError
from ..fileio import atomic_write_text
from ..options import TEXT
from ..perf import parse_benchmark_perf
from ..tools import run_tool

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
                  timeout=None, device_label="310P", precision="fp16"):
    """The recipe's offline run over a whole info file, in `workdir` (where the tool writes result/).

    The tool is given a checked copy of the info file with absolute paths (`resolved_info_copy`).
    Returns {"outputs_dir", "perf_file", "perf_records", "log", "info"}; every listed sample must
    have its output pair (ToolError names the first missing ones).
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
    run_tool(argv, cwd=workdir, log_path=log_path, artifacts=[perf_path], timeout=timeout,
             tool_name=os.path.basename(executable), setup_hint=INSTALL_HINT)
    outputs = output_dir(workdir, device_id)
    stems = [os.path.splitext(os.path.basename(path))[0] for _, path, _, _ in entries]
    missing = [s for s in stems if not (os.path.isfile(os.path.join(outputs, s + "_1.bin"))
                                        and os.path.isfile(os.path.join(outputs, s + "_2.bin")))]
    if missing:
        raise ToolError("{}: exited 0 but wrote no output pair for {} of {} samples (first: {}); log: {}"
                        .format(os.path.basename(executable), len(missing), len(stems),
                                ", ".join(missing[:3]), log_path))
    records = parse_benchmark_perf(perf_path, device_label, batch_size, precision)
    return {"outputs_dir": outputs, "perf_file": perf_path, "perf_records": records, "log": log_path,
            "info": tool_info}


class BenchmarkToolBackend(OmToolBackend):
    """Options: executable, device_id, workdir (scratch parent and tool log folder), log_path (the tool
    log), timeout, batch_size (om without sidecar), device_label / precision (labels of the perf
    records), keep_scratch."""

    name = "benchmark"
    option_kinds = dict(OmToolBackend.option_kinds, executable=TEXT, device_label=TEXT, precision=TEXT)

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
                                       self.executable, self.options.get("timeout"),
                                       self.options.get("device_label", "310P"),
                                       self.options.get("precision", "fp16"))
            finally:
                self.keep_tool_log(os.path.join(scratch, "benchmark.log"))
            per_sample = [read_output_files(os.path.join(result["outputs_dir"], stem + "_1.bin"),
                                            os.path.join(result["outputs_dir"], stem + "_2.bin"), 1,
                                            "benchmark output of " + self.model_path) for stem in stems]
        except (ToolError, OutputFormatError, ResultsError, DataError) as exc:
            raise type(exc)(f"{exc} (scratch directory kept: {scratch})") from None
        self.last_perf = result["perf_records"]
        if not self.options.get("keep_scratch"):
            shutil.rmtree(scratch, ignore_errors=True)
        import numpy as np
        return {"dets": np.concatenate([o["dets"] for o in per_sample]),
                "labels": np.concatenate([o["labels"] for o in per_sample])}
