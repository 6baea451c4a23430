"""The `perf` and `gates` verbs: throughput records (measured or parsed) and the recipe's two gates."""
from contextlib import ExitStack

from ..backends import create_backend, get_backend_class
from ..backends.benchmark_tool import run_info_file
from ..convert import read_om_sidecar
from ..errors import FsafReproError, ResultsError
from ..options import (BATCH_SIZE, BATCH_SIZES, COUNT, DEVICE_IDS, DURATION, NON_NEGATIVE_INT, POSITIVE_INT, TEXT,
                       THREADS, check_batch_memory)
from ..perf import (CARD_BASES, DEFAULT_MIN_BATCHES, DEFAULT_MIN_SECONDS, MODE_DEFINITIONS, benchmark_records,
                    best_batch, fixed_input, format_records, load_records, measure_card, measure_pure_inference,
                    parse_ais_bench_summary, parse_benchmark_perf, write_records)
from ..perf_gates import compare_to_reference, evaluate_gates, format_gates, reference_records
from .args import BACKEND_NAME, KEY_VALUE, input_file, output_file, output_place, parse_backend_options, typed
from .model_input import add_model_input_arguments, model_input


def register(subparsers):
    perf = subparsers.add_parser(
        "perf", help="measure pure-inference fps/latency of a backend, or parse benchmark/ais_bench output",
        description="Throughput records with their definitions. Measure: --backend NAME --model PATH runs a "
                    "fixed input --loops times after --warmup runs for each --batch-sizes. Parse: "
                    "--from-benchmark PERF_TXT or --from-ais-bench SUMMARY_JSON.")
    perf.add_argument("--backend", type=typed(BACKEND_NAME), help="backend name (see fsaf_repro.backends)")
    perf.add_argument("--model", type=input_file("model file"),
                      help="model file for the backend (onnx, om, checkpoint)")
    perf.add_argument("--batch-sizes", default="1", type=typed(BATCH_SIZES),
                      help="comma-separated batch sizes (default: 1)")
    perf.add_argument("--loops", type=typed(COUNT), default=DEFAULT_MIN_BATCHES,
                      help=f"at least this many timed runs per batch size (default: {DEFAULT_MIN_BATCHES})")
    perf.add_argument("--min-seconds", type=typed(DURATION), default=DEFAULT_MIN_SECONDS,
                      help=f"and timed runs for at least this many seconds (default: {DEFAULT_MIN_SECONDS:g}; "
                           "0: no minimum duration)")
    perf.add_argument("--warmup", type=typed(NON_NEGATIVE_INT), default=3,
                      help="untimed warm-up runs before them, never timed (default: 3; 0: none)")
    add_model_input_arguments(perf)
    perf.add_argument("--threads", type=typed(THREADS), default=None, help="intra-op threads for CPU backends")
    perf.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE", type=typed(KEY_VALUE),
                      help="backend option, repeatable (e.g. graph_optimization=basic, device_id=0)")
    perf.add_argument("--benchmark-info", metavar="INFO", type=input_file("info file"),
                      help="run the benchmark tool over this info file with --model (an .om), in --workdir, "
                           "and read its perf file (the recipe's full-dataset mode)")
    perf.add_argument("--workdir", default="benchmark_run", type=output_place("benchmark folder"),
                      help="where the benchmark tool writes result/")
    perf.add_argument("--device-id", type=typed(NON_NEGATIVE_INT), default=0, help="NPU device id (default: 0)")
    perf.add_argument("--benchmark-executable", default=None, type=typed(TEXT),
                      help="benchmark tool (default: benchmark.x86_64 or benchmark.aarch64 on PATH)")
    perf.add_argument("--from-benchmark", metavar="PERF_TXT", type=input_file("benchmark perf file"),
                      help="parse a benchmark tool perf file/output")
    perf.add_argument("--from-ais-bench", metavar="SUMMARY_JSON", type=input_file("ais_bench summary"),
                      help="parse an ais_bench summary json")
    perf.add_argument("--device", default="cpu", type=typed(TEXT),
                      help="device label of the records (310, 310P, 310P_aoe, T4, cpu...) (default: cpu)")
    perf.add_argument("--precision", default=None, type=typed(TEXT),
                      help="precision label (default: fp32 measured, fp16 parsed)")
    perf.add_argument("--chips", type=typed(POSITIVE_INT), default=None,
                      help="multiply parsed fps by this many chips (default: 4 for device 310, else 1)")
    perf.add_argument("--batch-size", type=typed(BATCH_SIZE), default=None, help="batch size of a parsed file")
    perf.add_argument("--devices", type=typed(DEVICE_IDS), default=None, metavar="IDS",
                      help="measure a card as a card: every listed chip at once (and the first alone), for a "
                           "backend with a device option (benchmark, ais_bench, aclruntime, onnxruntime-cann); "
                           "records the card's fps, each chip's and the scaling efficiency")
    perf.add_argument("--out", type=output_file("perf records file"), help="write the records as JSON here")
    perf.set_defaults(func=_cli_perf)
    _register_gates(subparsers)


def _register_gates(subparsers):
    gates = subparsers.add_parser(
        "gates", help="compare fps records with the recipe's table and evaluate its two gates",
        description="Without files: the gates on the recipe's own table. With record files (from `perf`): "
                    "each record beside the reference cell, then the gates on the measured records.")
    gates.add_argument("records", nargs="*", type=input_file("perf records file"),
                       help="JSON files written by `fsaf-repro perf --out`")
    gates.add_argument("--mode", default="inference", choices=sorted(MODE_DEFINITIONS),
                       help="which throughput the gates compare (the recipe's table is pure inference)")
    gates.add_argument("--no-fail", action="store_true", help="exit 0 even when a gate fails")
    gates.add_argument("--with-reference", action="store_true",
                       help="a gate device without measured records takes the recipe's reference table "
                            "(e.g. 310 numbers on a 310P host); said in the gate's caveats")
    gates.add_argument("--card-basis", default="measured", choices=sorted(CARD_BASES),
                       help="of a card measured with perf --devices, gate on the measured card figure (default) "
                            "or on the recipe's convention (one chip x the chip count)")
    gates.add_argument("--strict", action="store_true",
                       help="exit 1 when a gate cannot be evaluated (no records for one of its devices)")
    gates.set_defaults(func=_cli_gates)


def _cli_perf(args):
    if args.benchmark_info:
        records = _run_benchmark_info(args)
    elif args.from_benchmark or args.from_ais_bench:
        records = _records_from_tool_output(args)
    else:
        records = _measure(args)
    print(format_records(records))
    if args.out:
        write_records(args.out, records)
        print(f"records written to {args.out}")
    return 0


def _run_benchmark_info(args):
    """The recipe's full-dataset run: the benchmark tool over a whole info file, then its perf file."""
    if not args.model:
        raise ResultsError("--benchmark-info needs --model (the .om)")
    sidecar = read_om_sidecar(args.model)  # an ONNX file's export sidecar is refused, naming it
    batch_size = args.batch_size or (sidecar["batch_size"] if sidecar else None)
    if batch_size is None:
        raise ResultsError(f"{args.model} has no conversion sidecar: give --batch-size")
    # the om's own input size (its conversion sidecar) unless given; the recipe's otherwise
    model = model_input(args.model, args.height, args.width, args.input_dtype)
    result = run_info_file(args.model, batch_size, args.benchmark_info, model.width, model.height, args.workdir,
                           device_id=args.device_id, executable=args.benchmark_executable)
    print(f"outputs: {result['outputs_dir']} (perf file {result['perf_file']}, log {result['log']})")
    return benchmark_records(result["perf"], args.device, batch_size, args.precision or "fp16")


def _records_from_tool_output(args):
    """Records read from a benchmark perf file or an ais_bench summary written elsewhere."""
    precision = args.precision or "fp16"
    if args.from_benchmark:
        return parse_benchmark_perf(args.from_benchmark, args.device, args.batch_size, precision, chips=args.chips)
    if args.batch_size is None:
        raise ResultsError("--from-ais-bench needs --batch-size (the summary does not record it)")
    return [parse_ais_bench_summary(args.from_ais_bench, args.device, args.batch_size, precision, chips=args.chips)]


def _measure_card(args, model, sizes, options):
    """Card records (perf.measure_card) of --backend on --model at each batch size, chips --devices."""
    device_option = get_backend_class(args.backend).device_option
    if not device_option:
        raise ResultsError(f"--devices: backend {args.backend} has no device option (its class's device_option); "
                           "a card is measured with benchmark, ais_bench, aclruntime or onnxruntime-cann")
    records = []
    for bs in sizes:
        with ExitStack() as stack:
            chips = []
            for device in args.devices:
                backend = stack.enter_context(create_backend(args.backend, **dict(options, **{device_option: device})))
                chips.append((device, backend.load(args.model)))
            batch = fixed_input(bs, model.height, model.width, model.input_dtype)
            records.extend(measure_card(chips, batch, args.loops, args.warmup, args.device, args.precision or "fp32",
                                        args.backend, min_seconds=args.min_seconds))
    for record in records[::2]:
        card = record["card"]
        print("card bs{}: {:.3f} fps on {} chips at once ({}), one chip alone {:.3f} fps, x{} {:.3f}: scaling "
              "efficiency {:.3f}".format(record["batch_size"], card["measured_fps"], len(card["devices"]),
                                         ", ".join(f"{fps:.3f}" for fps in card["per_chip_fps"]),
                                         card["single_chip_fps"], len(card["devices"]), card["convention_fps"],
                                         card["scaling_efficiency"]))
    return records


def _measure(args):
    """Pure-inference records of --backend on --model, one per batch size."""
    if not args.backend:
        raise ResultsError("give --backend and --model to measure, or --from-benchmark/--from-ais-bench")
    sizes = args.batch_sizes  # a sorted list of positive ints (BATCH_SIZES)
    # the canvas and dtype the model was exported at (its sidecar) unless given; a contradiction is refused
    model = model_input(args.model, args.height, args.width, args.input_dtype, backend=args.backend)
    for bs in sizes:
        check_batch_memory(bs, model.height, model.width, "--batch-sizes")
    try:
        options = parse_backend_options(args.backend_option)
    except FsafReproError as exc:
        raise ResultsError(str(exc)) from None
    if args.threads is not None:
        options["threads"] = args.threads
    if args.devices is not None:
        return _measure_card(args, model, sizes, options)
    records = []
    for bs in sizes:
        with create_backend(args.backend, **options) as backend:
            backend.load(args.model)
            batch = fixed_input(bs, model.height, model.width, model.input_dtype)
            records.append(measure_pure_inference(backend, batch, args.loops, args.warmup, args.device,
                                                  args.precision or "fp32", args.backend,
                                                  min_seconds=args.min_seconds))
    best = best_batch(records)
    print(f"best batch: {best['batch_size']} ({best['fps']:.3f} fps)")
    return records


def _cli_gates(args):
    reference = reference_records()
    if not args.records:
        print("recipe section 7.1 table (reference):")
        print(format_records(reference))
        print("")
        results = evaluate_gates(reference, mode="inference")
    else:
        measured = []
        for path in args.records:
            measured.extend(load_records(path))
        print("measured vs reference:")
        for row in compare_to_reference(measured):
            m = row["measured"]
            ratio = "" if row["ratio"] is None else f" = {row['ratio']:.3f} x reference {row['reference']['fps']:.3f}"
            print(f"  {m['device']} {m['backend']} bs{m['batch_size']} {m['mode']}: {m['fps']:.3f} fps{ratio}")
            for caveat in row["caveats"]:
                print("    caveat: " + caveat)
        filled = []
        if args.with_reference:
            measured_devices = {r["device"] for r in measured if r["mode"] == args.mode}
            filled = sorted({r["device"] for r in reference} - measured_devices)
            measured = measured + [r for r in reference if r["device"] in filled]
        results = evaluate_gates(measured, mode=args.mode, card_basis=args.card_basis)
        for gate in results:
            for side in ("numerator_device", "denominator_device"):
                if gate[side] in filled:
                    gate["caveats"].append(f"{gate[side]} from the recipe's reference table (section 7.1), not "
                                           "measured here")
    print(format_gates(results))
    failed = [g for g in results if g["passed"] is False]
    unevaluated = [g for g in results if g["passed"] is None]
    if unevaluated and args.strict:
        names = ", ".join("{} ({})".format(g["name"], g.get("verdict") or "no record") for g in unevaluated)
        print(f"strict: {len(unevaluated)} gate(s) not decided: {names}")
        return 1
    return 1 if failed and not args.no_fail else 0
