"""Fake Ascend tools (atc, aoe, npu-smi, benchmark.x86_64, ais_bench) for hermetic tests.

The scripts here are Python programs; `install_fake_tools` copies them into a temporary bin directory
with a shebang naming the interpreter running the tests (so they use its numpy) and puts that
directory first on PATH. Each script's docstring lists the FAKE_* environment variables that select
its outcome: the documented success output, a failure with the tool's error text, or death by SIGSEGV.
"""
import os
import stat
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = ("atc", "aoe", "npu-smi", "benchmark.x86_64", "ais_bench")
# installed names that are copies of another fake (the benchmark tool is named after the host's arch)
ALIASES = {"benchmark.aarch64": "benchmark.x86_64"}


def install_fake_tools(bin_dir, monkeypatch, tools=TOOLS):
    """Install the fake tools into `bin_dir` (created) and prepend it to PATH; returns bin_dir."""
    bin_dir = str(bin_dir)
    if not os.path.isdir(bin_dir):
        os.makedirs(bin_dir)
    names = list(tools) + [alias for alias, source in ALIASES.items() if source in tools]
    for name in names:
        with open(os.path.join(HERE, ALIASES.get(name, name))) as handle:
            lines = handle.read().splitlines(True)
        if lines and lines[0].startswith("#!"):
            lines = lines[1:]
        target = os.path.join(bin_dir, name)
        with open(target, "w") as handle:
            handle.write(f"#!{sys.executable}\n")
            handle.writelines(lines)
        os.chmod(target, os.stat(target).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ.get("PATH", ""))
    for var in list(os.environ):
        if var.startswith("FAKE_"):
            monkeypatch.delenv(var)
    return bin_dir
