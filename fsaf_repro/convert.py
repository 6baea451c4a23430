"""Recipe step 3.2: convert the exported ONNX model to Ascend .om files with `atc` (and `aoe`).

One static om per batch size (the recipe's 1, 4, 8, 16, 32, 64 by default). Every tool call:
- is an argv list (no shell), run in its own scratch directory (atc leaves kernel_meta/ and
  fusion_result.json in its working directory);
- is judged by its exit code AND its own success line AND the artifact's existence (atc's published
  outputs: tests/unit/fixtures/tool_outputs): atc can exit 0 without an om, or die by SIGSEGV with no
  message;
- keeps its combined stdout/stderr as `<artifact stem>.<tool>.log` beside the artifact;
- moves the artifact into place only on success, then writes a sidecar `<om>.json` recording how it
  was built (argv, soc version, batch size, input shape, output nodes, precision mode, ONNX hash).

Every tool runs through fsaf_repro.tools.run_tool, as the tool-driven backends' tools do.
"""
import datetime
import os
import re
import shutil
import tempfile
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ExportError, ToolError, ToolNotStarted
from .fileio import atomic_write_json, file_sha256
from .jsonio import load_json
from .options import BATCH_SIZES
from .spec import input_constants
from .tools import ToolCheck, output_tail, run_tool

DEFAULT_BATCH_SIZES = (1, 4, 8, 16, 32, 64)
DEFAULT_OUT_NODES = "dets;labels"
# atc's --precision_mode values (CANN 5.x). force_fp16 is atc's own default and this package's; we
# always pass it so the sidecar states what was used.
FORCE_FP16 = "force_fp16"
DEFAULT_PRECISION_MODE = FORCE_FP16
PRECISION_MODES = (FORCE_FP16, "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision")
# atc's own lines (published outputs in tests/unit/fixtures/tool_outputs): on success `ATC run
# success, welcome to the next use.`, possibly followed by warnings such as `W11001: Op [...] does not
# hit ...`; on failure `ATC run failed, Please check the detail log, ...` and error-code lines
# `E10001: ...`, `EZ3003: ...` (with indented cause/solution lines), `E10007: [PID: 10490] <time> ...`.
ATC_SUCCESS = "ATC run success"
ATC_FAILURE = "ATC run failed"
_CANN_CODE_LINE = re.compile(r"^(?P<code>[EW][0-9A-Z]\d{4}):\s*(?P<message>.*)$")
AOE_SUCCESS = "Aoe process finished"


def read_cann_codes(text: str) -> Tuple[List[str], List[str]]:
    """The CANN error and warning code lines of a tool's output: ([error lines], [warning lines]).

    An error line is `E<5 characters>: message` (E10001, EZ3003, EC0010, E40000), a warning line
    `W<5>: message` (W11001); each is returned stripped, as printed.
    """
    errors, warnings_ = [], []
    for line in text.splitlines():
        match = _CANN_CODE_LINE.match(line.strip())
        if match:
            (errors if match.group("code").startswith("E") else warnings_).append(line.strip())
    return errors, warnings_


def cann_error_summary(text: str) -> Optional[str]:
    """The first error-code lines of a CANN tool's output, joined for a one-line message (or None)."""
    errors, _ = read_cann_codes(text)
    if not errors:
        return None
    return "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")


# --- soc version -------------------------------------------------------------------------------------

# `npu-smi info` prints one table; each NPU block begins, right after a `+---`/`+===` rule, with a row
# `| <npu id>  <chip name>  | <health> | ...` followed by a `| <chip>  <device>  | <bus id> | ...` row.
# Published tables (tests/unit/fixtures/tool_outputs): 310 (21.x, narrow columns), 310B1/310B4,
# 310P3, and Atlas 300I Duo (one NPU id listed once per chip, both 310P3). A process table may follow
# (`| NPU  Chip  | Process id | ...`); it is not read.
_NPU_SMI_HEADER = re.compile(r"^\|\s*NPU\s+Name\s*\|\s*Health\s*\|")
_NPU_SMI_PROCESS_HEADER = re.compile(r"^\|\s*NPU\s+Chip\s*\|\s*Process id")
_NPU_SMI_RULE = re.compile(r"^\+[-=+]+\+?$")
_NPU_SMI_BLOCK_ROW = re.compile(r"^\|\s*(?P<npu>\d+)\s+(?P<name>\S+)\s*\|\s*(?P<health>[^|]*?)\s*\|")
_CHIP_NAME = re.compile(r"^(?:Ascend)?(?:310|910)[0-9A-Za-z]*$")
NPU_SMI_EXPECTED_CHIPS = "a 310, 310P, 310B or 910 chip name such as 310, 310P3, 310B1 or 910B3"


def parse_npu_smi(text: str, source: str = "npu-smi info") -> List[Tuple[int, str, str]]:
    """The chips of an `npu-smi info` table, as a list of (npu_id, chip name, health).

    ToolError when the text is not the table (no `| NPU Name | Health |` header; the first line is
    quoted) or when a block's first row names no known chip (the row is quoted): a chip this package
    does not know must not become a guessed --soc_version.
    """
    lines = [line.strip() for line in text.splitlines()]
    header = next((i for i, line in enumerate(lines) if _NPU_SMI_HEADER.match(line)), None)
    if header is None:
        first = next((line for line in lines if line), "")
        raise ToolError(f"{source}: expected the npu-smi table with a header row `| NPU  Name | Health | ...`; "
                        f"its output begins {first!r}")
    chips = []
    for previous, line in zip(lines[header:], lines[header + 1:]):
        if _NPU_SMI_PROCESS_HEADER.match(line):
            break
        if not _NPU_SMI_RULE.match(previous):
            continue
        match = _NPU_SMI_BLOCK_ROW.match(line)
        if match is None:
            continue  # a rule closing the table, or a header row
        if not _CHIP_NAME.match(match.group("name")):
            raise ToolError(f"{source}: expected {NPU_SMI_EXPECTED_CHIPS} in the row {line!r}; "
                            "pass --soc-version (e.g. Ascend310P3)")
        chips.append((int(match.group("npu")), match.group("name"), match.group("health")))
    return chips


def soc_version_from_chip(chip: str) -> str:
    """`310P3` -> `Ascend310P3` (the --soc_version spelling)."""
    return chip if chip.startswith("Ascend") else "Ascend" + chip


def detect_soc_version(npu_smi: str = "npu-smi", log_path: Optional[str] = None) -> str:
    """Read the soc version from `npu-smi info`; ToolError when absent, ambiguous or unparseable.

    The tool's output is kept at `log_path` (default: a file in a fresh temporary directory).
    """
    scratch = tempfile.mkdtemp(prefix="npu_smi_")
    log = log_path or os.path.join(scratch, "npu-smi.log")
    keep_scratch = log_path is None  # it holds the log, unless the tool never started and wrote none
    try:
        output = run_tool([npu_smi, "info"], cwd=scratch, log_path=log, tool_name="npu-smi",
                          setup_hint="install the Ascend driver (npu-smi) or pass --soc-version, "
                                     "e.g. --soc-version Ascend310P3")
    except ToolNotStarted:
        keep_scratch = False
        raise
    finally:
        if not keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    chips = parse_npu_smi(output, f"npu-smi info (log: {log})")
    if not chips:
        raise ToolError("npu-smi info printed no chip row that names a 310/910 chip; pass --soc-version "
                        f"(e.g. Ascend310P3); output was:\n{output_tail(output)}")
    names = sorted({c[1] for c in chips})
    if len(names) > 1:
        raise ToolError(f"npu-smi info lists several chip types ({', '.join(names)}); pass --soc-version to "
                        "choose one")
    return soc_version_from_chip(names[0])


# --- argv builders -----------------------------------------------------------------------------------

def input_shape_arg(input_name: str, batch_size: int, height: Optional[int], width: Optional[int],
                    extra_inputs: Sequence[Tuple[str, Sequence[int]]] = ()) -> str:
    """atc's --input_shape: `input:B,3,H,W`, plus `;name:B,d1,...` for each extra (name, dims) input
    (the uint8-input export also takes `image_hw` [B, 2]). Height and width default to the recipe's
    network input (spec `input`)."""
    height = input_constants()["height"] if height is None else height
    width = input_constants()["width"] if width is None else width
    parts = [f"{input_name}:{int(batch_size)},3,{int(height)},{int(width)}"]
    for name, dims in extra_inputs:
        sizes = ",".join(str(int(d)) for d in [batch_size] + list(dims))
        parts.append(f"{name}:{sizes}")
    return ";".join(parts)


def atc_argv(onnx_path: str, output_prefix: str, batch_size: int, soc_version: Optional[str],
             model: Optional["ModelInput"] = None, out_nodes: Optional[str] = DEFAULT_OUT_NODES,
             precision_mode: str = DEFAULT_PRECISION_MODE, log_level: str = "error", atc: str = "atc",
             extra_args: Sequence[str] = ()) -> List[str]:
    """The recipe's atc command (section 3.2) as an argv list; `model` None: an input named `input` at the
    recipe's network input size (spec `input`)."""
    if model is None:
        model = ModelInput("input", input_constants()["height"], input_constants()["width"])
    if precision_mode not in PRECISION_MODES:
        raise ToolError(f"unknown atc precision mode {precision_mode!r}; choose one of {', '.join(PRECISION_MODES)}")
    argv = [atc, "--framework=5", f"--model={onnx_path}", f"--output={output_prefix}",
            "--input_format=NCHW",
            f"--input_shape={input_shape_arg(model.name, batch_size, model.height, model.width, model.extra_inputs)}",
            f"--log={log_level}", f"--soc_version={soc_version}"]
    if out_nodes:
        argv.append(f"--out_nodes={out_nodes}")
    argv.append(f"--precision_mode={precision_mode}")
    argv.extend(extra_args)
    return argv


def aoe_argv(onnx_path: str, output_prefix: str, batch_size: int, input_name: str = "input",
             height: Optional[int] = None, width: Optional[int] = None, job_type: int = 2, aoe: str = "aoe",
             extra_args: Sequence[str] = (), extra_inputs: Sequence[Tuple[str, Sequence[int]]] = ()) -> List[str]:
    """The recipe's aoe operator-tuning command (section 7.1) as an argv list (job_type 2 = operators)."""
    if int(job_type) not in (1, 2):
        raise ToolError(f"aoe --job_type must be 1 (subgraph tuning) or 2 (operator tuning), got {job_type}")
    argv = [aoe, "--framework=5", f"--model={onnx_path}", f"--job_type={int(job_type)}",
            f"--output={output_prefix}", "--input_format=NCHW",
            f"--input_shape={input_shape_arg(input_name, batch_size, height, width, extra_inputs)}"]
    argv.extend(extra_args)
    return argv


# --- sidecars ----------------------------------------------------------------------------------------

def read_om_sidecar(om_path: str) -> Optional[Dict[str, Any]]:
    """The conversion sidecar `<om>.json`, or None if absent (an om built outside this package)."""
    path = str(om_path) + ".json"
    if not os.path.exists(path):
        return None
    data = load_json(path, ToolError, "om sidecar")
    if isinstance(data, dict) and "flavour" in data and "tool" not in data:
        # an export's sidecar (fsaf_repro.export) beside an ONNX file given where an om is expected
        raise ToolError(f"{om_path} is an exported ONNX model ({path} is its export sidecar), not an om: give an "
                        "om built by `fsaf-repro convert`, or a backend that runs ONNX (onnxruntime)")
    if not isinstance(data, dict) or "batch_size" not in data:
        raise ToolError(f"om sidecar {path} has no batch_size; rebuild the om with `fsaf-repro convert`")
    if not _positive_int(data["batch_size"]):
        raise ToolError(f"om sidecar {path}: batch_size must be a positive integer, got {data['batch_size']!r}; "
                        "rebuild the om with `fsaf-repro convert`")
    model_input = data.get("input")
    if model_input is not None and not _is_nchw_input(model_input):
        raise ToolError(f"om sidecar {path}: 'input' must be an object with a 'shape' of 4 positive integers "
                        f"(N, C, H, W), got {model_input!r}; rebuild the om with `fsaf-repro convert`")
    return data


# What a model file's sidecar says about the input it takes: read by the verbs that run a model (infer,
# perf), so that a user need not repeat the canvas the model was exported at. `kind` is "onnx" or "om".
ModelSidecar = namedtuple("ModelSidecar", "path kind height width input_dtype flavour batch_size")


def read_model_sidecar(model_path: str) -> Optional[ModelSidecar]:
    """The input facts of an exported ONNX file or a converted om, from its sidecar `<model>.json`,
    read by the sidecar's own reader (the file's extension says which: `.om` is an om, anything else
    with an export sidecar is ONNX). None for a model without a sidecar (a checkpoint, a file built
    elsewhere). An om's flavour and dtype are its ONNX's, recorded in the om sidecar."""
    model_path = str(model_path)
    if model_path.lower().endswith(".om"):
        sidecar = read_om_sidecar(model_path)
        if sidecar is None:
            return None
        exported = sidecar.get("onnx_sidecar") if isinstance(sidecar.get("onnx_sidecar"), dict) else {}
        kind, shape, batch_size = "om", (sidecar.get("input") or {}).get("shape"), sidecar["batch_size"]
    else:
        from .export import read_sidecar  # the exporter owns its sidecar's format
        try:
            exported = read_sidecar(model_path)
        except ExportError as exc:
            raise ToolError(str(exc)) from None
        if exported is None:
            return None
        kind, shape, batch_size = "onnx", (exported.get("input") or {}).get("shape"), exported.get("batch_size")
    if not (isinstance(shape, list) and len(shape) == 4):
        return None  # a sidecar that records no NCHW input says nothing about the canvas
    dtype = (exported.get("input") or {}).get("dtype")
    return ModelSidecar(model_path + ".json", kind, int(shape[2]), int(shape[3]), dtype, exported.get("flavour"),
                        batch_size)


def _is_nchw_input(model_input):
    if not isinstance(model_input, dict):
        return False
    shape = model_input.get("shape")
    return isinstance(shape, list) and len(shape) == 4 and all(_positive_int(d) for d in shape)


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# --- conversion jobs ---------------------------------------------------------------------------------

@dataclass
class ModelInput:
    """The network input an om is built for: its name and canvas, and the extra inputs as
    (name, dims after the batch) pairs, e.g. ("image_hw", [2]) for the uint8-input export."""
    name: str
    height: int
    width: int
    extra_inputs: List[Tuple[str, List[int]]] = field(default_factory=list)


def _model_input(onnx_path, input_name, height, width):
    """(export sidecar or None, ModelInput): the input from the export sidecar when present, else the
    given values."""
    from .export import read_sidecar  # the exporter owns its sidecar's format

    try:
        sidecar = read_sidecar(str(onnx_path))
    except ExportError as exc:
        raise ToolError(str(exc))
    model = ModelInput(input_name, height, width)
    if sidecar and isinstance(sidecar.get("input"), dict):
        spec_input = sidecar["input"]
        shape = spec_input.get("shape") or []
        if len(shape) == 4:
            model.height, model.width = int(shape[2]), int(shape[3])
        model.name = spec_input.get("name", input_name)
        for extra in (sidecar.get("inputs") or [])[1:]:
            model.extra_inputs.append((extra["name"], [int(d) for d in extra["shape"][1:]]))
    return sidecar, model


def _check_onnx_batch(sidecar, onnx_path, batch_size):
    if not sidecar:
        return
    exported = sidecar.get("batch_size")
    if exported not in (None, "dynamic") and int(exported) != int(batch_size):
        raise ToolError(
            f"{onnx_path} was exported with a static batch size of {exported} and cannot be converted for batch "
            f"size {batch_size}; export it with a dynamic batch (batch_size=None) or once per batch size")


@dataclass(frozen=True)
class ConversionJob:
    """One atc or aoe run for one batch size, with the tool's options."""
    tool: str
    batch_size: int
    soc_version: Optional[str]
    precision_mode: str = DEFAULT_PRECISION_MODE
    out_nodes: Optional[str] = DEFAULT_OUT_NODES
    log_level: str = "error"
    job_type: int = 2
    executable: Optional[str] = None
    timeout: Optional[float] = None
    extra_args: Sequence[str] = ()

    def argv(self, onnx_path: str, output_prefix: str, model: ModelInput) -> List[str]:
        if self.tool == "atc":
            return atc_argv(onnx_path, output_prefix, self.batch_size, self.soc_version, model,
                            out_nodes=self.out_nodes, precision_mode=self.precision_mode,
                            log_level=self.log_level, atc=self.executable or "atc", extra_args=self.extra_args)
        return aoe_argv(onnx_path, output_prefix, self.batch_size, model.name, model.height, model.width,
                        job_type=self.job_type, aoe=self.executable or "aoe", extra_args=self.extra_args,
                        extra_inputs=model.extra_inputs)

    def run(self, argv: List[str], scratch: str, log_path: str, artifact: str) -> str:
        """The tool's output; ToolError unless it exited 0, printed its success line and wrote `artifact`."""
        success, failure = (ATC_SUCCESS, ATC_FAILURE) if self.tool == "atc" else (AOE_SUCCESS, None)
        try:
            check = ToolCheck(success_line=success, failure_line=failure, explain=cann_error_summary,
                              artifacts=(artifact,))
            return run_tool(argv, cwd=scratch, log_path=log_path, check=check, timeout=self.timeout,
                            tool_name=self.tool)
        except ToolNotStarted:
            raise  # it never ran: convert_one removes the empty scratch directory
        except ToolError as exc:
            raise ToolError(f"{exc} (batch size {self.batch_size}; scratch directory kept: {scratch})") from None


def convert_one(onnx_path: str, out_dir: str, job: ConversionJob, name_prefix: Optional[str] = None,
                input_name: str = "input", height: Optional[int] = None, width: Optional[int] = None) -> Dict[str, Any]:
    """Convert `onnx_path` as `job` says: one batch size with atc (job.tool "atc") or aoe (job.tool "aoe").

    Returns the sidecar dict (also written at `<om>.json`). On failure raises ToolError; the log is kept
    beside where the om would have been and the scratch directory is kept and named for inspection.
    """
    tool, batch_size = job.tool, job.batch_size
    if tool not in ("atc", "aoe"):
        raise ToolError(f"unknown conversion tool {tool!r}; use atc or aoe")
    onnx_path = os.path.abspath(str(onnx_path))
    if not os.path.isfile(onnx_path):
        raise ToolError(f"ONNX model {onnx_path} does not exist; export it first (`fsaf-repro export`)")
    height = input_constants()["height"] if height is None else height
    width = input_constants()["width"] if width is None else width
    onnx_sidecar, model = _model_input(onnx_path, input_name, height, width)
    _check_onnx_batch(onnx_sidecar, onnx_path, batch_size)
    out_dir = os.path.abspath(str(out_dir))
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    stem = os.path.splitext(os.path.basename(onnx_path))[0]
    prefix = name_prefix or (f"{stem}_bs{batch_size}" if tool == "atc" else f"aoe_{stem}_bs{batch_size}")
    final_om = os.path.join(out_dir, prefix + ".om")
    log_path = os.path.join(out_dir, f"{prefix}.{tool}.log")
    scratch = tempfile.mkdtemp(prefix=f".{tool}_{prefix}_", dir=out_dir)
    scratch_prefix = os.path.join(scratch, prefix)
    argv = job.argv(onnx_path, scratch_prefix, model)
    try:
        output = job.run(argv, scratch, log_path, scratch_prefix + ".om")
    except ToolNotStarted:
        shutil.rmtree(scratch, ignore_errors=True)  # the tool never started: there is nothing to inspect
        raise
    os.replace(scratch_prefix + ".om", final_om)
    shutil.rmtree(scratch, ignore_errors=True)
    sidecar = om_sidecar(job, argv, model, onnx_path, onnx_sidecar, final_om, log_path, output)
    atomic_write_json(final_om + ".json", sidecar)
    return sidecar


def om_sidecar(job: ConversionJob, argv: List[str], model: ModelInput, onnx_path: str,
               onnx_sidecar: Optional[Dict[str, Any]], final_om: str, log_path: str, output: str) -> Dict[str, Any]:
    """The sidecar `<om>.json`: how the om at `final_om` was built, from what, and what the tool said."""
    batch_size = int(job.batch_size)
    atc = job.tool == "atc"
    version_match = re.search(r"(?i)(?:ATC|AOE)\s+(?:version|start working now)[^\n]*", output)
    return {
        "om": os.path.basename(final_om),
        "tool": job.tool,
        "argv": argv,
        "job_type": None if atc else int(job.job_type),
        "batch_size": batch_size,
        "soc_version": job.soc_version,
        "input": {"name": model.name, "shape": [batch_size, 3, int(model.height), int(model.width)],
                  "format": "NCHW"},
        "extra_inputs": [{"name": n, "shape": [batch_size] + d} for n, d in model.extra_inputs],
        "out_nodes": job.out_nodes.split(";") if (job.out_nodes and atc) else None,
        "precision_mode": job.precision_mode if atc else "aoe default",
        "onnx": onnx_path,
        "onnx_sha256": file_sha256(onnx_path),
        "onnx_sidecar": onnx_sidecar,
        "log": os.path.basename(log_path),
        "tool_banner": version_match.group(0).strip() if version_match else None,
        "tool_warnings": read_cann_codes(output)[1],
        "om_sha256": file_sha256(final_om),
        "created_utc": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
    }


def convert_batch_sizes(onnx_path: str, out_dir: str, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                        soc_version: Optional[str] = None, aoe: bool = False, npu_smi: str = "npu-smi",
                        keep_going: bool = True, canvas: Optional[Tuple[int, int]] = None,
                        **tool_options: Any) -> Dict[int, Dict[str, Any]]:
    """Convert for every batch size; returns {batch_size: sidecar}. `canvas` (height, width): the network input
    where the export sidecar does not give it (None: the recipe's); `tool_options`: ConversionJob's fields
    after soc_version (precision_mode, out_nodes, ...).

    The soc version is read from `npu-smi info` when not given (atc only: aoe reads the device itself).
    With keep_going, a failing batch size does not stop the others; the failures are raised together
    at the end (the oms already built stay in place, each with its sidecar).
    """
    batch_sizes = BATCH_SIZES.check(list(batch_sizes), "batch_sizes")
    tool = "aoe" if aoe else "atc"
    height, width = canvas if canvas is not None else (None, None)
    if not os.path.isdir(str(out_dir)):
        os.makedirs(str(out_dir))
    if soc_version is None:
        soc_version = detect_soc_version(npu_smi, log_path=os.path.join(str(out_dir), "npu-smi.log"))
    results, failures = {}, []
    for bs in batch_sizes:
        try:
            job = ConversionJob(tool, int(bs), soc_version, **tool_options)
            results[int(bs)] = convert_one(onnx_path, out_dir, job, height=height, width=width)
        except ToolNotStarted:
            raise  # every other batch size would fail the same way, before the tool runs
        except ToolError as exc:
            if not keep_going:
                raise
            failures.append(f"batch size {bs}: {exc}")
    if failures:
        built = sorted(results) or "none"
        details = "\n".join(failures)
        raise ToolError(f"{len(failures)} of {len(batch_sizes)} conversions failed (built: {built}):\n{details}")
    return results

