"""Running an external tool (atc, aoe, npu-smi, the benchmark tool, ais_bench) and judging its run.

Every tool call is an argv list (no shell); it is judged by its exit code AND its own success line
AND the artifacts it must leave (facts sheet section 3: atc can exit 0 without an om, or die by
SIGSEGV with no message), and its combined output is kept in a log whose header records the argv,
the working directory and the outcome.
"""
import json
import os
import shutil
import signal
import subprocess

from .errors import ToolError

SETUP_HINT = "install the CANN toolkit and run `source /usr/local/Ascend/ascend-toolkit/set_env.sh`"


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def output_tail(text, lines=8):
    """The last `lines` non-blank lines of a tool's output, for an error message."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def run_tool(argv, cwd, log_path, success_line=None, artifacts=(), timeout=None, env=None, tool_name=None,
             setup_hint=SETUP_HINT, failure_line=None, explain=None):
    """Run an external tool and judge it by exit code, success line and artifacts.

    argv: list of strings (argv[0] is looked up on PATH unless it contains a slash).
    log_path: the combined stdout+stderr is written there (kept whatever the outcome).
    success_line: a substring the tool prints on success (None: exit code only).
    failure_line: a substring the tool prints on failure; printed with exit code 0 it still fails.
    explain: output text -> a one-line reason (e.g. the tool's error codes) put first in the error.
    artifacts: paths that must exist afterwards.
    Returns the tool's output text; raises ToolError naming the tool, the outcome and the log.
    """
    argv = [str(a) for a in argv]
    name = tool_name or os.path.basename(argv[0])
    exe = argv[0] if os.sep in argv[0] else shutil.which(argv[0])
    if exe is None:
        raise ToolError(f"{name}: executable {argv[0]!r} not found on PATH; {setup_hint}")
    log_dir = os.path.dirname(os.path.abspath(log_path))
    if not os.path.isdir(log_dir):
        os.makedirs(log_dir)
    try:
        proc = subprocess.run([exe] + argv[1:], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, env=env)
        output = proc.stdout.decode("utf-8", "replace")
        returncode = proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.output or b"").decode("utf-8", "replace")
        _write_log(log_path, argv, cwd, output, f"killed after a timeout of {timeout} s")
        raise ToolError(f"{name}: did not finish within {timeout} s and was killed; log: {log_path}") from None
    except OSError as exc:
        raise ToolError(f"{name}: could not start {exe!r}: {exc}; {setup_hint}") from exc
    if returncode < 0:
        status = f"died by {_signal_name(-returncode)}"
    else:
        status = f"exit code {returncode}"
    _write_log(log_path, argv, cwd, output, status)
    reason = explain(output) if explain else None
    reason = f": {reason}" if reason else ""
    if returncode < 0:
        raise ToolError("{}: {} (a crash, not a reported error){}; last output:\n{}\nlog: {}".format(
            name, status, reason, output_tail(output) or "(no output)", log_path))
    if returncode != 0:
        raise ToolError("{}: failed with {}{}; last output:\n{}\nlog: {}".format(
            name, status, reason, output_tail(output) or "(no output)", log_path))
    if failure_line and failure_line in output:
        raise ToolError(f"{name}: exited 0 but printed its failure line {failure_line!r}{reason}; treating the run as failed; "
                        f"log: {log_path}")
    if success_line and success_line not in output:
        last = output_tail(output, 1)
        raise ToolError("{}: exited 0 but never printed its success line {!r} (its last line: {!r}); treating "
                        "the run as failed; log: {}".format(name, success_line, last or "(no output)", log_path))
    missing = [p for p in artifacts if not os.path.exists(p)]
    if missing:
        raise ToolError("{}: reported success but did not produce {}; log: {}".format(
            name, ", ".join(missing), log_path))
    return output


def _write_log(log_path, argv, cwd, output, status):
    with open(log_path, "w") as handle:
        handle.write(f"# argv: {json.dumps(argv)}\n# cwd: {cwd}\n# outcome: {status}\n")
        handle.write(output)
