"""reproduce's evaluate stage scores the run's own detections: zero-area boxes are dropped and counted."""
import json

from fsaf_repro import stagebook, stages
from fsaf_repro.data import CocoImageSet
from fsaf_repro.evaluate import evaluate_results
from fsaf_repro.synthetic import make_synthetic_coco, make_synthetic_results
from fsaf_repro.spec import load_recipe_spec
from fsaf_repro.stagebook import StageContext


def test_zero_area_boxes_are_dropped_counted_and_logged(tmp_path):
    annotation, images = make_synthetic_coco(str(tmp_path / "coco"), num_images=3, seed=5)
    results = make_synthetic_results(annotation, per_image=20, seed=5)
    results[3]["bbox"][2] = 0.0  # the box branch's ReLU gives all-zero distances along an axis
    results[7]["bbox"][3] = 0.0
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    image_set = CocoImageSet(annotation, images, 64, 96)
    stage = stagebook.Stage("evaluate:torch", stages.run_evaluate,
                            params={"backend": "torch", "scorer": "pycocotools"},
                            inputs={"annotation": annotation, "results": str(results_path)},
                            outputs={"metrics": str(tmp_path / "metrics.json")},
                            options={"image_set": image_set})
    said = []
    ctx = StageContext(stage, load_recipe_spec(), log=said.append)
    stages.run_evaluate(ctx)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["degenerate_dropped"] == 2
    assert "2 zero-area box(es) dropped" in said[-1]
    # the same as scoring the results without those two rows
    kept = [r for n, r in enumerate(results) if n not in (3, 7)]
    expected = evaluate_results(annotation, kept, image_ids=image_set.image_ids)
    assert record["stats"] == expected["stats"]
