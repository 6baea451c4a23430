#!/usr/bin/env bash
# Add mmdetection's FSAF to the recipe stack's virtual environment, for the parity test
# tests/acceptance/test_recipe_mmdet_parity.py: mmcv-full built from its PyPI source distribution with
# its C++ ops (CPU only) and mmdet from PyPI, at the versions of constraints/recipe-py37.txt.
#   scripts/bootstrap.sh recipe && scripts/install_mmdet.sh [VENV]      (VENV default: .venv37)
#   scripts/install_mmdet.sh --check [VENV]                              (only check; exit 1 if absent)
# Idempotent: when mmcv-full (with ops) and mmdet import at the pinned versions it only checks.
# Nothing already installed moves: every pip call passes -c constraints/recipe-py37.txt and --no-deps
# (mmcv-full's and mmdet's own requirements would otherwise let pip replace torch 1.8.0 or numpy
# 1.21.2), and the environment's package list is compared before and after.
# The mmcv-full wheel is built once (about 3-5 minutes on 2 free cores; MAX_JOBS, default 2, compile
# jobs) and kept in FSAF_WHEEL_CACHE (default ~/.cache/fsaf-repro/wheels) under a folder named by
# everything it was built for (mmcv-full version, torch version, Python tag, CPU ops), so a fresh
# environment with the same torch and Python reuses it and any other one builds its own.
set -euo pipefail
cd "$(dirname "$0")/.."
constraints=constraints/recipe-py37.txt
check_only=0
if [ "${1:-}" = "--check" ]; then check_only=1; shift; fi
venv="${1:-.venv37}"
py="$venv/bin/python"
say() { echo "install_mmdet: $*"; }
fail() { echo "install_mmdet: $*" >&2; exit 1; }

[ -x "$py" ] || fail "$py does not exist: create the recipe stack first (scripts/bootstrap.sh recipe)"

# The two versions are comment lines of the constraints file ("# install_mmdet.sh pins: NAME==VERSION"):
# as real constraints pip would also hold the NPU image's WITH_MMDET=1 build, which installs mmcv and
# mmdetection from the recipe's git commits, to these release numbers.
pin_of() {
  local version
  version=$(sed -n "s/^# install_mmdet\.sh pins: $1==\([^[:space:]]*\)[[:space:]]*$/\1/p" "$constraints")
  [ -n "$version" ] || fail "$constraints has no line '# install_mmdet.sh pins: $1==VERSION'"
  echo "$version"
}
mmcv_version=$(pin_of mmcv-full)
mmdet_version=$(pin_of mmdet)

# The pinned mmcv-full compiles, and the pinned mmdet runs, against the recipe's torch and Python only.
torch_pin=$(sed -n 's/^torch==\([^[:space:]]*\).*/\1/p' "$constraints")
stack=$("$py" -c 'import sys, torch; print("{}.{} {}".format(sys.version_info[0], sys.version_info[1], torch.__version__.split("+")[0]))' 2>/dev/null) \
  || fail "$py cannot import torch: create the recipe stack first (scripts/bootstrap.sh recipe)"
[ "$stack" = "3.7 $torch_pin" ] \
  || fail "$venv runs Python/torch $stack; mmcv-full $mmcv_version and mmdet $mmdet_version need the recipe stack (Python 3.7, torch $torch_pin): use .venv37 (scripts/bootstrap.sh recipe)"

# Exit 0 when the environment can run mmdetection's FSAF at the pinned versions; else print why.
installed_problems() {
  "$py" - "$mmcv_version" "$mmdet_version" <<'EOF'
import contextlib
import sys
want_mmcv, want_mmdet = sys.argv[1], sys.argv[2]
problems = []
# What the imports print (torch's CUDA probe, on stdout) goes to stderr: stdout carries the problems only.
with contextlib.redirect_stdout(sys.stderr):
    try:
        import mmcv
        if mmcv.__version__ != want_mmcv:
            problems.append("mmcv {} is installed, not mmcv-full {}".format(mmcv.__version__, want_mmcv))
        import mmcv._ext  # noqa: F401  (the compiled ops: absent in the plain `mmcv` package)
    except Exception as exc:  # ImportError, or whatever mmcv raises while importing
        problems.append("mmcv-full {} with ops is not importable ({}: {})".format(
            want_mmcv, type(exc).__name__, exc))
    try:
        import mmdet
        if mmdet.__version__ != want_mmdet:
            problems.append("mmdet {} is installed, not {}".format(mmdet.__version__, want_mmdet))
        from mmdet.apis import init_detector  # noqa: F401
    except Exception as exc:  # ImportError, or mmdet's own check of the mmcv version (AssertionError)
        problems.append("mmdet {} is not importable ({}: {})".format(want_mmdet, type(exc).__name__, exc))
if problems:
    print("; ".join(problems))
    sys.exit(1)
EOF
}

# stderr dropped: the check prints every problem itself, and importing mmcv logs torch's CUDA probe there.
if why=$(installed_problems 2>/dev/null); then
  say "$venv already has mmcv-full $mmcv_version (with ops) and mmdet $mmdet_version"
  exit 0
fi
if [ "$check_only" = 1 ]; then
  fail "$venv cannot run mmdetection: $why; run scripts/install_mmdet.sh $venv"
fi
say "$venv: $why; installing"

export PIP_DISABLE_PIP_VERSION_CHECK=1
freeze() { "$py" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | LC_ALL=C sort; }
before=$(mktemp)
after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
freeze > "$before"
# The plain `mmcv` package (no ops) and mmcv-full both install the `mmcv` module: one would overwrite
# the other's files.
if grep -qi '^mmcv==' "$before"; then
  fail "$venv has the plain mmcv package (no ops); remove it first: $py -m pip uninstall mmcv"
fi

# Runtime requirements of mmcv-full and mmdet, all pinned in the constraints file (torchvision: mmcv's
# checkpoint loader imports it; 0.9.0 is torch 1.8.0's). matplotlib, six, numpy, Pillow, pycocotools
# and packaging already come with fsaf-repro's own requirements.
"$py" -m pip install -q --no-deps -c "$constraints" addict yapf terminaltables PyYAML torchvision
for needed in matplotlib six numpy pillow pycocotools packaging; do
  grep -qi "^${needed}==" "$before" || fail "$venv lacks $needed (mmdet needs it): rerun scripts/bootstrap.sh recipe"
done

torch_version=$("$py" -c 'import torch; print(torch.__version__.replace("+", "_"))')
python_tag=$("$py" -c 'import sys; print("cp{}{}".format(*sys.version_info[:2]))')
cache_root="${FSAF_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fsaf-repro/wheels}"
wheel_dir="$cache_root/mmcv-full-${mmcv_version}-ops-cpu-torch${torch_version}-${python_tag}"
wheel=$(ls "$wheel_dir"/mmcv_full-"${mmcv_version}"-"${python_tag}"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  say "building mmcv-full $mmcv_version with ops for torch $torch_version ($python_tag, CPU) into $wheel_dir"
  mkdir -p "$wheel_dir"
  build_dir=$(mktemp -d)
  started=$(date +%s)
  # No build isolation: the ops compile against this environment's torch. CUDA_VISIBLE_DEVICES= and
  # FORCE_CUDA=0 keep the build CPU-only (the wheel's folder name says so) even on a GPU host.
  # --no-cache-dir: pip's own wheel cache is keyed by the source only, and could hand back a wheel
  # compiled against another torch.
  MMCV_WITH_OPS=1 FORCE_CUDA=0 CUDA_VISIBLE_DEVICES= MAX_JOBS="${MAX_JOBS:-2}" \
    "$py" -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation --no-binary mmcv-full -c "$constraints" \
      -w "$build_dir" "mmcv-full==${mmcv_version}"
  built=$(ls "$build_dir"/mmcv_full-"${mmcv_version}"-*.whl)
  mv "$built" "$wheel_dir"/
  rmdir "$build_dir"
  wheel="$wheel_dir/$(basename "$built")"
  say "built $(basename "$wheel") in $(( $(date +%s) - started ))s"
else
  say "reusing $wheel"
fi
"$py" -m pip install -q --no-deps -c "$constraints" "$wheel"
"$py" -m pip install -q --no-deps -c "$constraints" "mmdet==${mmdet_version}"

# Nothing that was installed before may have changed version or gone (but an mmcv-full or mmdet at
# another version, which this script replaces); only additions are expected.
freeze > "$after"
moved=$(LC_ALL=C comm -23 "$before" "$after" | grep -viE '^(mmcv-full|mmcv_full|mmdet)==' || true)
if [ -n "$moved" ]; then
  fail "these packages of $venv changed or went away: $(echo "$moved" | tr '\n' ' '); restore them with scripts/bootstrap.sh recipe"
fi
if ! why=$(installed_problems 2>/dev/null); then
  fail "installed, but $venv still cannot run mmdetection: $why"
fi
say "$venv: added $(LC_ALL=C comm -13 "$before" "$after" | tr '\n' ' ')"
