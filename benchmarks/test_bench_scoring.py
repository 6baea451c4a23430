"""Scoring time: pycocotools vs faster-coco-eval on the same generated result set, one run.

A generated COCO-format ground truth (5000 images in full, as val2017; about 7 objects per image,
COCO's average) with 100 detections per image (the model's cap: jittered ground truth plus clutter) is
scored by `fsaf_repro.evaluate.evaluate_results` with each scorer: load, validate, evaluate, accumulate
and the recipe's 12-stat summary with maxDets [100, 300, 1000]. Both timings cover the same steps;
the scorer-only part (loadRes + evaluate + accumulate) goes to extra_info. The 12 stats must agree
(max abs difference <= 1e-12, the last bit of the interpolated precision) and print the same 3-decimal
table. Goal (issue 3): faster-coco-eval >= 3 x pycocotools with identical stats.
"""
import json
import time

import pytest

from ratios import Goal, RatioGroup

GROUP = RatioGroup("scoring", baseline="pycocotools", candidates={"faster-coco-eval": Goal(">=", 3.0)},
                   source="issue 3: faster-coco-eval >= 3 x pycocotools with identical stats")
SIZES = {"reduced": {"images": 500, "per_image": 100}, "full": {"images": 5000, "per_image": 100}}
# COCO-like image sizes (no pixels are written: scoring never reads them)
LAYOUTS = [(640, 480, "jpg"), (480, 640, "jpg"), (640, 427, "jpg"), (500, 375, "jpg"), (612, 612, "jpg")]
SCORER_STEP = {"pycocotools": "_accumulate_pycocotools", "faster-coco-eval": "_accumulate_faster"}
STATS_TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def scoring_inputs(tmp_path_factory, bench_scale):
    from fsaf_repro.synthetic import make_synthetic_coco, make_synthetic_results

    size = SIZES[bench_scale]
    annotations, _ = make_synthetic_coco(str(tmp_path_factory.mktemp("scoring")), num_images=size["images"],
                                         seed=0, layouts=LAYOUTS, max_objects=14, write_images=False)
    results = make_synthetic_results(annotations, per_image=size["per_image"], seed=0)
    with open(annotations) as handle:
        ground_truth = len(json.load(handle)["annotations"])
    return annotations, results, ground_truth


@pytest.fixture(scope="module")
def scored():
    """Each scorer's metrics, for the comparison after the group."""
    return {}


@pytest.mark.parametrize("scorer", GROUP.roles)
def test_scoring(benchmark, ratio_book, bench_scale, scoring_inputs, scored, monkeypatch, scorer):
    from fsaf_repro import evaluate

    ok, reason = evaluate.faster_coco_eval_availability()
    if not ok:
        pytest.skip(reason)
    annotations, results, ground_truth = scoring_inputs
    scorer_only = []
    step = getattr(evaluate, SCORER_STEP[scorer])

    def timed_step(*args, **kwargs):
        start = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            scorer_only.append(time.perf_counter() - start)

    monkeypatch.setattr(evaluate, SCORER_STEP[scorer], timed_step)
    ratio_book.join(benchmark, GROUP, scorer)
    scored[scorer] = benchmark.pedantic(evaluate.evaluate_results, args=(annotations, results),
                                        kwargs={"scorer": scorer}, rounds=1, iterations=1)
    benchmark.extra_info.update({"seconds_scorer_only": min(scorer_only), "images": SIZES[bench_scale]["images"],
                                 "detections": len(results), "ground_truth_boxes": ground_truth,
                                 "scale": bench_scale})
    assert len(scored[scorer]["stats"]) == 12


def test_stats_are_identical(scored):
    """After the group: both scorers give the same 12 stats and the same printed table."""
    import numpy as np

    from fsaf_repro import evaluate

    if set(scored) != set(GROUP.roles):
        pytest.skip(f"not measured in this session: {sorted(set(GROUP.roles) - set(scored))}")
    slow, fast = scored["pycocotools"]["stats"], scored["faster-coco-eval"]["stats"]
    assert float(np.max(np.abs(np.array(slow) - np.array(fast)))) <= STATS_TOLERANCE
    assert evaluate.format_recipe_table(slow) == evaluate.format_recipe_table(fast)
