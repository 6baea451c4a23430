#!/usr/bin/env python3
"""Seeded faults prove the fast tier (issue 17): apply deliberate faults to a scratch copy, one at a time,
and check that the test tiers catch each.

Each fault of FAULTS is a small realistic edit (one line or expression) of the package: the exact old text
of one file, which must occur there exactly once, and its replacement. For each selected fault the
repository's tracked and untracked non-ignored files (`git ls-files -co --exclude-standard`) are copied into
a scratch folder, the edit is applied there (never to the checkout), and the fast unit tier runs there:

    PYTHON -m pytest -m unit --fast -x -q -p no:cacheprovider -rfE [hint files] tests/unit

with the scratch folder as the working directory, so that the scratch copy's package is the one imported
(checked once per run). pytest's exit status 1 (a failing test) or 2/3/4 (a collection or internal error,
which on a copy whose baseline passes the fault caused) means caught. A fault the fast tier misses is run
against the full unit tier (`-m unit`, no --fast) when its expected tier is "full" or --full-on-escape is
given. The script exits 1 when a fault escaped every tier it was run against, 2 when it cannot run (a fault
that no longer applies, a failing baseline, a package not imported from the scratch copy).

Results go to benchmarks/results/seeded_faults.json (--out), merged with the entries of faults not run this
time; each entry carries its own commit and date.

    python scripts/seed_faults.py --list
    python scripts/seed_faults.py --faults box_offset,category_map
    python scripts/seed_faults.py --rotate 2            # CI: two faults, chosen by the commit count
    python scripts/seed_faults.py --full-on-escape      # scheduled: every fault
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import namedtuple

from fsaf_repro.torch_threads import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join("benchmarks", "results", "seeded_faults.json")
TIERS = ("fast", "full")
# a run stops confirming catches after this many pre-existing failures: the checkout itself is broken then
MAX_PREEXISTING = 5

Fault = namedtuple("Fault", "id what file old new tier hints")

# One row per fault: (id, what it breaks, file, exact old text, new text, tier expected to catch it, hint test
# files run first). The old text must occur exactly once in the file.
_FAULT_ROWS = [
    ("box_offset",
     "COCO bbox width/height get the legacy +1 pixel offset",
     "fsaf_repro/postprocess.py",
     '"bbox": [x1, y1, x2 - x1, y2 - y1]',
     '"bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1]',
     "fast", ["tests/unit/test_postprocess.py"]),
    ("category_map",
     "label k is written as COCO category id k + 1 instead of the k-th COCO id (ids have gaps)",
     "fsaf_repro/postprocess.py",
     '"category_id": int(category_ids[label])',
     '"category_id": int(label + 1)',
     "fast", ["tests/unit/test_postprocess.py"]),
    ("stage_key_input",
     "a stage key leaves out the first of the stage's declared input files",
     "fsaf_repro/stagebook.py",
     "for label, value in sorted(stage.inputs.items()):",
     "for label, value in sorted(stage.inputs.items())[1:]:",
     "fast", ["tests/unit/test_reproduce_plan.py", "tests/unit/test_reproduce_keys.py"]),
    ("reuse_on_existence",
     "a stage is reused when its recorded outputs exist, whatever their content",
     "fsaf_repro/stagebook.py",
     "if not os.path.isfile(path) or self.digest(path) != digest:",
     "if not os.path.isfile(path):",
     "fast", ["tests/unit/test_fault_guards.py", "tests/unit/test_reproduce_plan.py"]),
    ("parity_tolerance_key",
     "fp32 parity judges boxes by the fp16 om box tolerance (2 px) instead of box_abs_tol_px",
     "fsaf_repro/parity.py",
     'box_tol = tolerances["box_abs_tol_px"]',
     'box_tol = tolerances["fp16_om_box_abs_tol_px"]',
     "fast", ["tests/unit/test_fault_guards.py", "tests/unit/test_parity.py"]),
    ("gate_reversed",
     "a perf gate passes when the ratio is at most its minimum",
     "fsaf_repro/perf_gates.py",
     'passed=comparison["ratio"] >= gate["min_ratio"]',
     'passed=comparison["ratio"] <= gate["min_ratio"]',
     "fast", ["tests/unit/test_perf.py"]),
    ("perf_wrong_field",
     "the benchmark perf parser reads [inference] throughputRate instead of Interface throughputRate",
     "fsaf_repro/perf.py",
     'measured = inference["Interface throughputRate"]',
     'measured = inference["throughputRate"]',
     "fast", ["tests/unit/test_perf.py", "tests/unit/test_backends_tools.py"]),
    ("ais_latency_field",
     "the ais_bench summary reader takes p50 from NPU_compute_time's mean instead of its median",
     "fsaf_repro/perf.py",
     '("p50", "median")',
     '("p50", "mean")',
     "fast", ["tests/unit/test_perf.py", "tests/unit/test_backends_tools.py"]),
    ("resize_off_by_one",
     "the keep-ratio resize makes the image one pixel shorter than floor(h * scale)",
     "fsaf_repro/data/transform.py",
     "new_h = min(height, max(1, int(math.floor(orig_h * scale))))",
     "new_h = min(height, max(1, int(math.floor(orig_h * scale)) - 1))",
     "fast", ["tests/unit/test_data_transform.py"]),
    ("journal_not_fsynced",
     "the inference journal is flushed but not fsynced after each batch",
     "fsaf_repro/runner.py",
     "        os.fsync(self._handle.fileno())\n",
     "",
     "fast", ["tests/unit/test_fault_guards.py", "tests/unit/test_runner_resume.py"]),
    ("lock_never_taken",
     "the run lock unlocks instead of taking flock LOCK_EX: two writers on one output",
     "fsaf_repro/locking.py",
     "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
     "fcntl.flock(fd, fcntl.LOCK_UN)",
     "fast", ["tests/unit/test_one_writer.py"]),
    ("score_threshold_filter",
     "postprocess keeps every non-padding row, whatever the score threshold",
     "fsaf_repro/postprocess.py",
     "keep = (scores > 0) & (scores >= score_threshold)",
     "keep = scores > 0",
     "fast", ["tests/unit/test_postprocess.py"]),
    ("nms_iou_threshold",
     "the host NMS reads the score threshold where it needs the IoU threshold",
     "fsaf_repro/decode.py",
     'iou_threshold = constants["iou_threshold"]',
     'iou_threshold = constants["score_threshold"]',
     "fast", ["tests/unit/test_model.py", "tests/unit/test_parity.py"]),
    ("nms_class_agnostic",
     "the host NMS drops the per-class box offsets: boxes of different classes suppress each other",
     "fsaf_repro/decode.py",
     "keep = _greedy_nms_order(cand_boxes + offsets[:, None], cand_scores,",
     "keep = _greedy_nms_order(cand_boxes, cand_scores,",
     "fast", ["tests/unit/test_model.py"]),
    ("box_decode_tb_swap",
     "the tblr box decode swaps the top and bottom distances",
     "fsaf_repro/decode.py",
     "top = height * scaled[..., 0]",
     "top = height * scaled[..., 1]",
     "fast", ["tests/unit/test_model.py"]),
    ("bin_layout_hwc",
     "preprocess writes each .bin in HWC order instead of CHW (same size, same dtype)",
     "fsaf_repro/data/bins.py",
     'atomic_write_array(path, _WORKER_STATE["buffer"])',
     'atomic_write_array(path, _WORKER_STATE["buffer"].transpose(1, 2, 0).copy())',
     "fast", ["tests/unit/test_data_bins.py"]),
    ("manifest_scale",
     "postprocess checks the preprocess manifest but undoes boxes with the annotation sizes' scales",
     "fsaf_repro/cli/postprocess.py",
     "metas = metas_from_manifest(args.manifest, image_set, record)",
     "metas_from_manifest(args.manifest, image_set, record); metas = list(image_set.metas)",
     "fast", ["tests/unit/test_exif_rotation.py", "tests/unit/test_recipe_cli_chain.py"]),
    ("atomic_write_in_place",
     "the atomic writer writes the target in place (no temporary file and rename)",
     "fsaf_repro/fileio.py",
     "tmp = temp_path or path + part_suffix()",
     "tmp = temp_path or path",
     "fast", ["tests/unit/test_fault_guards.py", "tests/unit/test_fs_errors.py"]),
    ("tool_success_line",
     "a tool that exits 0 is believed without its success line (any output will do)",
     "fsaf_repro/tools.py",
     "if success_line and success_line not in output:",
     "if success_line and not output:",
     "fast", ["tests/unit/test_convert.py", "tests/unit/test_backends_tools.py"]),
    ("verdict_drop_sign",
     "the accuracy verdict measures the drop vs PyTorch with its sign reversed",
     "fsaf_repro/report.py",
     "within_drop = round(ref - ap, 6) <= drop",
     "within_drop = round(ap - ref, 6) <= drop",
     "fast", ["tests/unit/test_fault_guards.py", "tests/unit/test_report.py"]),
    ("eval_maxdets",
     "the COCO summary reads every stat at the largest maxDets (1000) instead of the stat's own",
     "fsaf_repro/evaluate.py",
     'md = max_dets.index(definition["max_dets"])',
     "md = len(max_dets) - 1",
     "fast", ["tests/unit/test_fault_guards.py", "tests/unit/test_evaluate.py"]),
    ("journal_key_unchecked",
     "a journal of a run with other arguments is resumed instead of refused",
     "fsaf_repro/runner.py",
     'if header.get("run_key") != self.key:',
     'if header.get("run_key") is None:',
     "fast", ["tests/unit/test_runner_resume.py", "tests/unit/test_runner.py"]),
]

FAULTS = [Fault(*row) for row in _FAULT_ROWS]


class SeedError(Exception):
    """A condition under which no result can be trusted: the script stops with this one line."""


# --- the scratch copy ----------------------------------------------------------------------------------------

def git(*args, cwd=ROOT):
    return subprocess.run(["git", *args], cwd=cwd, check=True, stdout=subprocess.PIPE,
                          text=True).stdout


def repository_files():
    """Tracked and untracked non-ignored files that exist (a deleted tracked file is left out)."""
    names = [n for n in git("ls-files", "-co", "--exclude-standard", "-z").split("\0") if n]
    return [n for n in names if os.path.isfile(os.path.join(ROOT, n))]


def make_scratch(files, parent):
    scratch = tempfile.mkdtemp(prefix="seeded_", dir=parent)
    for name in files:
        target = os.path.join(scratch, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), target)
    return scratch


def check_applies(fault, root=ROOT):
    path = os.path.join(root, fault.file)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise SeedError(f"fault {fault.id} no longer applies ({fault.file}: {exc.strerror}); update it in FAULTS")
    count = text.count(fault.old)
    if count != 1:
        raise SeedError(f"fault {fault.id} no longer applies: its old text occurs {count} times in {fault.file} "
                        f"(must be once): {fault.old.strip()!r}; update it in FAULTS")
    return text


def apply_fault(fault, scratch):
    text = check_applies(fault, scratch)
    with open(os.path.join(scratch, fault.file), "w", encoding="utf-8") as handle:
        handle.write(text.replace(fault.old, fault.new, 1))


# --- running pytest ---------------------------------------------------------------------------------------------

def probe_interpreter(python, scratch):
    """(python version, torch version) of `python`; SeedError unless it imports the scratch copy's package."""
    code = ("import sys, fsaf_repro\n"
            "try:\n import torch; tv = torch.__version__\nexcept Exception as e:\n tv = 'none (%s)' % e\n"
            "print(fsaf_repro.__file__); print(sys.version.split()[0]); print(tv)")
    try:
        out = subprocess.run([python, "-c", code], cwd=scratch, check=True, capture_output=True,
                             text=True, timeout=300).stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as exc:
        raise SeedError(f"{python} cannot import fsaf_repro from {scratch}: {exc}")
    expected = os.path.realpath(os.path.join(scratch, "fsaf_repro"))
    if os.path.dirname(os.path.realpath(out[0])) != expected:
        raise SeedError(f"{python} imports fsaf_repro from {out[0]}, not from the scratch copy {expected}: "
                        "faults applied there would not be tested")
    return out[1], out[2]


def pytest_argv(python, tier, paths, deselected=(), ignored=()):
    argv = [python, "-m", "pytest", "-m", "unit"]
    if tier == "fast":
        argv.append("--fast")
    argv += ["-x", "-q", "-p", "no:cacheprovider", "-rfE"]
    argv += [f"--deselect={nodeid}" for nodeid in deselected] + [f"--ignore={path}" for path in ignored]
    return argv + list(paths)


# `FAILED <node id> - <message>`: a parametrized node id may hold spaces
_FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$")


def run_pytest(python, scratch, tier, paths, timeout, deselected=(), ignored=()):
    """{"rc", "seconds", "first_failure", "tail"} of one pytest run in `scratch` (rc None: timed out)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    started = time.time()
    try:
        done = subprocess.run(pytest_argv(python, tier, paths, deselected, ignored), cwd=scratch, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        rc, output = done.returncode, done.stdout
    except subprocess.TimeoutExpired as exc:
        rc, output = None, exc.output or ""
        if isinstance(output, bytes):
            output = output.decode("utf-8", "replace")
    seconds = round(time.time() - started, 1)
    first = next((m.group(1) for m in map(_FAILED_LINE.match, output.splitlines()) if m), None)
    tail = "\n".join(output.rstrip().splitlines()[-15:])
    return {"rc": rc, "seconds": seconds, "first_failure": first, "tail": tail}


def caught(run):
    return run["rc"] in (1, 2, 3, 4)


def run_tier(python, scratch, tier, hints, timeout, deselected=()):
    """One tier against `scratch`: the hint files first, then the rest of tests/unit (hint files ignored).

    pytest 8+ collects a file named beside its folder in the folder's order, so the hint files get a run
    of their own; a fault they catch is caught in seconds."""
    if hints:
        run = run_pytest(python, scratch, tier, hints, timeout, deselected)
        if caught(run) or run["rc"] is None:
            return run
        rest = run_pytest(python, scratch, tier, ["tests/unit"], timeout, deselected, ignored=hints)
        rest["seconds"] = round(rest["seconds"] + run["seconds"], 1)
        return rest
    return run_pytest(python, scratch, tier, ["tests/unit"], timeout, deselected)


# --- selection ---------------------------------------------------------------------------------------------------

def select_faults(args):
    by_id = {f.id: f for f in FAULTS}
    if args.faults:
        wanted = [name.strip() for name in args.faults.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in by_id]
        if unknown:
            raise SeedError(f"unknown fault(s) {', '.join(unknown)}; --list shows them")
        return [by_id[name] for name in wanted]
    if args.rotate:
        count = min(args.rotate, len(FAULTS))
        index = int(git("rev-list", "--count", "HEAD").strip())
        start = (index * count) % len(FAULTS)
        return [FAULTS[(start + i) % len(FAULTS)] for i in range(count)]
    return list(FAULTS)


def existing_hints(faults, tier_filter=None):
    hints = []
    for fault in faults:
        if tier_filter and fault.tier != tier_filter:
            continue
        hints += [h for h in fault.hints if h not in hints and os.path.isfile(os.path.join(ROOT, h))]
    return hints


# --- the runs ----------------------------------------------------------------------------------------------------

class Session:
    """What the runs of one invocation share: the file list, an unfaulted copy (baseline and confirmations)
    and the tests found failing on that copy (left out of every later run, and recorded)."""

    def __init__(self, args, files):
        self.args = args
        self.files = files
        self.clean = make_scratch(files, args.scratch_parent)
        self.deselected = list(args.deselect or [])
        self.preexisting = []

    def close(self):
        shutil.rmtree(self.clean, ignore_errors=True)

    def baseline(self, faults):
        """The hint files of `faults` on the unfaulted copy, per tier that will run: they must pass."""
        tiers = ["fast"] + (["full"] if self.args.full_on_escape or any(f.tier == "full" for f in faults) else [])
        for tier in tiers:
            hints = existing_hints(faults, None if tier == "fast" or self.args.full_on_escape else "full")
            if not hints:
                continue
            print(f"baseline ({tier} tier, unfaulted): {' '.join(hints)}", flush=True)
            run = run_pytest(self.args.python, self.clean, tier, hints, self.args.timeout, self.deselected)
            if run["rc"] not in (0, 5):
                raise SeedError(f"the unfaulted baseline fails ({tier} tier, rc {run['rc']}, first: "
                                f"{run['first_failure']}): fix it first, or every fault would look caught\n"
                                + run["tail"])
            print(f"baseline ({tier} tier): passed in {run['seconds']} s", flush=True)

    def fails_unfaulted(self, tier, nodeid):
        """Whether test `nodeid` fails on the unfaulted copy too: then its failure proves nothing."""
        run = run_pytest(self.args.python, self.clean, tier, [nodeid], self.args.timeout)
        return run["rc"] == 1  # a test that failed (4: the node id was not found, which proves nothing)

    def run_confirmed(self, scratch, tier, hints):
        """A tier run whose catch is confirmed: a first failing test that also fails unfaulted is deselected
        (recorded as pre-existing) and the tier runs again without it."""
        seconds = 0.0
        while True:
            run = run_tier(self.args.python, scratch, tier, hints, self.args.timeout, self.deselected)
            seconds += run["seconds"]
            first = run["first_failure"]
            if not (caught(run) and first and "::" in first and len(self.preexisting) < MAX_PREEXISTING):
                break
            if not self.fails_unfaulted(tier, first):
                break
            print(f"    {first} fails on the unfaulted copy too: deselected, running the tier again", flush=True)
            self.deselected.append(first)
            self.preexisting.append(first)
        run["seconds"] = round(seconds, 1)
        return run

    def run_fault(self, fault):
        scratch = make_scratch(self.files, self.args.scratch_parent)
        entry = {"id": fault.id, "what": fault.what, "file": fault.file, "old": fault.old, "new": fault.new,
                 "expected_tier": fault.tier, "caught_by": "escaped", "first_failing_test": None, "seconds": {},
                 "rc": {}}
        try:
            apply_fault(fault, scratch)
            hints = [h for h in fault.hints if os.path.isfile(os.path.join(scratch, h))]
            for tier in TIERS:
                if tier == "full" and not (fault.tier == "full" or self.args.full_on_escape):
                    break
                print(f"  {fault.id}: {tier} tier ...", flush=True)
                run = self.run_confirmed(scratch, tier, hints)
                entry["seconds"][tier] = run["seconds"]
                entry["rc"][tier] = "timeout" if run["rc"] is None else run["rc"]
                if caught(run):
                    entry.update(caught_by=tier, first_failing_test=run["first_failure"])
                    break
                if run["rc"] not in (0, 5):
                    entry.setdefault("notes", []).append(f"{tier} tier: rc {entry['rc'][tier]}: {run['tail'][-300:]}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if self.deselected:
            entry["deselected"] = list(self.deselected)
        return entry


# --- results -----------------------------------------------------------------------------------------------------

def commit_info():
    try:
        return git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.CalledProcessError):
        return None, None


def write_results(path, header, entries):
    """Merge `entries` into the results file at `path` (earlier entries of other faults kept), atomically."""
    previous = {}
    if os.path.isfile(path):
        try:
            with open(path) as handle:
                previous = {e["id"]: e for e in json.load(handle).get("faults", [])}
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
            print(f"note: {path} is unreadable ({exc}); writing it anew", file=sys.stderr)
    previous.update({e["id"]: e for e in entries})
    order = [f.id for f in FAULTS]
    merged = sorted(previous.values(), key=lambda e: (order.index(e["id"]) if e["id"] in order else len(order),
                                                      e["id"]))
    payload = dict(header, faults=merged)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(prefix=".seeded_faults.", suffix=".part", dir=folder)
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return merged


def print_table(entries):
    rows = [("fault", "expected", "caught by", "first failing test", "seconds")]
    for e in entries:
        seconds = " + ".join(f"{tier} {s:.1f}" for tier, s in e["seconds"].items())
        rows.append((e["id"], e["expected_tier"], e["caught_by"], e["first_failing_test"] or "-", seconds))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        if number == 0:
            print("  ".join("-" * width for width in widths))


# --- command line ------------------------------------------------------------------------------------------------

def positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--faults", help="comma-separated fault ids (default: all)")
    choice.add_argument("--rotate", type=positive(int), metavar="N",
                        help="N faults chosen by the commit count (git rev-list --count HEAD), so that successive "
                             "submissions cover them all")
    choice.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--python", default=os.path.join(".venv", "bin", "python"),
                        help="interpreter running the tests (default: .venv/bin/python of the checkout)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results json (default: {DEFAULT_OUT}), merged")
    parser.add_argument("--timeout", type=positive(float), default=1800.0,
                        help="seconds allowed to one pytest run (default 1800)")
    parser.add_argument("--full-on-escape", action="store_true",
                        help="run the full unit tier on a fault the fast tier misses, whatever its expected tier")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unfaulted run of the hint files")
    parser.add_argument("--deselect", action="append", metavar="NODEID",
                        help="a test known to fail on this checkout, left out of every run (repeatable); a failing "
                             "test is otherwise checked on an unfaulted copy and left out when it fails there too")
    parser.add_argument("--scratch-parent", default=None, help="folder for the scratch copies (default: the tmp dir)")
    return parser.parse_args(argv)


def list_faults():
    for fault in FAULTS:
        print(f"{fault.id:24s} {fault.tier:4s} {fault.file:30s} {fault.what}")


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        list_faults()
        return 0
    args.python = os.path.abspath(os.path.join(ROOT, args.python))
    out = os.path.join(ROOT, args.out)
    faults = select_faults(args)
    for fault in faults:  # before any run: a stale fault stops the script at once
        check_applies(fault)
    session = Session(args, repository_files())
    try:
        python_version, torch_version = probe_interpreter(args.python, session.clean)
        if not args.no_baseline:
            session.baseline(faults)
        entries = run_all(session, faults, out, python_version, torch_version)
    finally:
        session.close()
    if session.preexisting:
        print("failing on the unfaulted copy too (deselected): " + ", ".join(session.preexisting), file=sys.stderr)
    print_table(entries)
    escaped = [e["id"] for e in entries if e["caught_by"] == "escaped"]
    if escaped:
        print(f"escaped every tier run against them: {', '.join(escaped)}", file=sys.stderr)
        return 1
    return 0


def host_info():
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()}


def run_all(session, faults, out, python_version, torch_version):
    """Run each fault; the results file is rewritten (merged) after each, so an interrupted run keeps its
    finished faults."""
    commit, dirty = commit_info()
    date = datetime.datetime.now().replace(microsecond=0).isoformat()
    header = {"what": "seeded faults against the unit test tiers (scripts/seed_faults.py, issue 17)",
              "host": host_info(), "python": python_version, "torch": torch_version, "date": date,
              "commit": commit, "dirty": dirty}
    entries = []
    for number, fault in enumerate(faults, 1):
        print(f"[{number}/{len(faults)}] {fault.id}: {fault.what}", flush=True)
        entry = session.run_fault(fault)
        entry.update(commit=commit, dirty=dirty, date=date, python=python_version, torch=torch_version,
                     host=cpu_model())
        entries.append(entry)
        print(f"  {fault.id}: caught by {entry['caught_by']} ({entry['first_failing_test']})", flush=True)
        if session.preexisting:
            header["preexisting_failures"] = list(session.preexisting)
        write_results(out, header, entries)
    return entries


if __name__ == "__main__":
    # a CI timeout's SIGTERM unwinds like an exception, so that the scratch copies are removed
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    try:
        sys.exit(main())
    except SeedError as exc:
        print(f"seed_faults: {exc}", file=sys.stderr)
        sys.exit(2)
