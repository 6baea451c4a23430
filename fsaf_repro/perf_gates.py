"""The recipe's reference throughput table as records, comparisons between records and the gates on them.

Comparisons (`compare_records`, `evaluate_gates`) refuse records of different modes or different chip
factors of the same device, and attach a caveat to every other difference (device, precision,
backend, batch size, source) instead of producing a bare ratio (the records are fsaf_repro.perf's)."""

from .errors import ResultsError
from .perf import (CARD_BASES, RecordLabel, best_batch, check_record_labels, default_chips, make_record,
                   partial_coverage)
from .spec import performance_reference


def reference_records():
    """The recipe's fps table (section 7.1) as records; out-of-memory cells are skipped."""
    perf = performance_reference()
    records = []
    for device in perf["devices"]:
        for bs_text, fps in sorted(perf["table"][device].items(), key=lambda kv: int(kv[0])):
            if fps is None:
                continue
            records.append(make_record(
                RecordLabel(device, "benchmark" if device != "T4" else "unstated", "as published", int(bs_text)),
                fps, "inference", "reference: " + perf["source"], chips=default_chips(device),
                note=perf["unit"]))
    return records


def _check_comparable(a, b):
    """Refusals and caveats for a ratio a/b."""
    if a["mode"] != b["mode"]:
        raise ResultsError("refusing to compare a {} figure with a {} figure ({} vs {}): measure both the "
                           "same way".format(a["mode"], b["mode"], a["source"], b["source"]))
    same_device = a["device"].replace("_aoe", "") == b["device"].replace("_aoe", "")
    if same_device and a["chips"] != b["chips"]:
        raise ResultsError("refusing to compare device {} figures counted over {} and {} chips: the 310 "
                           "convention multiplies the per-chip figure by 4; parse both with the same chips "
                           "factor".format(a["device"], a["chips"], b["chips"]))
    caveats = []
    for key, what in (("device", "devices"), ("precision", "precisions"), ("backend", "backends"),
                      ("batch_size", "batch sizes")):
        if a[key] != b[key]:
            caveats.append(f"different {what}: {a[key]} vs {b[key]}")
    if a["chips"] != b["chips"]:
        caveats.append("different scopes: {} counted over {} chip(s), {} over {}".format(
            a["device"], a["chips"], b["device"], b["chips"]))
    if a["source"].split(":")[0] != b["source"].split(":")[0]:
        caveats.append("different sources: {} vs {}".format(a["source"], b["source"]))
    return caveats


def compare_records(a, b):
    """{"ratio": a.fps / b.fps, "caveats": [...]} or ResultsError when the two are not comparable."""
    caveats = _check_comparable(a, b)
    return {"numerator": _brief(a), "denominator": _brief(b), "ratio": a["fps"] / b["fps"],
            "caveats": caveats}


def _brief(record):
    return {k: record[k] for k in ("device", "backend", "precision", "batch_size", "fps", "mode", "chips",
                                   "source")}


def compare_to_reference(measured, reference=None):
    """Each measured record beside the reference cell of the same device and batch size."""
    reference = reference_records() if reference is None else reference
    cells = dict(((r["device"], r["batch_size"]), r) for r in reference)
    rows = []
    for record in measured:
        ref = cells.get((record["device"], record["batch_size"]))
        if ref is None:
            rows.append({"measured": _brief(record), "reference": None, "ratio": None,
                         "caveats": ["no reference cell for device {} batch {} (reference devices: {})"
                                     .format(record["device"], record["batch_size"],
                                             ", ".join(performance_reference()["devices"]))]})
            continue
        try:
            comparison = compare_records(record, ref)
        except ResultsError as exc:
            rows.append({"measured": _brief(record), "reference": _brief(ref), "ratio": None,
                         "caveats": [f"not compared: {exc}"]})
            continue
        rows.append({"measured": _brief(record), "reference": _brief(ref), "ratio": comparison["ratio"],
                     "caveats": comparison["caveats"]})
    return rows


def _best_of_device(records, partial, device, mode, caveats):
    """The fastest `mode` record of `device` among the whole-dataset `records` (None without one); the
    device's `partial` records are left out with a caveat saying so."""
    left_out = [r for r in partial if r["device"] == device and r["mode"] == mode]
    if left_out:
        caveats.append(f"{len(left_out)} partial {mode} record(s) of {device} not used (covering "
                       f"{partial_coverage(left_out[0])}): a resumed run times only its last session; rerun "
                       "with --restart for a figure a gate can use")
    groups = {}
    for r in records:
        if r["device"] == device and r["mode"] == mode:
            groups.setdefault((r["backend"], r["precision"], r["source"].split(":")[0]), []).append(r)
    if len(groups) > 1:
        caveats.append(f"{device} has records from {len(groups)} backend/precision/source groups; using the fastest")
    tops = [best_batch(group) for group in groups.values()]
    return max(tops, key=lambda r: r["fps"]) if tops else None


TOO_CLOSE = "too close to call at this sample size"


def fps_bounds(record):
    """(low, high) of a record's fps: its measured interval, or the figure itself for one without (a
    published or parsed figure, which states no spread)."""
    interval = record.get("fps_interval")
    if interval:
        return interval["low"], interval["high"]
    return record["fps"], record["fps"]


def _judge_by_intervals(result, numerator, denominator, min_ratio):
    """A gate whose ratio interval (numerator's low / denominator's high .. high / low) holds the
    threshold is neither passed nor failed: `passed` None, `verdict` TOO_CLOSE."""
    (num_low, num_high), (den_low, den_high) = fps_bounds(numerator), fps_bounds(denominator)
    low, high = num_low / den_high, num_high / den_low
    result["ratio_interval"] = [low, high]
    if low < min_ratio <= high:
        result["passed"] = None
        result["verdict"] = TOO_CLOSE
        result["caveats"].append(f"ratio interval [{low:.4f}, {high:.4f}] holds the threshold {min_ratio}: "
                                 f"{TOO_CLOSE} (measure longer: --min-seconds, --loops)")
    else:
        result["verdict"] = "pass" if result["passed"] else "fail"


def evaluate_gates(records, mode="inference", gates=None, card_basis="measured"):
    """The recipe's gates on the best batch of each device among `records` (default mode: inference).

    A gate compares two devices by design; every other difference (precision, backend, chips, source) is
    listed in its caveats. A gate whose devices have no record is reported as not evaluated. Of a card
    measured as a card (measure_card) only the records of `card_basis` (CARD_BASES) are used, and each
    gate names that basis.
    """
    gates = performance_reference()["gates"] if gates is None else gates
    if card_basis not in CARD_BASES:
        raise ResultsError(f"card basis {card_basis!r}: one of {', '.join(CARD_BASES)}")
    for index, record in enumerate(records):
        check_record_labels(record, f"gate input record {index}")
    has_cards = any(r.get("card") for r in records)
    records = [r for r in records if (r.get("card") or {}).get("basis", card_basis) == card_basis]
    # a partial figure (a resumed run's sessions) does not measure the full-dataset definition: no gate uses it
    partial = [r for r in records if r.get("partial")]
    records = [r for r in records if not r.get("partial")]
    results = []
    for gate in gates:
        result = {"name": gate["name"], "min_ratio": gate["min_ratio"], "source": gate["source"],
                  "numerator_device": gate["numerator"], "denominator_device": gate["denominator"],
                  "ratio": None, "passed": None, "caveats": []}
        if has_cards:
            result["card_basis"] = card_basis
            result["caveats"].append(f"card figures on the {card_basis} basis: {CARD_BASES[card_basis]}")
        best = dict((side, _best_of_device(records, partial, gate[side], mode, result["caveats"]))
                    for side in ("numerator", "denominator"))
        if best["numerator"] is None or best["denominator"] is None:
            missing = [gate[s] for s in ("numerator", "denominator") if best[s] is None]
            result["caveats"].append("not evaluated: no {} record for {}".format(mode, ", ".join(missing)))
            results.append(result)
            continue
        comparison = compare_records(best["numerator"], best["denominator"])
        result.update(numerator=comparison["numerator"], denominator=comparison["denominator"],
                      ratio=comparison["ratio"], passed=comparison["ratio"] >= gate["min_ratio"])
        _judge_by_intervals(result, best["numerator"], best["denominator"], gate["min_ratio"])
        # a gate compares the best batch of two devices by design; other differences are caveats
        result["caveats"].extend(c for c in comparison["caveats"]
                                 if not c.startswith(("different devices", "different batch sizes")))
        results.append(result)
    return results


def format_gates(results):
    lines = []
    for g in results:
        if g["ratio"] is None:
            verdict = "NOT EVALUATED"
            detail = ""
        else:
            verdict = {True: "PASS", False: "FAIL", None: TOO_CLOSE.upper()}[g["passed"]]
            detail = (" best {} = {:.4f} fps (bs {}), best {} = {:.4f} fps (bs {}): ratio {:.4f} (>= {})"
                      ).format(
                g["numerator_device"], g["numerator"]["fps"], g["numerator"]["batch_size"],
                g["denominator_device"], g["denominator"]["fps"], g["denominator"]["batch_size"],
                g["ratio"], g["min_ratio"])
        lines.append("{} {}:{}".format(verdict, g["name"], detail))
        lines.extend("    caveat: " + c for c in g["caveats"])
    return "\n".join(lines)
