"""tox.ini: the environments the project documents exist, each installs from the right constraints file,
and each runs what its name says. Read with configparser, so tox itself need not be installed."""
import configparser
import os
import re

import pytest

from fsaf_repro.spec import load_recipe_spec

from .test_docker_images import canonical, read_pins

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENVS = ("unit", "recipe", "acceptance", "bench", "lint", "docker-lint")
CURRENT, RECIPE = "constraints/current-py311.txt", "constraints/recipe-py37.txt"


def read_tox(text=None):
    config = configparser.ConfigParser(interpolation=None)
    if text is None:
        with open(os.path.join(ROOT, "tox.ini")) as handle:
            text = handle.read()
    config.read_string(text)
    return config


def setting(config, env, key):
    """The value tox uses for `key` in `env`: its own section, else [testenv]."""
    section = "testenv:" + env
    if config.has_option(section, key):
        return config.get(section, key)
    return config.get("testenv", key, fallback="")


def lines(value):
    return [line.strip() for line in value.splitlines() if line.strip()]


def setenv(config, env):
    pairs = {}
    for line in lines(setting(config, env, "setenv")):
        key, _, value = line.partition("=")
        pairs[key.strip()] = value.strip()
    return pairs


def pyproject_extras():
    try:
        import tomllib as toml
    except ImportError:  # Python < 3.11
        toml = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11) or tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return set(toml.load(handle)["project"]["optional-dependencies"])


def tox_problems(config):
    spec = load_recipe_spec()
    problems = []
    for env in ENVS:
        if not config.has_section("testenv:" + env):
            problems.append(f"no [testenv:{env}]")
    if problems:
        return problems
    listed = [e.strip() for e in config.get("tox", "env_list").split(",")]
    for env in ("lint", "docker-lint", "unit", "recipe"):
        if env not in listed:
            problems.append(f"{env} is not in env_list")
    extras_known = pyproject_extras()
    for env in ENVS:
        expected = RECIPE if env == "recipe" else CURRENT
        python = spec["pins"]["python"] if env == "recipe" else spec["containers"]["cpu_python"]
        constraint = setenv(config, env).get("PIP_CONSTRAINT")
        if constraint != "{toxinidir}/" + expected:
            problems.append(f"{env}: PIP_CONSTRAINT is {constraint!r}, not {{toxinidir}}/{expected}")
        if setting(config, env, "basepython") != "python" + python:
            problems.append("{}: basepython {!r}, not python{}".format(env, setting(config, env, "basepython"),
                                                                        python))
        skip_install = setting(config, env, "skip_install").lower() == "true"
        extras = [e.strip() for e in setting(config, env, "extras").split(",") if e.strip()]
        if not skip_install:
            unknown = set(extras) - extras_known
            if unknown:
                problems.append(f"{env}: extras {sorted(unknown)} are not in pyproject.toml")
        pins = read_pins(os.path.join(ROOT, expected))
        for dep in lines(setting(config, env, "deps")):
            if canonical(dep) not in pins:
                problems.append(f"{env}: dep {dep!r} is not pinned in {expected}")
    commands = {env: setting(config, env, "commands") for env in ENVS}
    if "pytest -m unit" not in commands["unit"] or "pytest -m unit" not in commands["recipe"]:
        problems.append("unit/recipe: do not run pytest -m unit")
    if "pytest -m acceptance" not in commands["acceptance"]:
        problems.append("acceptance: does not run pytest -m acceptance")
    if "FSAF_*" not in lines(setting(config, "acceptance", "passenv")):
        problems.append("acceptance: the FSAF_* settings of the acceptance tests are not passed through")
    if not re.search(r"pytest benchmarks -m bench .*--benchmark-json \S+", commands["bench"]):
        problems.append("bench: does not run pytest benchmarks -m bench with --benchmark-json")
    if "FSAF_BENCH_*" not in lines(setting(config, "bench", "passenv")):
        problems.append("bench: the FSAF_BENCH_* settings of the benchmarks are not passed through")
    if "ruff check fsaf_repro" not in commands["lint"]:
        problems.append("lint: no ruff over fsaf_repro")
    if not re.search(r"^vermin .*-t=3\.7- fsaf_repro/$", commands["lint"], re.M):
        problems.append("lint: no vermin -t=3.7- over fsaf_repro/")
    if "hadolint docker/npu/Dockerfile docker/cpu/Dockerfile" not in commands["docker-lint"]:
        problems.append("docker-lint: no hadolint over both Dockerfiles")
    for test_file in re.findall(r"tests/\S+\.py", commands["docker-lint"]):
        if not os.path.exists(os.path.join(ROOT, test_file)):
            problems.append(f"docker-lint: {test_file} does not exist")
    return problems


def test_tox_ini_defines_every_environment_correctly():
    assert tox_problems(read_tox()) == []


def test_recipe_env_and_npu_image_share_one_constraints_file():
    config = read_tox()
    recipe = setenv(config, "recipe")["PIP_CONSTRAINT"].replace("{toxinidir}/", "")
    dockerfile = open(os.path.join(ROOT, "docker", "npu", "Dockerfile")).read()
    assert re.search(r"^COPY {0} {0}$".format(re.escape(recipe)), dockerfile, re.M)
    pins = read_pins(os.path.join(ROOT, recipe))
    assert pins["torch"] == load_recipe_spec()["pins"]["torch"]


def test_lint_env_runs_the_same_vermin_check_as_ci():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the `lint` extra)")
    with open(os.path.join(ROOT, ".github", "workflows", "ci.yml")) as handle:
        ci = yaml.safe_load(handle)
    ci_vermin = [s["run"] for s in ci["jobs"]["py37-compat"]["steps"] if s.get("run", "").startswith("vermin")]
    tox_vermin = [c for c in lines(setting(read_tox(), "lint", "commands")) if c.startswith("vermin")]
    assert ci_vermin == tox_vermin and len(tox_vermin) == 1


def test_tox_checks_catch_a_wrong_constraints_file_and_an_unpinned_dep():
    text = open(os.path.join(ROOT, "tox.ini")).read()
    text = text.replace("{toxinidir}/constraints/recipe-py37.txt", "{toxinidir}/constraints/current-py311.txt")
    text = text.replace("    ruff\n", "    ruff\n    flake8\n", 1)
    text = text.replace("[testenv:bench]", "[testenv:benchmarks]")
    problems = tox_problems(read_tox(text))
    assert problems == ["no [testenv:bench]"]
    text = text.replace("[testenv:benchmarks]", "[testenv:bench]")
    text = text.replace("python -m pytest benchmarks -m bench", "python benchmarks/bench_backends.py", 1)
    text = text.replace("    FSAF_BENCH_*\n", "    FSAF_OTHER\n", 1)
    problems = tox_problems(read_tox(text))
    assert "recipe: PIP_CONSTRAINT is '{toxinidir}/constraints/current-py311.txt', " \
           "not {toxinidir}/constraints/recipe-py37.txt" in problems
    assert "lint: dep 'flake8' is not pinned in constraints/current-py311.txt" in problems
    assert "bench: does not run pytest benchmarks -m bench with --benchmark-json" in problems
    assert "bench: the FSAF_BENCH_* settings of the benchmarks are not passed through" in problems
    assert len(problems) == 4, problems
