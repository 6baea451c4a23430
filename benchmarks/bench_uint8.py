"""uint8 input mode vs the recipe's float path (issue 4's figure), measured in one run.

The uint8 mode moves normalisation into the exported graph (the ATC/AIPP way): the host only decodes,
resizes and pads into a uint8 canvas, and the graph gets each image's resized size (`image_hw`) to
restore the recipe's zero padding exactly. Measured here, on the same generated images:
- host preprocessing images/s, the recipe's step as a whole (decode, transform, write the .bin):
  `letterbox_to_canvas_uint8` vs `letterbox_to_canvas`, one thread each, alternating rounds so machine
  drift hits both — goal >= 2x; decode + transform alone is reported beside it;
- bytes per .bin file: float32 vs uint8 canvas — goal 4x smaller;
- detections: the uint8-input ONNX model (ONNX Runtime) vs the float-input model on the float
  canvases, compared with fsaf_repro.parity at the spec's tolerances.

    .venv/bin/python benchmarks/bench_uint8.py [--images 40 --rounds 3 --parity-height 512 --parity-width 768]

Writes benchmarks/results/bench_uint8.json.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from _scratch import scratch_dir  # noqa: E402
from fsaf_repro.fileio import atomic_write_json  # noqa: E402


def _time_preprocess(paths, transform, height, width, out_dir=None):
    """Seconds to decode + transform every image, and with `out_dir` also write each `.bin` (the
    recipe's preprocessing step as a whole)."""
    from fsaf_repro.data import read_bgr

    started = time.perf_counter()
    for index, path in enumerate(paths):
        canvas = transform(read_bgr(path), height, width)[0]
        if out_dir is not None:
            canvas.tofile(os.path.join(out_dir, "{}.bin".format(index)))
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--parity-images", type=int, default=4)
    parser.add_argument("--parity-height", type=int, default=512)
    parser.add_argument("--parity-width", type=int, default=768)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_uint8.json"))
    args = parser.parse_args(argv)

    import cv2
    import numpy as np

    from fsaf_repro.backends import create_backend
    from fsaf_repro.checkpoint import write_seeded_checkpoint
    from fsaf_repro.data import CocoImageSet, bin_bytes, letterbox_to_canvas, letterbox_to_canvas_uint8
    from fsaf_repro.export import export_onnx
    from fsaf_repro.parity import compare_detections, within_tolerances
    from fsaf_repro.synthetic import make_synthetic_coco

    cv2.setNumThreads(1)
    workdir = scratch_dir(None, "bench_uint8_")
    annotations, image_dir = make_synthetic_coco(os.path.join(workdir, "coco"), num_images=args.images, seed=0)
    image_set = CocoImageSet(annotations, image_dir, height=args.height, width=args.width)
    paths = [meta.path for meta in image_set.metas]

    seconds = {"float": 0.0, "uint8": 0.0, "float_bin": 0.0, "uint8_bin": 0.0}
    bin_dir = os.path.join(workdir, "bins")
    os.makedirs(bin_dir)
    for _ in range(args.rounds):
        seconds["float"] += _time_preprocess(paths, letterbox_to_canvas, args.height, args.width)
        seconds["uint8"] += _time_preprocess(paths, letterbox_to_canvas_uint8, args.height, args.width)
        seconds["float_bin"] += _time_preprocess(paths, letterbox_to_canvas, args.height, args.width, bin_dir)
        seconds["uint8_bin"] += _time_preprocess(paths, letterbox_to_canvas_uint8, args.height, args.width,
                                                 bin_dir)
    total = float(len(paths) * args.rounds)
    float_ips = total / seconds["float"]
    uint8_ips = total / seconds["uint8"]
    float_bin_ips = total / seconds["float_bin"]
    uint8_bin_ips = total / seconds["uint8_bin"]
    float_bytes = bin_bytes(args.height, args.width)
    uint8_bytes = 3 * args.height * args.width

    # Detections: uint8 model on uint8 canvases vs float model on float canvases.
    checkpoint = os.path.join(workdir, "fsaf_seeded_0.pth")
    write_seeded_checkpoint(checkpoint, seed=0)
    ph, pw = args.parity_height, args.parity_width
    float_model = os.path.join(workdir, "fsaf_float.onnx")
    uint8_model = os.path.join(workdir, "fsaf_uint8.onnx")
    export_onnx(checkpoint, float_model, flavour="onnx-nms", height=ph, width=pw, batch_size=None)
    export_onnx(checkpoint, uint8_model, flavour="onnx-nms", height=ph, width=pw, batch_size=None,
                input_dtype="uint8")
    from fsaf_repro.data import read_bgr

    floats, canvases, sizes = [], [], []
    for path in paths[:args.parity_images]:
        bgr = read_bgr(path)
        chw, _, new_h, new_w = letterbox_to_canvas(bgr, ph, pw)
        canvas, _, _, _ = letterbox_to_canvas_uint8(bgr, ph, pw)
        floats.append(chw)
        canvases.append(canvas)
        sizes.append((new_h, new_w))
    with create_backend("onnxruntime") as backend:
        backend.load(float_model)
        ref = backend.run(np.stack(floats))
    with create_backend("onnxruntime") as backend:
        backend.load(uint8_model)
        out = backend.run(np.stack(canvases), image_hw=np.array(sizes, dtype=np.int32))
    record = compare_detections(ref["dets"], ref["labels"], out["dets"], out["labels"])

    result = {
        "benchmark": "uint8_input",
        "canvas_hw": [args.height, args.width],
        "images": len(paths),
        "rounds": args.rounds,
        "float_images_per_s": round(float_ips, 2),
        "uint8_images_per_s": round(uint8_ips, 2),
        "transform_speedup": round(uint8_ips / float_ips, 3),
        "float_to_bin_images_per_s": round(float_bin_ips, 2),
        "uint8_to_bin_images_per_s": round(uint8_bin_ips, 2),
        "preprocess_speedup": round(uint8_bin_ips / float_bin_ips, 3),
        "preprocess_goal": 2.0,
        "float_bin_bytes": float_bytes,
        "uint8_bin_bytes": uint8_bytes,
        "bin_size_ratio": round(float_bytes / float(uint8_bytes), 3),
        "parity_hw": [ph, pw],
        "parity": record,
        "parity_within_tolerances": within_tolerances(record),
    }
    atomic_write_json(args.out, result)
    print("decode + transform: float {:.1f} img/s, uint8 {:.1f} img/s -> {:.2f}x".format(
        float_ips, uint8_ips, result["transform_speedup"]))
    print("preprocess to .bin (decode + transform + write): float {:.1f} img/s, uint8 {:.1f} img/s -> {:.2f}x "
          "(goal >= 2x)".format(float_bin_ips, uint8_bin_ips, result["preprocess_speedup"]))
    print(".bin bytes: float32 {} vs uint8 {} -> {:.1f}x smaller (goal 4x)".format(
        float_bytes, uint8_bytes, result["bin_size_ratio"]))
    print("detections uint8 vs float model ({} images at {}x{}): {} detections, max box diff {:.2e} px, "
          "max score diff {:.2e}, labels equal {}, within tolerances {}".format(
              args.parity_images, ph, pw, record["detections_ref"], record["max_box_abs_diff"],
              record["max_score_abs_diff"], record["labels_equal"], result["parity_within_tolerances"]))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
