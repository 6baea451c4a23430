"""The `export` verb (recipe step 3.1): checkpoint (or seeded weights) -> ONNX, opset 11."""
import os

from ..checkpoint import write_seeded_checkpoint
from ..export import FLAVOURS, INPUT_DTYPES, export_onnx
from ..options import BATCH_SIZE, IMAGE_SIDE, SEED, Integer, check_batch_memory
from ..spec import input_constants, model_constants
from .args import input_file, output_file, typed

# ONNX opsets torch's exporter writes (torch 1.8: 7-13, current torch: up to 20); the recipe's is 11
OPSET = Integer(7, 20, what="an ONNX opset")


def register(subparsers):
    parser = subparsers.add_parser(
        "export", help="recipe 3.1: export the checkpoint (or seeded weights) to ONNX, opset 11")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=input_file("checkpoint"),
                        help="mmdetection checkpoint, e.g. fsaf_r50_fpn_1x_coco-94ccc51f.pth (this or --seeded is "
                             "required)")
    source.add_argument("--seeded", type=typed(SEED), metavar="SEED",
                        help="write seeded weights in the official layout beside the output and export them (this "
                             "or --checkpoint is required)")
    parser.add_argument("--output", required=True, type=output_file("ONNX file"), help="path of the .onnx to write")
    parser.add_argument("--flavour", choices=FLAVOURS, default="onnx-nms",
                        help="where NMS runs: onnx-nms in the graph (ONNX Runtime), ascend-nms as atc's "
                             "BatchMultiClassNMS node (for convert), raw on the host")
    parser.add_argument("--height", type=typed(IMAGE_SIDE), default=input_constants()["height"],
                        help="network input height (default: the recipe's)")
    parser.add_argument("--width", type=typed(IMAGE_SIDE), default=input_constants()["width"],
                        help="network input width (default: the recipe's)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=typed(BATCH_SIZE), default=1,
                       help="static batch size (the trace runs a batch of this size: its memory is checked)")
    batch.add_argument("--dynamic-batch", action="store_true", help="export a dynamic batch dimension")
    parser.add_argument("--input-dtype", choices=INPUT_DTYPES, default="float32",
                        help="uint8 moves normalisation into the graph (the ATC/AIPP way)")
    parser.add_argument("--opset", type=typed(OPSET), default=model_constants()["opset"],
                        help="ONNX opset (default: the recipe's)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load with the full unpickler (only for files you trust)")
    parser.set_defaults(func=_cli_export)


def _cli_export(args):
    if not args.dynamic_batch:
        check_batch_memory(args.batch_size, args.height, args.width, "--batch-size")
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = os.path.splitext(args.output)[0] + f"-seeded{args.seeded}.pth"
        write_seeded_checkpoint(checkpoint, args.seeded)
    sidecar = export_onnx(checkpoint, args.output, flavour=args.flavour, height=args.height,
                          width=args.width, batch_size=None if args.dynamic_batch else args.batch_size,
                          opset=args.opset, input_dtype=args.input_dtype, trusted=args.trust_checkpoint)
    model_input = sidecar["input"]
    print(f"exported {args.output} ({sidecar['flavour']} flavour, input {model_input['dtype']} {model_input['shape']}, "
          f"{sidecar['file_size'] / 1e6:.1f} MB, {sidecar['export_seconds']:.1f} s)")
    return 0
