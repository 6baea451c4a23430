"""Running an external tool (atc, aoe, npu-smi, the benchmark tool, ais_bench) and judging its run.

Every tool call is an argv list (no shell); it is judged by its exit code AND its own success line
AND the artifacts it must leave (atc can exit 0 without an om, or die by SIGSEGV with no message:
the published outputs in tests/unit/fixtures/tool_outputs), and its combined output is kept in a
log whose header records the argv, the working directory and the outcome.
"""
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

from .errors import ToolError, ToolNotStarted

SETUP_HINT = "install the CANN toolkit and run `source /usr/local/Ascend/ascend-toolkit/set_env.sh`"


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def output_tail(text: str, lines: int = 8) -> str:
    """The last `lines` non-blank lines of a tool's output, for an error message."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


@dataclass(frozen=True)
class ToolCheck:
    """How a tool's run is judged beyond its exit code (the default: the exit code only).

    success_line: a substring the tool prints on success (None: not required).
    failure_line: a substring the tool prints on failure; printed with exit code 0 it still fails.
    explain: output text -> a one-line reason (e.g. the tool's error codes) put first in the error.
    artifacts: paths that must exist afterwards.
    """
    success_line: Optional[str] = None
    failure_line: Optional[str] = None
    explain: Optional[Callable[[str], Optional[str]]] = None
    artifacts: Sequence[str] = ()


def run_tool(argv: Sequence[Any], cwd: Optional[str], log_path: str, check: ToolCheck = ToolCheck(),
             timeout: Optional[float] = None, env: Optional[Dict[str, str]] = None,
             tool_name: Optional[str] = None, setup_hint: str = SETUP_HINT) -> str:
    """Run an external tool and judge it by exit code and by `check` (success line, artifacts).

    argv: list of strings (argv[0] is looked up on PATH unless it contains a slash).
    log_path: the combined stdout+stderr is written there (kept whatever the outcome).
    Returns the tool's output text; raises ToolError naming the tool, the outcome and the log.
    """
    argv = [str(a) for a in argv]
    name = tool_name or os.path.basename(argv[0])
    exe = argv[0] if os.sep in argv[0] else shutil.which(argv[0])
    if exe is None:
        raise ToolNotStarted(f"{name}: executable {argv[0]!r} not found on PATH; {setup_hint}")
    log_dir = os.path.dirname(os.path.abspath(log_path))
    if not os.path.isdir(log_dir):
        os.makedirs(log_dir)
    try:
        proc = subprocess.run([exe] + argv[1:], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        output = (exc.output or b"").decode("utf-8", "replace")
        _write_log(log_path, argv, cwd, output, f"killed after a timeout of {timeout} s")
        raise ToolError(f"{name}: did not finish within {timeout} s and was killed; log: {log_path}") from None
    except OSError as exc:
        raise ToolNotStarted(f"{name}: could not start {exe!r}: {exc}; {setup_hint}") from exc
    output = proc.stdout.decode("utf-8", "replace")
    _judge(name, proc.returncode, output, argv, cwd, log_path, check.explain)
    _check_claimed_success(name, output, log_path, check)
    return output


def _judge(name, returncode, output, argv, cwd, log_path, explain):
    """Log the run with its outcome; ToolError for a crash (death by a signal) or a non-zero exit."""
    status = f"died by {_signal_name(-returncode)}" if returncode < 0 else f"exit code {returncode}"
    _write_log(log_path, argv, cwd, output, status)
    if returncode == 0:
        return
    reason = _reason(output, explain)
    tail = output_tail(output) or "(no output)"
    if returncode < 0:
        raise ToolError(f"{name}: {status} (a crash, not a reported error){reason}; last output:\n{tail}\n"
                        f"log: {log_path}")
    raise ToolError(f"{name}: failed with {status}{reason}; last output:\n{tail}\nlog: {log_path}")


def _reason(output, explain):
    """': <the tool's reason>' from `explain`, or ''."""
    reason = explain(output) if explain else None
    return f": {reason}" if reason else ""


def _check_claimed_success(name, output, log_path, check):
    """ToolError for an exit code 0 that the output or the missing artifacts contradict."""
    success_line, failure_line, explain = check.success_line, check.failure_line, check.explain
    if failure_line and failure_line in output:
        raise ToolError(f"{name}: exited 0 but printed its failure line {failure_line!r}{_reason(output, explain)}; "
                        f"treating the run as failed; log: {log_path}")
    if success_line and success_line not in output:
        last = output_tail(output, 1) or "(no output)"
        raise ToolError(f"{name}: exited 0 but never printed its success line {success_line!r} (its last line: "
                        f"{last!r}); treating the run as failed; log: {log_path}")
    missing = [p for p in check.artifacts if not os.path.exists(p)]
    if missing:
        raise ToolError(f"{name}: reported success but did not produce {', '.join(missing)}; log: {log_path}")


def _write_log(log_path, argv, cwd, output, status):
    with open(log_path, "w") as handle:
        handle.write(f"# argv: {json.dumps(argv)}\n# cwd: {cwd}\n# outcome: {status}\n")
        handle.write(output)
