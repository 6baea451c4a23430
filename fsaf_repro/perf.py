"""Throughput: measured and published fps as one kind of record, compared with their meaning stated.

Every figure is a *result record*:

    {"device", "backend", "precision", "batch_size", "fps", "latencies_ms": {"mean", "p50", "p90", "p99"},
     "mode", "source", "chips": k, "scope", "note"}

`mode` says what the fps measures (MODE_DEFINITIONS, printed with every table):
- e2e            full dataset, images / wall-clock time from the first read to the last result written;
- inference      full dataset, images / time spent inside the runtime's inference call only
                 (the benchmark tool's `Interface throughputRate`, ais_bench's `throughput`);
- pure_inference one fixed input run N times after warm-up, images / time of those N runs.

The ModelZoo convention for Ascend 310 tables is per *card*: the tool measures one of the card's four
chips and the scripts report `Interface throughputRate x 4`. A record keeps that factor in `chips`
(4 for a 310 card figure, 1 otherwise) and `fps_measured` (the tool's own number), so that a per-chip
figure is never compared with a per-card one by accident.

The recipe's reference table, the comparisons and the gates on these records are in fsaf_repro.perf_gates.
"""
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .backends import Backend, find_backend_class
from .backends.ais_bench_cli import read_ais_bench_result
from .backends.benchmark_tool import read_benchmark_perf
from .errors import BackendError, FsafReproError, OutputFormatError, ResultsError, ToolError
from .fileio import atomic_write_json
from .jsonio import (array, boolean, integer, load_json, mapping, nullable, obj, one_of, real_number, text_value,
                     validate)
from .spec import input_constants

MODE_DEFINITIONS = {
    "e2e": "full dataset, end to end: images / wall-clock seconds from the first image read to the last "
           "result written (loading, preprocessing, inference, postprocessing)",
    "inference": "full dataset, pure inference: images / seconds spent inside the runtime's inference "
                 "call only (benchmark tool: Interface throughputRate; ais_bench: throughput)",
    "pure_inference": "inputs fixed in memory (one batch repeated N times, or preloaded images), timed "
                      "runs after warm-up: images / seconds of the timed runs (no data loading); the "
                      "recipe's benchmark pure-inference mode",
}
ASCEND_310_CHIPS_PER_CARD = 4
SCOPE_310_CARD = ("per card: the tool's per-chip figure x 4 (an Ascend 310 card has 4 chips; ModelZoo "
                  "reports Interface throughputRate x 4)")
RECORD_KEYS = ("device", "backend", "precision", "batch_size", "fps", "latencies_ms", "mode", "source")


def _is_310_card(device):
    return str(device) == "310" or str(device).startswith("310_")


def default_chips(device):
    """The ModelZoo convention: 310 table figures are per card (4 chips); every other device 1."""
    return ASCEND_310_CHIPS_PER_CARD if _is_310_card(device) else 1


def _backend_facts(name):
    """The registered class of backend `name` (its record facts), without importing any runtime; the
    contract's defaults (labels kept as given) for a name this package does not register (a tool's or a
    published figure's)."""
    return find_backend_class(str(name)) or Backend


def check_record_labels(record, origin):
    """Refuse a record whose labels its backend's class does not allow (e.g. an fp16 emulation labelled
    as an NPU measurement)."""
    _backend_facts(record.get("backend")).check_record(record, origin)


@dataclass(frozen=True)
class RecordLabel:
    """What a throughput figure is of: the device, the backend, the precision and the batch size (None: not
    stated by its source). The backend's class may relabel device and precision (see make_record)."""
    device: str
    backend: str
    precision: str
    batch_size: Optional[int]


@dataclass(frozen=True)
class Coverage:
    """What a figure was timed over: `images` in `seconds`; `images_total` is the data set's size when the
    figure covers only `images` of it (a resumed run timed only the images it ran). None: not stated."""
    images: Optional[int] = None
    seconds: Optional[float] = None
    images_total: Optional[int] = None


def make_record(label, fps, mode, source, latencies_ms=None, chips=1, fps_measured=None, note=None,
                coverage=Coverage(), scope=None):
    """Build and check one result record (ResultsError on a malformed value).

    A figure whose `coverage` has fewer images than its images_total is marked partial, and no gate uses it."""
    device, backend, precision, batch_size = label.device, label.backend, label.precision, label.batch_size
    images, seconds, images_total = coverage.images, coverage.seconds, coverage.images_total
    if mode not in MODE_DEFINITIONS:
        raise ResultsError("unknown throughput mode {!r}; one of {}".format(
            mode, ", ".join(MODE_DEFINITIONS)))
    # the backend's class decides the labels its records carry: an emulation's figure carries its own
    # and never an NPU device's (backends.fp16_emulation); a backend not registered here keeps them
    device, precision = _backend_facts(backend).record_labels(device, precision)
    if fps is not None and (not np.isfinite(fps) or fps <= 0):
        raise ResultsError(f"{device} {backend} batch {batch_size}: fps must be a positive number, got {fps!r} "
                           f"(source {source})")
    chips = int(chips)
    record = {
        "device": str(device), "backend": str(backend), "precision": str(precision),
        "batch_size": int(batch_size) if batch_size is not None else None,
        "fps": float(fps) if fps is not None else None,
        "fps_measured": float(fps_measured) if fps_measured is not None else (
            float(fps) / chips if fps is not None else None),
        "chips": chips,
        "scope": scope or (SCOPE_310_CARD if chips == ASCEND_310_CHIPS_PER_CARD else "as measured (one device)"),
        "latencies_ms": dict(latencies_ms or {}),
        "mode": mode, "definition": MODE_DEFINITIONS[mode], "source": str(source), "note": note,
    }
    if images is not None:
        record["images"] = int(images)
    if seconds is not None:
        record["seconds"] = float(seconds)
    if images_total is not None and images is not None and int(images) < int(images_total):
        record.update(partial=True, images_total=int(images_total),
                      definition=f"{MODE_DEFINITIONS[mode]}; PARTIAL: timed over {int(images)} of the "
                                 f"{int(images_total)} images (the others ran in an earlier, interrupted session)")
    return record


def partial_coverage(record):
    """'k of n images' for a partial record (see make_record), None for a whole-dataset one."""
    if not record.get("partial"):
        return None
    return f"{record.get('images')} of {record.get('images_total')} images"


# Percentiles are reported only where the sample count supports them: percentile q needs at least
# 100 / (100 - q) samples, so that at least one sample lies above it (p90: 10, p99: 100); below that
# a p99 is the maximum of a few samples under another name. The median is always reported, with the
# spread of the samples (min, max) and, from BOOTSTRAP_MIN_SAMPLES on, a bootstrap 95 % interval.
PERCENTILE_MIN_SAMPLES = {"p90": 10, "p99": 100}
PERCENTILE_RULE = "p90 with >= 10 samples, p99 with >= 100 (at least one sample above the percentile)"
# a bootstrap over fewer samples than this resamples a handful of values: min-max says more
BOOTSTRAP_MIN_SAMPLES = 5
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the same samples give the same interval in every report
# Above this many calls, consecutive calls are pooled into this many groups and the groups are resampled
# (batch means): the resampling's memory and time stay bounded whatever the call rate. A 2 s minimum on
# a backend that answers in microseconds times millions of calls, and resampling those one by one took
# 2000 x N indices (24 GB, killed by the OOM killer inside the CPU image).
BOOTSTRAP_MAX_GROUPS = 1000


def latency_summary(latencies_s):
    """mean/p50 (median)/min/max and the sample count, in milliseconds, of per-call latencies given in
    seconds; p90/p99 only where PERCENTILE_MIN_SAMPLES allows."""
    values = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    if values.size == 0:
        raise ResultsError("no latency sample to summarise")
    summary = {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
               "min": float(values.min()), "max": float(values.max()), "count": int(values.size)}
    for name, needed in PERCENTILE_MIN_SAMPLES.items():
        if values.size >= needed:
            summary[name] = float(np.percentile(values, float(name[1:])))
    return summary


def throughput_interval(latencies_s, images_per_call):
    """The spread of a throughput figure images / sum(latencies): a bootstrap 95 % interval (resampling
    the calls, BOOTSTRAP_SEED) from BOOTSTRAP_MIN_SAMPLES calls on, else the min-max of the per-call
    figures. {"low", "high", "kind", "samples"}."""
    values = np.asarray(latencies_s, dtype=np.float64)
    if values.size == 0 or not np.all(values > 0):
        raise ResultsError("a throughput interval needs positive per-call times")
    if values.size < BOOTSTRAP_MIN_SAMPLES:
        low, high, kind = images_per_call / values.max(), images_per_call / values.min(), "min-max"
    else:
        times, calls = _call_groups(values)
        rng = np.random.RandomState(BOOTSTRAP_SEED)
        picks = rng.randint(0, times.size, size=(BOOTSTRAP_RESAMPLES, times.size))
        rates = images_per_call * calls[picks].sum(axis=1) / times[picks].sum(axis=1)
        low, high = np.percentile(rates, [2.5, 97.5])
        kind = "bootstrap 95%" if times.size == values.size else f"bootstrap 95% over {times.size} groups of calls"
    return {"low": float(low), "high": float(high), "kind": kind, "samples": int(values.size)}


def _call_groups(values):
    """(total time, call count) per group: one call per group up to BOOTSTRAP_MAX_GROUPS calls, else
    BOOTSTRAP_MAX_GROUPS runs of consecutive calls of near-equal length."""
    if values.size <= BOOTSTRAP_MAX_GROUPS:
        return values, np.ones(values.size)
    starts = np.linspace(0, values.size, BOOTSTRAP_MAX_GROUPS, endpoint=False).astype(np.int64)
    return np.add.reduceat(values, starts), np.diff(np.append(starts, values.size)).astype(np.float64)


# --- measuring ---------------------------------------------------------------------------------------

def fixed_input(batch_size, height=None, width=None, dtype="float32", seed=0):
    """A fixed pseudo-random network input: normalised-looking floats, or uint8 pixels."""
    inp = input_constants()
    height = inp["height"] if height is None else int(height)
    width = inp["width"] if width is None else int(width)
    rng = np.random.RandomState(seed)
    shape = (int(batch_size), 3, height, width)
    if np.dtype(dtype) == np.uint8:
        return rng.randint(0, 256, size=shape).astype(np.uint8)
    return rng.standard_normal(shape).astype(np.dtype(dtype))


# Pure-inference timing, LoadGen's way: run for at least a minimum duration AND a minimum number of
# timed batches, warm-up excluded. The defaults (README, "Timing that holds up", with the measured
# spread): 10 batches is the least count with a p90 and a bootstrap interval worth the name, and 2 s
# spans many scheduler periods of a shared host; on the embedded default (measured 0.2 to 0.6 s a batch
# on 2 cores) that is 2 to 6 s per backend and batch size, about a tenth of the run.
DEFAULT_MIN_BATCHES = 10
DEFAULT_MIN_SECONDS = 2.0
DEFAULT_WARMUP = 1


def measure_pure_inference(backend, batch, loops=DEFAULT_MIN_BATCHES, warmup=DEFAULT_WARMUP, device="cpu",
                           precision="fp32", backend_name=None, clock=time.perf_counter,
                           min_seconds=DEFAULT_MIN_SECONDS):
    """Run `backend.run(batch)` `warmup` times untimed, then timed until at least `loops` runs AND at
    least `min_seconds` (0: no minimum duration) have passed; one record with its sample count and spread."""
    if int(loops) < 1:
        raise ResultsError(f"loops must be >= 1, got {loops}")
    if not (min_seconds >= 0 and np.isfinite(min_seconds)):
        raise ResultsError(f"min_seconds must be a finite number >= 0, got {min_seconds}")
    for _ in range(int(warmup)):
        backend.run(batch)
    latencies = []
    start = clock()
    now = start
    while len(latencies) < int(loops) or now - start < min_seconds:
        t0 = clock()
        backend.run(batch)
        now = clock()
        latencies.append(now - t0)
    total = now - start
    images = int(batch.shape[0]) * len(latencies)
    record = make_record(RecordLabel(device, backend_name or getattr(backend, "name", "?"), precision, batch.shape[0]),
                         images / total, "pure_inference",
                         f"measured: {len(latencies)} timed runs (at least {int(loops)} and {min_seconds:g} s) "
                         f"after {warmup} warm-up runs",
                         latencies_ms=latency_summary(latencies), coverage=Coverage(images, total))
    record["samples"] = len(latencies)
    record["fps_interval"] = throughput_interval(latencies, int(batch.shape[0]))
    return record


# A card measured as a card: every chip timed at once, against one chip alone. The two figures a gate
# may use are named by CARD_BASES in each record's "card" entry.
CARD_BASES = {"measured": "all chips timed at once: the card's images over the wall time",
              "convention": "one chip timed alone x the card's chip count (the recipe's x4 convention)"}


def _time_chips_at_once(chips, batch, loops, min_seconds, clock):
    """Time every (device, backend) of `chips` at once, each in its own thread, all released together;
    returns ({device: (latencies, seconds)}, wall seconds). A chip that fails is named (BackendError),
    after every other chip has finished."""
    import threading
    start_line = threading.Barrier(len(chips) + 1)
    timings, failures = {}, []

    def time_one(device, backend):
        start_line.wait()
        latencies, start = [], clock()
        try:
            while len(latencies) < loops or clock() - start < min_seconds:
                t0 = clock()
                backend.run(batch)
                latencies.append(clock() - t0)
            timings[device] = (latencies, clock() - start)
        except FsafReproError as exc:
            failures.append(f"device {device}: {exc}")

    workers = [threading.Thread(target=time_one, args=chip) for chip in chips]
    for worker in workers:
        worker.start()
    start_line.wait()
    start = clock()
    for worker in workers:
        worker.join()
    wall = clock() - start
    failures.extend(f"device {d}: stopped without a figure (its traceback is above)" for d, _ in chips
                    if d not in timings and not any(f.startswith(f"device {d}:") for f in failures))
    if failures:
        raise BackendError("card measurement: " + "; ".join(failures) + " (the card figure needs every chip)")
    return timings, wall


def measure_card(chips, batch, loops=DEFAULT_MIN_BATCHES, warmup=DEFAULT_WARMUP, device="cpu", precision="fp32",
                 backend_name=None, min_seconds=DEFAULT_MIN_SECONDS, clock=time.perf_counter):
    """Pure-inference throughput of a card: `chips` is [(device id, loaded backend)], one per chip.

    Every chip is warmed up, the first is timed alone, then all are timed at once. Returns two records
    of the card (CARD_BASES): the measured one (images of all chips over the wall time) and the
    convention's (the lone chip's figure x the chip count), each with a "card" entry holding the
    per-chip figures, the lone chip's and the scaling efficiency (measured / (lone chip x N))."""
    for _, backend in chips:
        for _ in range(int(warmup)):
            backend.run(batch)
    name = backend_name or getattr(chips[0][1], "name", "?")
    alone = measure_pure_inference(chips[0][1], batch, loops, 0, device, precision, name, clock, min_seconds)
    timings, wall = _time_chips_at_once(chips, batch, int(loops), min_seconds, clock)
    size, count = int(batch.shape[0]), len(chips)
    images = sum(size * len(timings[d][0]) for d, _ in chips)
    card_fps = images / wall
    card = {"devices": [d for d, _ in chips], "per_chip_fps": [size * len(timings[d][0]) / timings[d][1]
                                                               for d, _ in chips],
            "single_chip_fps": alone["fps"], "single_chip_device": chips[0][0],
            "measured_fps": card_fps, "convention_fps": alone["fps"] * count,
            "scaling_efficiency": card_fps / (alone["fps"] * count), "wall_seconds": wall}
    records = []
    for basis, fps in (("measured", card_fps), ("convention", alone["fps"] * count)):
        record = make_record(RecordLabel(device, name, precision, size), fps, "pure_inference",
                             f"measured: card of {count} chips, {basis}", chips=count, fps_measured=fps / count,
                             scope=f"per card ({count} chips): {CARD_BASES[basis]}",
                             coverage=Coverage(images, wall) if basis == "measured"
                             else Coverage(alone["images"], alone["seconds"]))
        record["card"] = dict(card, basis=basis)
        records.append(record)
    return records


def dataset_records(images, wall_seconds, inference_seconds, batch_latencies_s, device, backend, precision,
                    batch_size, source="measured: full dataset run", images_total=None):
    """The two full-dataset records (e2e and inference) of one streaming run's timings; partial (see
    make_record) when the run timed `images` of `images_total`."""
    if images <= 0 or wall_seconds <= 0 or inference_seconds <= 0:
        raise ResultsError(f"a dataset run needs images > 0 and positive times (got {images} images, "
                           f"{wall_seconds} s wall, {inference_seconds} s inference)")
    lat = latency_summary(batch_latencies_s) if len(batch_latencies_s) else None
    inference = make_record(RecordLabel(device, backend, precision, batch_size),
                            images / inference_seconds, "inference", source,
                            latencies_ms=lat, coverage=Coverage(images, inference_seconds, images_total))
    if len(batch_latencies_s):
        inference["samples"] = len(batch_latencies_s)
        inference["fps_interval"] = throughput_interval(batch_latencies_s, images / len(batch_latencies_s))
    return [
        make_record(RecordLabel(device, backend, precision, batch_size), images / wall_seconds, "e2e", source,
                    coverage=Coverage(images, wall_seconds, images_total)),
        inference,
    ]


def best_batch(records):
    """The record with the highest fps among `records` (which must share device, mode and backend)."""
    usable = [r for r in records if r.get("fps") is not None]
    if not usable:
        return None
    keys = set((r["device"], r["mode"], r["backend"], r["precision"]) for r in usable)
    if len(keys) > 1:
        raise ResultsError(f"best batch over records of different device/mode/backend/precision: {sorted(keys)}")
    return max(usable, key=lambda r: r["fps"])


# --- records of the tools' own figures (their outputs are read next to their backends) -----------------

def parse_benchmark_perf(path_or_text, device, batch_size=None, precision="fp16", chips=None,
                         backend="benchmark"):
    """Records from the benchmark tool's perf file or its pure-inference console output.

    Dataset mode (perf_vision_batchsize_{bs}_device_{id}.txt): an `e2e` record from `[e2e]
    throughputRate` and an `inference` record from `Interface throughputRate` of the `[inference]` (or
    `[infer]`) line, each multiplied by `chips` (default: 4 for device "310", else 1; see module doc).
    Pure-inference mode (`ave_throughputRate` in any published spelling): one `pure_inference` record.
    The batch size is read from the perf file's name when not given. The text is read by
    `backends.benchmark_tool.read_benchmark_perf`: a line the tool does not write is an error that quotes it.
    """
    return benchmark_records(read_benchmark_perf(path_or_text), device, batch_size, precision, chips, backend)


def benchmark_records(reading, device, batch_size=None, precision="fp16", chips=None, backend="benchmark"):
    """The records of one `read_benchmark_perf` reading (see parse_benchmark_perf)."""
    batch_size = reading.batch_size if batch_size is None else batch_size
    if batch_size is None:
        raise ResultsError(f"{reading.source}: the batch size is not in the file name; give it")
    chips = default_chips(device) if chips is None else int(chips)
    note = SCOPE_310_CARD if chips == ASCEND_310_CHIPS_PER_CARD else None
    if reading.pure is not None:
        fps, latency = reading.pure
        return [make_record(RecordLabel(device, backend, precision, batch_size),
                            fps * chips, "pure_inference", reading.source,
                            chips=chips, fps_measured=fps, note=note, latencies_ms={"mean": latency})]
    records = []
    e2e, inference = reading.stages.get("e2e", {}), reading.stages["inference"]
    if "throughputRate" in e2e:
        records.append(make_record(RecordLabel(device, backend, precision, batch_size),
                                   e2e["throughputRate"] * chips, "e2e",
                                   reading.source, chips=chips, fps_measured=e2e["throughputRate"], note=note))
    measured = inference["Interface throughputRate"]
    latency = inference.get("moduleLatency")
    records.append(make_record(RecordLabel(device, backend, precision, batch_size), measured * chips, "inference",
                               reading.source, chips=chips, fps_measured=measured, note=note,
                               latencies_ms={"mean": latency} if latency is not None else None))
    return records


def parse_ais_bench_summary(path, device, batch_size, precision="fp16", chips=None, backend="ais_bench"):
    """An `inference` record from an ais_bench/ais_infer run: throughput and NPU_compute_time stats.

    `path` may be the summary json (ais_bench's `<dir>_summary.json` beside the output folder, or
    ais_infer's `sumary.json` inside it), the output folder itself, the `--output` folder holding one
    run, or a saved console log of the run (read by `backends.ais_bench_cli.read_ais_bench_result`).
    """
    try:
        path, summary = read_ais_bench_result(path)
    except (OutputFormatError, ToolError) as exc:
        raise ResultsError(str(exc)) from None
    chips = default_chips(device) if chips is None else int(chips)
    compute = summary.get("NPU_compute_time") or {}
    latencies = {}
    for ours, theirs in (("mean", "mean"), ("p50", "median"), ("p99", "percentile(99%)"), ("min", "min"),
                         ("max", "max")):
        if theirs in compute:
            latencies[ours] = float(compute[theirs])
    measured = float(summary["throughput"])
    return make_record(RecordLabel(device, backend, precision, batch_size), measured * chips, "inference",
                       f"ais_bench summary: {path}", latencies_ms=latencies, chips=chips,
                       fps_measured=measured,
                       note=("NPU_compute_time per batch; p90 not reported by ais_bench"
                             + ("; " + SCOPE_310_CARD if chips == ASCEND_310_CHIPS_PER_CARD else "")))


# --- output ------------------------------------------------------------------------------------------

# A result record as make_record writes it, as far as its readers (gates, comparisons, tables, the
# report) use it: text where text belongs (a number there crashed `gates`), a positive finite fps, a
# positive integer batch size (never a boolean) and the partial marks of a resumed run's figure.
PERF_RECORD = obj(
    {"device": text_value(non_empty=True), "backend": text_value(non_empty=True),
     "precision": text_value(non_empty=True),
     "batch_size": integer(minimum=1), "fps": real_number(positive=True),
     "latencies_ms": nullable(mapping(nullable(real_number(minimum=0)))), "mode": one_of(*MODE_DEFINITIONS),
     "source": text_value()},
    {"chips": integer(minimum=1), "fps_measured": nullable(real_number(positive=True)), "scope": text_value(),
     "definition": text_value(), "note": nullable(text_value()), "images": integer(minimum=1),
     "seconds": real_number(positive=True), "partial": boolean, "images_total": integer(minimum=1),
     "samples": integer(minimum=1),
     "fps_interval": obj({"low": real_number(positive=True), "high": real_number(positive=True),
                          "kind": text_value(non_empty=True), "samples": integer(minimum=1)}),
     "card": obj({"devices": array(integer(minimum=0), min_length=1),
                  "per_chip_fps": array(real_number(positive=True), min_length=1),
                  "single_chip_fps": real_number(positive=True), "measured_fps": real_number(positive=True),
                  "convention_fps": real_number(positive=True), "scaling_efficiency": real_number(positive=True),
                  "wall_seconds": real_number(positive=True), "basis": one_of(*CARD_BASES)},
                 {"single_chip_device": integer(minimum=0)})})


def load_records(path):
    """Records from a JSON file written by `perf` (a {"records": [...]} object or a bare list), each
    checked by PERF_RECORD; ResultsError naming the file, the record and the field otherwise."""
    path = str(path)
    data = load_json(path, ResultsError, "perf records file")
    records = data.get("records") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise ResultsError(f"perf records file {path} holds no list of records (a {{\"records\": [...]}} object or "
                           "a list, as `fsaf-repro perf --out` writes)")
    checked = []
    for i, record in enumerate(records):
        record = validate(record, PERF_RECORD, ResultsError, f"perf records file {path}: record {i}")
        check_record_labels(record, f"{path}: record {i}")
        record.setdefault("chips", 1)
        checked.append(record)
    return checked


def write_records(path, records):
    atomic_write_json(path, {"definitions": MODE_DEFINITIONS, "records": records})


def interval_text(record):
    """'low-high (kind)' of a record's fps interval, '-' without one."""
    interval = record.get("fps_interval")
    if not interval:
        return "-"
    return "{:.3f}-{:.3f} ({})".format(interval["low"], interval["high"], interval["kind"])


def format_records(records):
    lines = ["{:<10} {:<14} {:<13} {:>5} {:>10} {:>5} {:>9} {:>9} {:>9}  {:<28} {}".format(
        "device", "backend", "precision", "batch", "fps", "n", "p50 ms", "p90 ms", "p99 ms", "fps interval",
        "mode")]
    for r in records:
        lat = r.get("latencies_ms") or {}
        ms = [(f"{lat[k]:.2f}" if lat.get(k) is not None else "-") for k in ("p50", "p90", "p99")]
        lines.append("{:<10} {:<14} {:<13} {:>5} {:>10.3f} {:>5} {:>9} {:>9} {:>9}  {:<28} {}{}{}".format(
            r["device"], r["backend"][:14], r["precision"][:13], r["batch_size"], r["fps"],
            r.get("samples") or "-", ms[0], ms[1], ms[2], interval_text(r), r["mode"],
            " (x{} chips)".format(r["chips"]) if r.get("chips", 1) != 1 else "",
            f" PARTIAL ({partial_coverage(r)})" if r.get("partial") else ""))
    used = sorted(set(r["mode"] for r in records))
    lines.append("")
    lines.append(f"n: timed samples (calls); percentiles only where n supports them: {PERCENTILE_RULE}")
    lines.extend(f"{mode}: {MODE_DEFINITIONS[mode]}" for mode in used)
    if any(r.get("chips", 1) == ASCEND_310_CHIPS_PER_CARD for r in records):
        lines.append("x4 chips: " + SCOPE_310_CARD)
    return "\n".join(lines)
