"""The `infer` verb: stream a COCO image set through a backend into a results json (resumable)."""
from ..backends import create_backend
from ..data import CocoImageSet
from ..locking import run_lock
from ..options import BATCH_SIZE, THREADS, Integer, check_batch_memory
from ..perf import format_records, write_records
from ..runner import infer_dataset
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
    parser.set_defaults(func=_cli_infer)


def _cli_infer(args):
    # the lock first: a second run on these results refuses before it loads the images or the model
    with run_lock(args.out, "infer"):
        return _cli_infer_locked(args)


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
    with create_backend(args.backend, **options) as backend:
        backend.load(args.model)
        summary = infer_dataset(image_set, backend, args.out, batch_size=args.batch_size, prefetch=args.prefetch,
                                workers=args.workers, skip_bad=args.skip_bad, progress=not args.no_progress,
                                input_dtype=model.input_dtype, backend_name=args.backend, backend_options=options,
                                model_path=args.model, keep_journal=args.keep_journal, restart=args.restart)
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

