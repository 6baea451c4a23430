"""The NPU image's pip bootstrap, run for real on Python 3.7 with bionic's pip 9.0.1 (issue 16).

docker/npu/Dockerfile makes its venv with Ubuntu 18.04's python3.7, whose ensurepip installs pip 9.0.1
(python-pip-whl) and setuptools 39.0.1. pip before 19 misreads `PIP_NO_CACHE_DIR=1` (it becomes the int
1 and is used as the cache path: "TypeError: expected str, bytes or os.PathLike object, not int"), so
an image that sets it before its first `pip install` cannot build.

This test takes the Dockerfile's own bootstrap step (the RUN that makes /opt/venv) and the ENV in effect
at it, and runs it on the host: the venv is made `--without-pip` from a Python 3.7 interpreter and given
pip 9.0.1 and setuptools 39.0.1 from PyPI as ensurepip would (ensurepip ignores PIP_* variables), then
the step's other commands run with the image's ENV and build ARGs (/opt/venv and /opt/fsaf-repro mapped to the scratch
venv and this checkout). They must complete and leave the pinned pip in the venv.

Needs a Python 3.7 interpreter (FSAF_PYTHON37, python3.7 on PATH, or pyenv's 3.7.x) and PyPI (or
FSAF_PIP9_WHEELS, a folder with pip-9.0.1 and setuptools-39.0.1 wheels); without them it skips and
says which. FSAF_NPU_DOCKERFILE points it at another Dockerfile (to show it fails on an old one).
"""
import glob
import os
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIONIC_WHEELS = ("pip==9.0.1", "setuptools==39.0.1")  # what bionic's python3.7 -m venv puts in a venv
IMAGE_VENV = "/opt/venv"
IMAGE_WORKDIR = "/opt/fsaf-repro"


def dockerfile_path():
    return os.environ.get("FSAF_NPU_DOCKERFILE") or os.path.join(ROOT, "docker", "npu", "Dockerfile")


def python37():
    candidates = [os.environ.get("FSAF_PYTHON37"), shutil.which("python3.7")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.7.*/bin/python")), reverse=True)
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        try:  # a pyenv shim exists even where it has no 3.7 to run
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 7))"],
                                   capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if probe.stdout.strip() == "True":
            return candidate
    pytest.skip("no Python 3.7 interpreter: set FSAF_PYTHON37, or put python3.7 on PATH, to run bionic's pip 9 "
                "bootstrap")


@pytest.fixture(scope="module")
def bionic_wheels(tmp_path_factory):
    given = os.environ.get("FSAF_PIP9_WHEELS")
    if given:
        return sorted(glob.glob(os.path.join(given, "*.whl")))
    folder = str(tmp_path_factory.mktemp("pip9-wheels"))
    proc = subprocess.run([os.sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--disable-pip-version-check", "-q", "-d", folder] + list(BIONIC_WHEELS),
                          capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        pytest.skip("PyPI does not answer (pip download {} failed: {}); set FSAF_PIP9_WHEELS to a folder with "
                    "those wheels".format(" ".join(BIONIC_WHEELS), (proc.stderr.strip().splitlines() or ["?"])[-1]))
    return sorted(glob.glob(os.path.join(folder, "*.whl")))


def bootstrap_step(dockerfile):
    """(the shell string of the RUN that makes /opt/venv, with ARGs substituted; the ENV in effect there)."""
    parser_module = pytest.importorskip(
        "dockerfile_parse", reason="dockerfile-parse is not installed (pip install 'fsaf-repro[lint]')")
    parser = parser_module.DockerfileParser(path=dockerfile)
    found = [(item, context) for item, context in zip(parser.structure, parser.context_structure)
             if item["instruction"] == "RUN" and re.search(r"-m venv " + IMAGE_VENV + r"\b", item["value"])]
    assert len(found) == 1, f"expected one RUN that makes {IMAGE_VENV} in {dockerfile}"
    item, context = found[0]

    def substitute(match):
        name = match.group(1) or match.group(2)
        return context.args.get(name, match.group(0))
    script = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", substitute, item["value"])
    # A RUN sees the build ARGs as environment variables, and the ENVs over them.
    env = dict(context.args)
    env.update(context.envs)
    return script, env


def run_bootstrap(dockerfile, wheels, scratch):
    """Run the Dockerfile's bootstrap step in a scratch venv; returns (completed process, venv path)."""
    script, image_env = bootstrap_step(dockerfile)
    venv = os.path.join(str(scratch), "venv")
    # The venv as bionic's `python3.7 -m venv` leaves it: pip 9.0.1 and setuptools 39.0.1, installed with
    # no PIP_* variable in effect (ensurepip drops them).
    subprocess.run([python37(), "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    pip_wheel = [w for w in wheels if os.path.basename(w).startswith("pip-")][0]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    clean["PIP_CONFIG_FILE"] = os.devnull
    subprocess.run([os.path.join(venv, "bin", "python"), os.path.join(pip_wheel, "pip"), "install", "-q",
                    "--no-index", "--no-cache-dir"] + wheels, check=True, env=clean, timeout=300,
                   capture_output=True)
    # The step's own commands, minus the one that made the venv (done above, as bionic would).
    venv_command = re.compile(r'^\s*"?python[0-9.]*"?\s+-m\s+venv\s+' + IMAGE_VENV + r"\s*$")
    commands = [c for c in script.split("&&") if not venv_command.match(c)]
    assert len(commands) == len(script.split("&&")) - 1, script
    shell = " && ".join(c.strip() for c in commands).replace(IMAGE_VENV, venv)
    # The image's ENV, paths mapped; the host's CA settings kept (PyPI may sit behind a proxy here).
    env = {"HOME": str(scratch), "PIP_CONFIG_FILE": os.devnull}
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                 "http_proxy", "https_proxy", "no_proxy"):
        if name in os.environ:
            env[name] = os.environ[name]
    if "PIP_CERT" not in env and os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        env["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
    for name, value in image_env.items():
        value = value.replace(IMAGE_VENV, venv).replace(IMAGE_WORKDIR, ROOT)
        if name == "PATH":
            value = re.sub(r":?\$\{?PATH\}?$", "", value).rstrip(":") + ":" + os.environ.get("PATH", "/usr/bin:/bin")
        env[name] = value
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc, venv, shell, image_env


def test_npu_pip_bootstrap_completes_with_bionic_pip_9(bionic_wheels, tmp_path):
    proc, venv, shell, image_env = run_bootstrap(dockerfile_path(), bionic_wheels, tmp_path)
    assert proc.returncode == 0, "the NPU image's pip bootstrap fails on pip 9.0.1:\n  {}\n  ENV {}\n{}".format(
        shell, " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(image_env.items())),
        (proc.stdout + proc.stderr)[-3000:])
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open(os.path.join(ROOT, "constraints", "recipe-py37.txt"))
                           .read(), re.M))
    version = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "--version"], capture_output=True,
                             text=True, timeout=60).stdout.split()[1]
    assert version == pins["pip"], "the bootstrap left pip {} in the venv, not the pinned {}".format(
        version, pins["pip"])


def test_the_check_catches_pip_no_cache_dir_before_the_bootstrap(bionic_wheels, tmp_path):
    # The fault this guards against, put back into a copy: ENV PIP_NO_CACHE_DIR=1 in effect at the
    # bootstrap, and no --no-cache-dir flag. pip 9 must fail on it, with the TypeError.
    text = open(dockerfile_path()).read()
    script, _ = bootstrap_step(dockerfile_path())
    if "--no-cache-dir" not in script:
        pytest.skip(f"{dockerfile_path()} is not the fixed Dockerfile (its bootstrap has no --no-cache-dir)")
    broken = text.replace("pip install --no-cache-dir ", "pip install ", 1).replace(
        "ENV VIRTUAL_ENV=/opt/venv \\\n", "ENV VIRTUAL_ENV=/opt/venv \\\n    PIP_NO_CACHE_DIR=1 \\\n", 1)
    assert broken.count("PIP_NO_CACHE_DIR=1") == text.count("PIP_NO_CACHE_DIR=1") + 1
    copy = tmp_path / "Dockerfile"
    copy.write_text(broken)
    proc, _, _, _ = run_bootstrap(str(copy), bionic_wheels, tmp_path)
    assert proc.returncode != 0 and "TypeError" in proc.stderr, (proc.stdout + proc.stderr)[-3000:]
