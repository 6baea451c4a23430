"""scripts/install_mmdet.sh: where its versions come from, and what its check says (run against a stand-in
environment whose python answers for the stack and imports stand-in mmcv/mmdet packages, so nothing is
built or installed here)."""
import os
import re
import subprocess
import sys

import pytest

from .test_docker_images import read_pins

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "install_mmdet.sh")
CONSTRAINTS = os.path.join(ROOT, "constraints", "recipe-py37.txt")
PIN_LINE = re.compile(r"^# install_mmdet\.sh pins: ([A-Za-z0-9_.-]+)==(\S+)\s*$")


def script_pins():
    with open(CONSTRAINTS) as handle:
        return dict(m.groups() for m in (PIN_LINE.match(line) for line in handle) if m)


def test_versions_live_only_in_the_constraints_file_as_comment_lines():
    pins = script_pins()
    assert set(pins) == {"mmcv-full", "mmdet"}
    # Comment lines: pip (and the NPU image's WITH_MMDET=1 build from git commits) never applies them.
    assert not {"mmcv-full", "mmdet"} & set(read_pins(CONSTRAINTS))
    script = open(SCRIPT).read()
    for version in pins.values():
        assert version not in script, f"the script must read {version} from {CONSTRAINTS}"
    # The runtime requirements it installs are real pins of the same file.
    for name in ("addict", "yapf", "terminaltables", "pyyaml", "torchvision"):
        assert name in read_pins(CONSTRAINTS), name


def stand_in_venv(tmp_path, stack, mmcv_version, mmdet_version):
    """A folder with bin/python: `-c` prints `stack` (the script's "<python> <torch>" probe), anything else
    runs this interpreter without site-packages (-S: a real mmcv/mmdet installed there stays out) and with
    stand-in mmcv and mmdet packages on the path."""
    packages = tmp_path / "packages"
    for name, version in (("mmcv", mmcv_version), ("mmdet", mmdet_version)):
        if version is None:
            continue
        (packages / name).mkdir(parents=True)
        (packages / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
    if mmcv_version is not None:
        (packages / "mmcv" / "_ext.py").write_text("")
    if mmdet_version is not None:
        (packages / "mmdet" / "apis.py").write_text("def init_detector(*args, **kwargs):\n    pass\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/usr/bin/env bash\nif [ "$1" = "-c" ]; then echo {stack!r}; exit 0; fi\n'
                      f'PYTHONPATH={str(packages)} exec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    return str(venv)


def check(venv):
    result = subprocess.run(["bash", SCRIPT, "--check", venv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=60)
    return result.returncode, result.stdout


def test_check_passes_when_both_import_at_the_pinned_versions(tmp_path):
    pins = script_pins()
    code, out = check(stand_in_venv(tmp_path, "3.7 1.8.0", pins["mmcv-full"], pins["mmdet"]))
    assert code == 0, out
    assert "already has mmcv-full {} (with ops) and mmdet {}".format(pins["mmcv-full"], pins["mmdet"]) in out


@pytest.mark.parametrize("mmcv_version, mmdet_version, expected", [
    (None, None, "mmcv-full {mmcv} with ops is not importable"),
    ("1.3.9", "=", "mmcv 1.3.9 is installed, not mmcv-full {mmcv}"),
    ("=", "2.14.0", "mmdet 2.14.0 is installed, not {mmdet}"),
])
def test_check_fails_naming_what_is_wrong_and_the_command(tmp_path, mmcv_version, mmdet_version, expected):
    pins = script_pins()
    mmcv_version = pins["mmcv-full"] if mmcv_version == "=" else mmcv_version
    mmdet_version = pins["mmdet"] if mmdet_version == "=" else mmdet_version
    venv = stand_in_venv(tmp_path, "3.7 1.8.0", mmcv_version, mmdet_version)
    code, out = check(venv)
    assert code == 1, out
    assert expected.format(mmcv=pins["mmcv-full"], mmdet=pins["mmdet"]) in out
    assert f"run scripts/install_mmdet.sh {venv}" in out


def test_refuses_an_environment_off_the_recipe_stack(tmp_path):
    pins = script_pins()
    code, out = check(stand_in_venv(tmp_path, "3.11 2.13.0", pins["mmcv-full"], pins["mmdet"]))
    assert code == 1
    assert "need the recipe stack (Python 3.7, torch {})".format(read_pins(CONSTRAINTS)["torch"]) in out


def test_a_missing_environment_names_the_bootstrap(tmp_path):
    code, out = check(str(tmp_path / "absent"))
    assert code == 1 and "scripts/bootstrap.sh recipe" in out
