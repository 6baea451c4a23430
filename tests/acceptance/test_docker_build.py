"""The container images, built for real where a Docker engine answers.

- The CPU image is built through the Docker SDK for Python from the git working tree (tracked files
  plus untracked ones git does not ignore), then the unit suite runs inside it and must pass.
- The NPU image needs the CANN toolkit installer, which nobody may redistribute: with
  FSAF_CANN_TOOLKIT_RUN=/path/to/Ascend-cann-toolkit_5.1.RC1_linux-<arch>.run it is built with the docker
  CLI (the Dockerfile needs BuildKit, which the SDK does not drive) and its Python stack is compared
  with the recipe's pins.

Without an engine, the SDK or the installer, each test skips and says which one is missing.
"""
import json
import os
import re
import shutil
import subprocess
import tarfile

import pytest

from fsaf_repro.spec import load_recipe_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_TAG = "fsaf-repro:cpu-acceptance"
NPU_TAG = "fsaf-repro:npu-acceptance"
INSTALLER_ENV = "FSAF_CANN_TOOLKIT_RUN"


def docker_client():
    reason = "the Docker SDK for Python is not installed (pip install 'fsaf-repro[docker]')"
    docker = pytest.importorskip("docker", reason=reason)
    if not hasattr(docker, "from_env"):
        # Without the SDK, `import docker` finds this repository's docker/ folder (a namespace package).
        pytest.skip(reason)
    import requests

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        pytest.skip(f"no Docker engine answers ({why}): start one, or point DOCKER_HOST at one")
    return client


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


def test_cpu_image_builds_and_passes_the_unit_suite(tmp_path):
    client = docker_client()
    import docker

    archive = tmp_path / "context.tar"
    with tarfile.open(str(archive), "w") as tar:
        for name in context_files():
            tar.add(os.path.join(ROOT, name), arcname=name)
    with open(str(archive), "rb") as context:
        try:
            image, _ = client.images.build(fileobj=context, custom_context=True, dockerfile="docker/cpu/Dockerfile",
                                           tag=CPU_TAG, rm=True, forcerm=True)
        except docker.errors.BuildError as exc:
            log = "".join(chunk.get("stream", chunk.get("error", "")) for chunk in exc.build_log)
            pytest.fail("docker/cpu/Dockerfile does not build:\n" + log[-6000:])
    container = client.containers.run(image.id, detach=True)
    try:
        status = container.wait(timeout=3600)["StatusCode"]
        logs = container.logs().decode("utf-8", "replace")
    finally:
        container.remove(force=True)
    assert status == 0, "pytest -m unit failed inside the CPU image:\n" + logs[-6000:]
    assert re.search(r"\b\d+ passed\b", logs) and not re.search(r"\b\d+ failed\b", logs), logs[-2000:]


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
    docker_client()
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed (the NPU Dockerfile needs BuildKit, driven by the CLI)")
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
    build = subprocess.run(["docker", "build", "-f", "docker/npu/Dockerfile", "--build-arg",
                            "CANN_ARCH=" + match.group(2), "-t", NPU_TAG, str(context)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=3 * 3600)
    assert build.returncode == 0, "docker/npu/Dockerfile does not build:\n" + build.stdout[-6000:]
    probe = ("import json, numpy, onnx, onnxruntime, PIL, torch, torchvision, aclruntime, ais_bench; "
             "print(json.dumps({'torch': torch.__version__, 'torchvision': torchvision.__version__, "
             "'onnx': onnx.__version__, 'onnxruntime': onnxruntime.__version__, 'numpy': numpy.__version__, "
             "'pillow': PIL.__version__}))")
    run = subprocess.run(["docker", "run", "--rm", NPU_TAG, "bash", "-c",
                          f"command -v atc && python -c \"{probe}\""],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    out = run.stdout.strip().splitlines()
    assert out[0].endswith("/atc"), "atc is not on PATH after the entry point sourced set_env.sh"
    versions = json.loads(out[-1])
    for name, version in versions.items():
        assert version.split("+")[0] == spec["pins"][name], (name, version)
