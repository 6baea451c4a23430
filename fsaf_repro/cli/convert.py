"""The `convert` verb (recipe step 3.2): ONNX -> one .om per batch size with atc (or aoe tuning)."""
import os

from ..convert import (DEFAULT_BATCH_SIZES, DEFAULT_OUT_NODES, DEFAULT_PRECISION_MODE, PRECISION_MODES,
                       convert_batch_sizes)
from ..options import BATCH_SIZES, TEXT, TIMEOUT
from .args import input_file, output_dir, typed


def register(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="convert an ONNX model to .om files with atc (or aoe operator tuning), one per batch size",
        description="Recipe step 3.2: atc --framework=5 ... for each batch size; with --aoe, the recipe's "
                    "aoe --job_type=2 operator tuning instead. Each om gets a log and a sidecar json "
                    "beside it.")
    parser.add_argument("onnx", type=input_file("ONNX model"),
                        help="exported ONNX model (its sidecar <onnx>.json supplies the input shape)")
    parser.add_argument("--out-dir", default="om", type=output_dir("om folder"),
                        help="where the .om files, logs and sidecars go (default: om)")
    parser.add_argument("--batch-sizes", default=",".join(str(b) for b in DEFAULT_BATCH_SIZES), type=typed(BATCH_SIZES),
                        help="comma-separated batch sizes (default: the recipe's 1,4,8,16,32,64)")
    parser.add_argument("--soc-version", default=None, type=typed(TEXT),
                        help="e.g. Ascend310P3; default: read from `npu-smi info`")
    parser.add_argument("--precision-mode", default=DEFAULT_PRECISION_MODE, choices=PRECISION_MODES,
                        help="atc --precision_mode (the recipe's om is fp16)")
    parser.add_argument("--out-nodes", default=DEFAULT_OUT_NODES, type=typed(TEXT),
                        help="atc --out_nodes (default: dets;labels)")
    parser.add_argument("--aoe", action="store_true",
                        help="run aoe operator tuning (job type 2) instead of atc")
    parser.add_argument("--job-type", type=int, default=2, choices=(1, 2), help="aoe job type (default: 2)")
    parser.add_argument("--log-level", default="error", type=typed(TEXT), help="atc --log level (default: error)")
    parser.add_argument("--atc", default=None, type=typed(TEXT), help="atc executable (default: atc on PATH)")
    parser.add_argument("--aoe-bin", default=None, type=typed(TEXT), help="aoe executable (default: aoe on PATH)")
    parser.add_argument("--npu-smi", default="npu-smi", type=typed(TEXT),
                        help="npu-smi executable (default: npu-smi on PATH)")
    parser.add_argument("--timeout", type=typed(TIMEOUT), default=None,
                        help="seconds allowed per conversion, finite and > 0 (default: no limit)")
    parser.add_argument("--stop-on-error", action="store_true", help="stop at the first failing batch size")
    parser.set_defaults(func=_cli_convert)


def _cli_convert(args):
    sizes = args.batch_sizes  # a sorted list of positive ints (BATCH_SIZES)
    kwargs = dict(precision_mode=args.precision_mode, out_nodes=args.out_nodes, log_level=args.log_level,
                  job_type=args.job_type, timeout=args.timeout,
                  executable=args.aoe_bin if args.aoe else args.atc)
    results = convert_batch_sizes(args.onnx, args.out_dir, sizes, soc_version=args.soc_version, aoe=args.aoe,
                                  npu_smi=args.npu_smi, keep_going=not args.stop_on_error, **kwargs)
    for bs in sorted(results):
        om = os.path.join(args.out_dir, results[bs]["om"])
        print(f"batch size {bs}: {om} ({results[bs]['soc_version'] or 'aoe'})")
    return 0
