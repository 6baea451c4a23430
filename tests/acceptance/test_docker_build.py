"""The container images, built for real where a container engine (docker or podman) answers.

- The CPU image is built by scripts/images.sh (the script CI and users run: it finds the engine, resolves
  or makes the base, stages the torch wheel), then checked from the outside through the engine's CLI:
  its Python packages are the pins of constraints/current-py311.txt (torch a CPU build), it runs
  unprivileged, its entry point answers with no network, and `stop` ends it with SIGTERM rather than the
  engine's later SIGKILL (an init is PID 1). The unit tier inside the image is images.sh's own check
  (`bash scripts/images.sh`); these tests check what that does not.
- The NPU image needs the CANN toolkit installer, which nobody may redistribute: with
  FSAF_CANN_TOOLKIT_RUN=/path/to/Ascend-cann-toolkit_5.1.RC1_linux-<arch>.run it is built with the
  engine's CLI and its Python stack is compared with the recipe's pins.

Without an engine or the installer, each test skips and says which one is missing. FSAF_ENGINE=docker|podman
picks the engine where both are installed.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from fsaf_repro.spec import load_recipe_spec
from tests.support import canonical, read_pins

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_TAG = "fsaf-repro:cpu"  # scripts/images.sh's tag for docker/cpu
NPU_TAG = "fsaf-repro:npu-acceptance"
INSTALLER_ENV = "FSAF_CANN_TOOLKIT_RUN"
# The exit status of a process ended by SIGTERM (128 + 15); SIGKILL, the engine's fallback, gives 137.
EXIT_BY_SIGTERM = 128 + 15


def container_engine():
    """The engine's executable: FSAF_ENGINE's, else docker, else podman, whichever answers `info`."""
    forced = os.environ.get("FSAF_ENGINE")
    for name in [forced] if forced else ["docker", "podman"]:
        exe = shutil.which(name)
        if exe and subprocess.run([exe, "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=120).returncode == 0:
            return exe
    pytest.skip("no container engine answers (`docker info`, `podman info`): install docker or podman, or run "
                "`bash scripts/images.sh` as root on a Debian/Ubuntu host, which installs and configures podman")


def engine(exe, *args, timeout=600):
    return subprocess.run([exe] + list(args), capture_output=True, text=True, timeout=timeout)


def context_files():
    """The files of the working tree a build may see: what git tracks or would track."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the build context is the git working tree, and git cannot list it here: {exc}")
    names = sorted(set(n for n in out.decode("utf-8").split("\0") if n))
    return [n for n in names if os.path.isfile(os.path.join(ROOT, n))
            and not re.match(r"^docker/npu/.*\.run$", n)]


def test_context_files_are_the_working_tree_without_installers():
    names = context_files()
    for needed in ("docker/cpu/Dockerfile", "pyproject.toml", "constraints/current-py311.txt",
                   "fsaf_repro/spec/recipe.json", "tests/conftest.py"):
        assert needed in names, needed
    assert not any(n.startswith((".venv", ".git/")) or n.endswith(".run") for n in names)


@pytest.fixture(scope="module")
def cpu_image(tmp_path_factory):
    """docker/cpu built by scripts/images.sh (build only: its in-image checks are its own step)."""
    exe = container_engine()
    out = tmp_path_factory.mktemp("images")
    env = dict(os.environ, FSAF_ENGINE=os.path.basename(exe), FSAF_IMAGES_SKIP_CHECKS="1", FSAF_IMAGES_OUT=str(out))
    build = subprocess.run(["bash", os.path.join(ROOT, "scripts", "images.sh"), "cpu"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=3 * 3600)
    assert build.returncode == 0, "scripts/images.sh cpu failed:\n" + build.stdout[-6000:]
    assert re.search(r"image size: " + re.escape(CPU_TAG), build.stdout), build.stdout[-3000:]
    return exe


PROBE = ("import importlib.metadata as m, json, torch; "
         "print(json.dumps({'cuda': torch.version.cuda, 'versions': {d.metadata['Name']: "
         "d.version for d in m.distributions()}}))")  # names canonicalised below


def test_cpu_image_holds_the_current_pins_with_a_cpu_torch(cpu_image):
    run = engine(cpu_image, "run", "--rm", "--network=none", CPU_TAG, "python", "-c", PROBE)
    assert run.returncode == 0, run.stderr[-4000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["cuda"] is None, "the CPU image holds a CUDA build of torch"
    pins = read_pins(os.path.join(ROOT, "constraints", "current-py311.txt"))
    installed = {canonical(name): version for name, version in found["versions"].items() if canonical(name) in pins}
    assert "torch" in installed and "onnxruntime" in installed, sorted(found["versions"])
    drifted = {name: (version, pins[name]) for name, version in installed.items()
               if version.split("+")[0] != pins[name]}
    assert drifted == {}, "installed (left) differs from constraints/current-py311.txt (right)"


def test_cpu_image_runs_unprivileged_and_offline(cpu_image):
    who = engine(cpu_image, "run", "--rm", "--network=none", CPU_TAG, "id", "-u")
    assert who.returncode == 0 and who.stdout.strip() not in ("", "0"), (who.stdout, who.stderr)
    verbs = engine(cpu_image, "run", "--rm", "--network=none", CPU_TAG, "fsaf-repro", "reproduce", "--help")
    assert verbs.returncode == 0 and "--fit-steps" in verbs.stdout, verbs.stderr[-2000:]


def test_cpu_image_stops_on_sigterm_without_run_init(cpu_image):
    # No --init: the image's own init must forward SIGTERM; python as PID 1 would ignore it until the
    # engine's SIGKILL after --time seconds (exit 137).
    started = engine(cpu_image, "run", "-d", "--network=none", CPU_TAG, "python", "-c",
                     "import time; time.sleep(600)")
    assert started.returncode == 0, started.stderr[-2000:]
    container = started.stdout.strip().splitlines()[-1]
    try:
        stopped = engine(cpu_image, "stop", "--time", "30", container)
        assert stopped.returncode == 0, stopped.stderr
        state = engine(cpu_image, "inspect", "--format", "{{.State.ExitCode}}", container)
        assert int(state.stdout.strip()) == EXIT_BY_SIGTERM, "ended by " + state.stdout.strip()
    finally:
        engine(cpu_image, "rm", "-f", container)


def test_npu_image_builds_with_the_recipe_stack(tmp_path):
    installer = os.environ.get(INSTALLER_ENV)
    if not installer:
        pytest.skip(f"set {INSTALLER_ENV} to the CANN toolkit installer Ascend-cann-toolkit_5.1.RC1_linux-<arch>.run "
                    "to build the NPU image (no public CANN 5.1.RC1 image exists)")
    match = re.match(r"^Ascend-cann-toolkit_(.+)_linux-(x86_64|aarch64)\.run$", os.path.basename(installer))
    if not os.path.isfile(installer) or not match:
        pytest.fail(f"{INSTALLER_ENV}={installer} is not an Ascend-cann-toolkit_<version>_linux-<arch>.run file")
    spec = load_recipe_spec()
    assert match.group(1) == spec["pins"]["cann"], "the recipe pins CANN " + spec["pins"]["cann"]
    exe = container_engine()
    context = tmp_path / "context"
    for name in context_files():
        target = context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), str(target))
    staged = context / "docker" / "npu" / os.path.basename(installer)
    try:
        os.link(installer, str(staged))
    except OSError:
        shutil.copy2(installer, str(staged))
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    # podman: docker format, or SHELL (pipefail) is dropped (as in scripts/images.sh)
    fmt = ["--format", "docker"] if os.path.basename(exe) == "podman" else []
    build = subprocess.run([exe, "build"] + fmt + ["-f", "docker/npu/Dockerfile", "--build-arg",
                            "CANN_ARCH=" + match.group(2), "-t", NPU_TAG, str(context)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=3 * 3600)
    assert build.returncode == 0, "docker/npu/Dockerfile does not build:\n" + build.stdout[-6000:]
    probe = ("import json, numpy, onnx, onnxruntime, PIL, torch, torchvision, aclruntime, ais_bench; "
             "print(json.dumps({'torch': torch.__version__, 'torchvision': torchvision.__version__, "
             "'onnx': onnx.__version__, 'onnxruntime': onnxruntime.__version__, 'numpy': numpy.__version__, "
             "'pillow': PIL.__version__}))")
    run = subprocess.run([exe, "run", "--rm", NPU_TAG, "bash", "-c",
                          f"command -v atc && python -c \"{probe}\""],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    out = run.stdout.strip().splitlines()
    assert out[0].endswith("/atc"), "atc is not on PATH after the entry point sourced set_env.sh"
    versions = json.loads(out[-1])
    for name, version in versions.items():
        assert version.split("+")[0] == spec["pins"][name], (name, version)
