"""The `infer` verb: stream a COCO image set through a backend into a results json (resumable), on one
device, one shard (`--shard i/n`) or every listed device at once (`--devices`); and the `merge` verb."""
import json
import os

from ..backends import create_backend, get_backend_class
from ..data import CocoImageSet
from ..errors import OptionError
from ..locking import run_lock
from ..options import BATCH_SIZE, DEVICE_IDS, SHARD, THREADS, Integer, check_batch_memory
from ..perf import format_records, write_records
from ..runner import infer_dataset
from ..shards import merge_parts
from .args import BACKEND_NAME, KEY_VALUE, input_file, output_file, parse_backend_options, typed
from .model_input import add_model_input_arguments, model_input
from .preprocess import add_image_set_arguments

# batches decoded ahead: each holds a batch of images in memory (check_batch_memory counts them)
PREFETCH = Integer(1, 64, what="a number of batches")


def register(subparsers):
    parser = subparsers.add_parser(
        "infer", help="run a backend over a COCO image set (or an image folder) and write a COCO results json "
                      "(resumable)",
        description="Streaming inference: images -> backend -> COCO results json. Killed and started again "
                    "with the same arguments, the run continues from its journal (<out>.journal) and "
                    "writes the same results.")
    add_image_set_arguments(parser, canvas=False)
    add_model_input_arguments(parser)
    parser.add_argument("--backend", default="onnxruntime", type=typed(BACKEND_NAME),
                        help="backend name")
    parser.add_argument("--model", default=None, type=input_file("model file"),
                        help="model file (.onnx, .om, checkpoint .pth)")
    parser.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE", type=typed(KEY_VALUE),
                        help="backend option, repeatable (e.g. threads=2, device_id=0, batch_size=4)")
    parser.add_argument("--batch-size", type=typed(BATCH_SIZE), default=None,
                        help="images per batch, at most the number of images run and what memory allows "
                             "(default: the model's static batch size, else 1)")
    parser.add_argument("--prefetch", type=typed(PREFETCH), default=2, help="batches decoded ahead (default: 2)")
    parser.add_argument("--workers", type=typed(THREADS), default=2, help="decoding threads (default: 2)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable images and list them (default: stop with the file named)")
    parser.add_argument("--out", required=True, type=output_file("results file"), help="results json to write")
    parser.add_argument("--perf-out", default=None, type=output_file("perf records file"),
                        help="write this session's fps records (perf format)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--keep-journal", action="store_true", help="keep <out>.journal after success")
    parser.add_argument("--restart", action="store_true", help="discard an existing journal and start over")
    parser.add_argument("--shard", default=None, type=typed(SHARD), metavar="I/N",
                        help="run only shard I of N (0 <= I < N: contiguous parts on batch boundaries) and write "
                             "<out>.shard.json beside the results, for `merge` (e.g. one CI job per shard)")
    parser.add_argument("--devices", default=None, type=typed(DEVICE_IDS), metavar="IDS",
                        help="run one shard per listed device at once, each in its own process and journal under "
                             "<out>.parts/, then merge them into <out>: NPU/GPU ids for a backend with a device "
                             "option (benchmark, ais_bench, aclruntime, onnxruntime-cann), else that many CPU "
                             "worker processes with the threads (threads=, default all cores) split between them")
    parser.set_defaults(func=_cli_infer)

    merge = subparsers.add_parser(
        "merge", help="merge the parts of a sharded run (infer --shard) into one results json",
        description="Combines the results of `infer --shard i/n` runs (each with its <results>.shard.json) into "
                    "one COCO results json, byte-identical to a one-device run. Refuses parts of different runs "
                    "and a set of parts with an image missing or given twice, naming the images.")
    merge.add_argument("parts", nargs="+", type=input_file("part results file"),
                       help="the parts' results jsons (or their .shard.json records)")
    merge.add_argument("--out", required=True, type=output_file("results file"), help="merged results json")
    merge.set_defaults(func=_cli_merge)


def _cli_infer(args):
    if args.shard is not None and args.devices is not None:
        raise OptionError("--shard and --devices: give one (--devices runs every shard of this host itself)")
    if args.devices is not None and args.perf_out:
        raise OptionError("--perf-out with --devices: each shard times only its part (its log under <out>.parts/ "
                          "has its figures); run without --devices for one dataset fps record")
    # the lock first: a second run on these results refuses before it loads the images or the model
    with run_lock(args.out, "infer"):
        if args.devices is not None:
            return _cli_infer_devices(args)
        return _cli_infer_locked(args)


# the arguments a shard process takes over from the command, by their destination: (flag, kind)
# with kind "value" (passed with its value when given) or "flag" (store_true)
SHARD_PASSED = (("annotations", "value"), ("images", "value"), ("limit", "value"), ("height", "value"),
                ("width", "value"), ("backend", "value"), ("model", "value"), ("batch_size", "value"),
                ("input_dtype", "value"), ("prefetch", "value"), ("workers", "value"), ("skip_bad", "flag"),
                ("restart", "flag"))


def _shard_argv(args, options, index, count, out):
    argv = ["infer", "--shard", f"{index}/{count}", "--out", out, "--no-progress", "--keep-journal"]
    for dest, kind in SHARD_PASSED:
        value = getattr(args, dest)
        if kind == "flag" and value:
            argv.append("--" + dest.replace("_", "-"))
        elif kind == "value" and value is not None:
            argv += ["--" + dest.replace("_", "-"), str(value)]
    for key, value in options.items():
        argv += ["--backend-option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return argv


def _cli_infer_devices(args):
    from ..devices import describe_device, part_path, parts_dir, run_shard_processes, shard_options
    devices = args.devices
    cls = get_backend_class(args.backend)
    options = parse_backend_options(args.backend_option)
    cls.check_options(options)
    count = len(devices)
    per_shard = shard_options(cls, devices, options.get("threads"))
    folder = parts_dir(args.out)
    if not os.path.isdir(folder):
        os.makedirs(folder)
    parts = [part_path(args.out, i, count) for i in range(count)]
    argvs = [_shard_argv(args, dict(options, **per_shard[i]), i, count, parts[i]) for i in range(count)]
    labels = [f"{describe_device(cls, device)} (shard {i}/{count})" for i, device in enumerate(devices)]
    run_shard_processes(argvs, labels, [part + ".log" for part in parts])
    summary = merge_parts(parts, args.out)
    print(f"{summary['detections']} detections for {summary['images']} images written to {summary['results']} "
          f"(merged from {count} shards on {', '.join(labels)})")
    if not args.keep_journal:
        for part in parts:
            for path in (part, part + ".shard.json", part + ".journal", part + ".log", part + ".skipped.json"):
                if os.path.exists(path):
                    os.remove(path)
        os.rmdir(folder)
    return 0


def _cli_merge(args):
    with run_lock(args.out, "merge"):
        summary = merge_parts(args.parts, args.out)
    print(f"{summary['detections']} detections for {summary['images']} images from {summary['parts']} parts "
          f"written to {summary['results']}")
    return 0


def _cli_infer_locked(args):
    # the canvas and dtype the model was exported at (its sidecar) unless given; a contradiction is refused
    model = model_input(args.model, args.height, args.width, args.input_dtype, backend=args.backend)
    image_set = CocoImageSet(args.annotations, args.images, limit=args.limit, height=model.height,
                             width=model.width)
    if args.batch_size is not None:
        # the loader holds prefetch + 2 batches (its recycled buffers), the backend one batch's activations
        check_batch_memory(args.batch_size, image_set.height, image_set.width, "--batch-size",
                           batches_in_flight=args.prefetch + 2, images=len(image_set))
    options = parse_backend_options(args.backend_option)
    shard = args.shard
    device_option = get_backend_class(args.backend).device_option
    with create_backend(args.backend, **options) as backend:
        backend.load(args.model)
        summary = infer_dataset(image_set, backend, args.out, batch_size=args.batch_size, prefetch=args.prefetch,
                                workers=args.workers, skip_bad=args.skip_bad, progress=not args.no_progress,
                                input_dtype=model.input_dtype, backend_name=args.backend, backend_options=options,
                                model_path=args.model, keep_journal=args.keep_journal, restart=args.restart,
                                shard=shard, device=(str(options[device_option]) if device_option in options
                                                     else None))
    resumed = (f" ({summary['reused_images']} images reused from the journal, {summary['images_this_session']} run now)"
               if summary["reused_images"] else "")
    print(f"{summary['detections']} detections for {summary['images']} images written to {summary['results']}"
          f"{resumed}")
    for item in summary["skipped"]:
        print(f"skipped: {item['path']} (image id {item['image_id']}): {item['reason']}")
    if summary["records"]:
        print(format_records(summary["records"]))
        if args.perf_out:
            write_records(args.perf_out, summary["records"])
    return 0

