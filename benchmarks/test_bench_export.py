"""Export time and model size of each ONNX flavour (issue 2's figure), measured in one run.

For each flavour the seeded checkpoint (official layout) is exported with a static batch of 1, opset
11, through the real loader: `export_onnx` is timed as a whole (checkpoint load + trace + checks +
sidecar) beside a checkpoint load alone, the baseline, so the figure compares across machines. The
ONNX file's size over the checkpoint's is recorded beside the times. No goal: issue 2 asks for the
figure, not a bound.
"""
import os

import pytest

from ratios import RatioGroup

FLAVOURS = ("onnx-nms", "ascend-nms", "raw")  # fsaf_repro.export.FLAVOURS, checked in the test
GROUP = RatioGroup("export", baseline="checkpoint_load", candidates={flavour: None for flavour in FLAVOURS},
                   source="issue 2: export time per flavour, relative to a checkpoint load", figure="seconds")
SIZES = {
    "reduced": {"height": 320, "width": 480, "rounds": 1, "load_rounds": 3},
    "full": {"height": 800, "width": 1216, "rounds": 2, "load_rounds": 3},
}


def test_flavours_are_the_exporters():
    from fsaf_repro.export import FLAVOURS as exported

    assert tuple(exported) == FLAVOURS


def test_checkpoint_load(benchmark, ratio_book, seeded_checkpoint, bench_scale):
    from fsaf_repro.checkpoint import load_detector

    ratio_book.join(benchmark, GROUP, "checkpoint_load")
    benchmark.pedantic(load_detector, args=(seeded_checkpoint,), rounds=SIZES[bench_scale]["load_rounds"],
                       warmup_rounds=1)
    benchmark.extra_info.update({"checkpoint_bytes": os.path.getsize(seeded_checkpoint), "scale": bench_scale})


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_export(benchmark, ratio_book, seeded_checkpoint, bench_scale, tmp_path, flavour):
    import onnx

    from fsaf_repro.export import export_onnx

    size = SIZES[bench_scale]
    path = str(tmp_path / f"fsaf_{flavour}.onnx")
    ratio_book.join(benchmark, GROUP, flavour)
    sidecar = benchmark.pedantic(export_onnx, args=(seeded_checkpoint, path),
                                 kwargs={"flavour": flavour, "height": size["height"], "width": size["width"],
                                         "batch_size": 1},
                                 rounds=size["rounds"], iterations=1)
    nodes = len(onnx.load(path).graph.node)
    checkpoint_bytes = os.path.getsize(seeded_checkpoint)
    benchmark.extra_info.update({"onnx_bytes": sidecar["file_size"], "nodes": nodes,
                                 "onnx_over_checkpoint_size": sidecar["file_size"] / float(checkpoint_bytes),
                                 "input_hw": [size["height"], size["width"]], "scale": bench_scale})
    assert sidecar["file_size"] == os.path.getsize(path) and nodes > 0
