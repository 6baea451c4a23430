"""Two CPU worker processes of one thread each against one process of two threads (issue 20).

`infer --devices 0,1` on a CPU backend runs one shard per worker process and splits the threads
between them (fsaf_repro.devices); the question is whether that beats one process using both threads
on the embedded default's work: the torch backend, 256x384 canvas, 32 generated images, batch 1
(`reproduce`'s infer stage). Both roles run the `infer` verb in a subprocess, timed whole (loading
the model included, as a user pays it). The group's figure is speed (ratio > 1: the workers are
faster). A third role, one process of one thread, is what each worker runs: beside each role,
`same_bytes_as` lists the roles run before it whose results json has the same bytes (the workers' merged
results are expected to match the one-thread process; torch at 2 threads may sum in another order). The weights:
`--bench-checkpoint` (the embedded default's fitted weights, with --bench-trust-checkpoint), else the
seeded checkpoint. The images: `--bench-images` (the embedded default's, a run's inputs/coco), else a
generated set of the same size and canvas.
"""
import hashlib
import os
import subprocess
import sys

import pytest

from ratios import RatioGroup

from fsaf_repro.synthetic import make_synthetic_coco

THREADS = 2
GROUP = RatioGroup("cpu_workers", baseline="one_process_2_threads",
                   candidates={"two_workers_1_thread": None, "one_process_1_thread": None},
                   source="issue 20: 2 CPU workers x 1 thread vs 1 x 2 threads on the embedded default (a "
                          "figure to know, no goal)")
# role: (threads option, extra arguments); the workers split THREADS between them (fsaf_repro.devices)
ROLES = {"one_process_2_threads": (THREADS, []), "two_workers_1_thread": (THREADS, ["--devices", "0,1"]),
         "one_process_1_thread": (1, [])}
SIZES = {"reduced": {"height": 256, "width": 384, "images": 32, "rounds": 2},
         "full": {"height": 256, "width": 384, "images": 32, "rounds": 3}}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUTS = {}


@pytest.fixture(scope="module")
def weights(bench_options, seeded_checkpoint):
    """The embedded default's fitted weights when given (--bench-checkpoint, e.g. a run's
    inputs/fsaf_fit_generated_0.pth: its detections, so its NMS work), else the seeded ones."""
    return bench_options["--bench-checkpoint"] or seeded_checkpoint


@pytest.fixture(scope="module")
def generated_set(tmp_path_factory, bench_scale, bench_options):
    """--bench-images (e.g. a run's inputs/coco: the embedded default's own set), else a generated one."""
    root = bench_options["--bench-images"]
    if root:
        return (os.path.join(root, "annotations", "instances_val2017.json"), os.path.join(root, "val2017"))
    return make_synthetic_coco(str(tmp_path_factory.mktemp("coco")), num_images=SIZES[bench_scale]["images"],
                               seed=0)


def run_infer(argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-m", "fsaf_repro"] + argv, cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


@pytest.mark.parametrize("role", GROUP.roles)
def test_cpu_workers(benchmark, ratio_book, bench_scale, bench_options, weights, generated_set, tmp_path, role):
    size = SIZES[bench_scale]
    out = str(tmp_path / "results.json")
    argv = ["infer", "--annotations", generated_set[0], "--images", generated_set[1], "--height", str(size["height"]),
            "--width", str(size["width"]), "--backend", "torch", "--model", weights, "--batch-size", "1",
            "--backend-option", f"threads={ROLES[role][0]}", "--no-progress", "--out", out] + ROLES[role][1]
    if bench_options["--bench-trust-checkpoint"]:
        argv += ["--backend-option", "trusted=true"]
    ratio_book.join(benchmark, GROUP, role)
    benchmark.pedantic(run_infer, args=(argv,), rounds=size["rounds"], iterations=1)
    with open(out, "rb") as handle:
        OUTPUTS[role] = hashlib.sha256(handle.read()).hexdigest()
    benchmark.extra_info.update({"results_sha256": OUTPUTS[role], "threads": ROLES[role][0], "cpus": os.cpu_count(),
                                 "weights": os.path.basename(weights),
                                 "scale": bench_scale, **size})
    # which earlier roles' results have the same bytes (the workers run 1 thread each: compare both)
    benchmark.extra_info["same_bytes_as"] = sorted(other for other, sha in OUTPUTS.items()
                                                   if other != role and sha == OUTPUTS[role])
    assert os.path.getsize(out) > 2  # a results list with detections
