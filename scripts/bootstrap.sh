#!/usr/bin/env bash
# Create (or reuse) a virtual environment with fsaf-repro and its test tools installed.
#   scripts/bootstrap.sh            -> .venv   on the current stack (Python 3.11, torch 2.13.0 CPU)
#   scripts/bootstrap.sh recipe     -> .venv37 on the recipe's stack (Python 3.7, torch 1.8.0, onnx 1.9.0)
# Idempotent: a second run only checks that the pins are satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
stack="${1:-current}"
case "$stack" in
  current)
    venv=.venv
    python_bin="${FSAF_PYTHON311:-python3.11}"
    constraints=constraints/current-py311.txt
    extras="ort,fast-eval,plots,test,lint"
    ;;
  recipe)
    venv=.venv37
    python_bin="${FSAF_PYTHON37:-}"
    if [ -z "$python_bin" ]; then
      if command -v pyenv >/dev/null 2>&1 && [ -x "$(pyenv root)/versions/3.7.16/bin/python" ]; then
        python_bin="$(pyenv root)/versions/3.7.16/bin/python"
      else
        python_bin=python3.7
      fi
    fi
    constraints=constraints/recipe-py37.txt
    extras="ort,fast-eval,test"
    ;;
  *) echo "usage: $0 [current|recipe]" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  "$python_bin" -m venv "$venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip, setuptools and wheel at the stack's own pins (its constraints file), so that a second run finds
# them satisfied and changes nothing: torch 2.13.0 needs setuptools>=77.0.3, the Python 3.7 stack <=68.0.0.
"$venv/bin/python" -m pip install -q -c "$constraints" pip setuptools wheel
# torch first, pinned: an unpinned resolver run would pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install -q -c "$constraints" "$(grep '^torch==' "$constraints")"
"$venv/bin/python" -m pip install -q -c "$constraints" -e ".[$extras]"
# a conflict between installed packages fails the bootstrap here rather than surfacing as a warning later
"$venv/bin/python" -m pip check >/dev/null || { "$venv/bin/python" -m pip check >&2; exit 1; }
echo "bootstrap: $venv ready ($("$venv/bin/python" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'))"
