"""How much a pure-inference figure moves between repeats: the new timing defaults against the old 2 loops.

`reproduce`'s perf stage timed 2 loops after 1 warm-up run (issue 20: "a p99 from 2 samples is noise").
It now times at least fsaf_repro.perf.DEFAULT_MIN_BATCHES runs and DEFAULT_MIN_SECONDS seconds. Each
role here measures the torch backend at the embedded default's canvas (256x384, batch 1, the perf
stage's thread count: every core) `REPEATS` times with its settings, and its figure is the spread of
those figures: (max - min) / median fps. The group's ratio is the new defaults' spread over the old
one's (< 1: the figure holds up better). The weights: `--bench-checkpoint` (give the embedded
default's fitted weights, a run's inputs/fsaf_fit_generated_0.pth, with --bench-trust-checkpoint),
else the seeded checkpoint, whose many low-score boxes make NMS far slower than the fitted model's.

Each benchmark round is one whole measurement (pytest-benchmark's own timing is the cost of one figure,
recorded beside: the new defaults take longer, which is the price).
"""
import os

import numpy as np
import pytest

from ratios import Goal, RatioGroup

from fsaf_repro.perf import DEFAULT_MIN_BATCHES, DEFAULT_MIN_SECONDS, fixed_input, measure_pure_inference

GROUP = RatioGroup("timing_spread", baseline="old_2_loops", candidates={"new_defaults": Goal("<=", 1.0)},
                   source="issue 20: the spread of a pure-inference figure at the new defaults vs the old 2 loops, "
                          "over 5 repeats", figure="fps_spread")
ROLES = {"old_2_loops": {"loops": 2, "min_seconds": 0.0, "warmup": 1},
         "new_defaults": {"loops": DEFAULT_MIN_BATCHES, "min_seconds": DEFAULT_MIN_SECONDS, "warmup": 1}}
REPEATS = 5
SIZES = {"reduced": {"height": 256, "width": 384}, "full": {"height": 800, "width": 1216}}
THREADS = os.cpu_count() or 1


@pytest.fixture(scope="module")
def weights(bench_options, seeded_checkpoint):
    """The embedded default's fitted weights when given (--bench-checkpoint, e.g. a run's
    inputs/fsaf_fit_generated_0.pth: its detections, so its NMS work), else the seeded ones."""
    return bench_options["--bench-checkpoint"] or seeded_checkpoint


@pytest.mark.parametrize("role", GROUP.roles)
def test_timing_spread(benchmark, ratio_book, bench_scale, bench_options, weights, role):
    from fsaf_repro.backends import create_backend

    size, settings = SIZES[bench_scale], ROLES[role]
    batch = fixed_input(1, size["height"], size["width"])
    records = []
    ratio_book.join(benchmark, GROUP, role)
    trusted = bool(bench_options["--bench-trust-checkpoint"])
    with create_backend("torch", threads=THREADS, trusted=trusted) as backend:
        backend.load(weights)
        benchmark.pedantic(lambda: records.append(measure_pure_inference(backend, batch, **settings)),
                           rounds=REPEATS, iterations=1)
    fps = np.array([r["fps"] for r in records])
    spread = float((fps.max() - fps.min()) / np.median(fps))
    benchmark.extra_info.update({
        "fps_spread": spread, "fps": fps.tolist(), "samples": [r["samples"] for r in records],
        "intervals": [[r["fps_interval"]["low"], r["fps_interval"]["high"]] for r in records],
        "interval_kind": records[0]["fps_interval"]["kind"], "threads": THREADS, "scale": bench_scale,
        "weights": os.path.basename(weights),
        **size, **settings})
    assert len(records) == REPEATS and all(r["samples"] >= settings["loops"] for r in records)
