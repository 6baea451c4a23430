"""The throughput section of report.md: the recipe's 7.1 table with its ratio columns and gates, this run's
records as one long table per device, the gates on them, and only the records a reference cell can be compared
with (fsaf_repro.perf does every comparison; the rest are counted by cause in one line). Also the markdown table
row and rule the other sections share."""
from typing import Any, Dict, List, Optional, Sequence

from .anomalies import Anomaly, record_subject
from .perf import partial_coverage
from .spec import performance_reference


def perf_lines(records: Sequence[Dict[str, Any]], canvas: Optional[Sequence[int]] = None,
               anomalies: Sequence[Anomaly] = ()) -> List[str]:
    """The throughput section: the recipe's 7.1 table and its gates; this run's records, one long table
    per device; the gates on them; the measured records that a reference cell can be compared with."""
    perf = performance_reference()
    measured = list(records)
    lines = ["## Throughput (recipe section 7.1)", ""]
    lines.append(f"The recipe's fps by batch size ({perf['source']}; {perf['unit']}; an OOM cell is out of device "
                 "memory in the recipe), with its ratio columns:")
    lines.append("")
    lines += _ThroughputTable(perf).lines()
    lines.append("")
    lines.append("The ratio columns are computed from the per-batch reference rows. The recipe prints a "
                 f"`310P/T4` column whose values equal 310P_aoe/T4. {perf['published_best_batch_note']}")
    lines.append("")
    lines += _reference_gate_lines()
    lines += measured_tables(measured, canvas, anomalies)
    lines += _measured_gate_lines(perf, measured)
    lines += card_lines(measured)
    lines += _against_reference_lines(measured)
    lines += _mode_lines(measured)
    return lines


def _fps(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def _fps_at_batch(record, digits=4):
    """'fps (bsN)' of a best-batch record, '-' for none."""
    return f"{_fps(record['fps'], digits)} (bs{record['batch_size']})" if record else "-"


def table_row(cells):
    return "| " + " | ".join(cells) + " |"


def table_rule(width):
    return "|" + "|".join(["---"] * width) + "|"


def record_samples(record: Dict[str, Any]) -> str:
    """How many images a figure was timed over, and in how many timed calls where the record says."""
    calls = record.get("samples") or (record.get("latencies_ms") or {}).get("count")
    in_calls = f" in {calls} calls" if calls else ""
    return f"{record['images']}{in_calls}" if record.get("images") else (f"{calls} calls" if calls else "-")


def measured_tables(records: Sequence[Dict[str, Any]], canvas: Optional[Sequence[int]],
                    anomalies: Sequence[Anomaly] = ()) -> List[str]:
    """This run's records: one long table per device (a row per backend, precision, mode and batch)."""
    at_input = f", input {canvas[0]}x{canvas[1]}" if canvas else ""
    lines = ["### Measured by this run", ""]
    if not records:
        return lines + ["No throughput was measured in this run.", ""]
    flags = {}
    for anomaly in anomalies:
        flags.setdefault(anomaly.subject, []).append(anomaly.flag)
    for device in sorted({r["device"] for r in records}):
        rows = sorted((r for r in records if r["device"] == device),
                      key=lambda r: (r["backend"], r["precision"], r["mode"], r["batch_size"]))
        lines += [f"Device {device}{at_input}:", "",
                  "| backend | precision | mode | batch | fps | images timed | flags |", table_rule(7)]
        for r in rows:
            mode = f"{r['mode']} PARTIAL ({partial_coverage(r)})" if r.get("partial") else r["mode"]
            flag = "; ".join(flags.get(record_subject(r), [])) or "-"
            lines.append(table_row([r["backend"], r["precision"], mode, str(r["batch_size"]),
                                     f"{r['fps']:.3f}", record_samples(r), flag]))
        lines.append("")
    return lines


class _ThroughputTable:
    """The recipe's 7.1 table: a row per batch size and a best-batch row; a column per reference
    device and per gate ratio."""

    def __init__(self, perf):
        from .perf_gates import reference_records
        self.perf = perf
        self.reference = reference_records()
        self.ref_cells = {(r["device"], r["batch_size"]): r for r in self.reference}
        self.devices = list(perf["devices"])
        self.ratio_defs = [(g["numerator"], g["denominator"]) for g in perf["gates"]]
        self.batch_sizes = sorted(int(b) for b in perf["batch_sizes"])

    def lines(self):
        header = ["batch"] + self.devices + [f"{n}/{d}" for n, d in self.ratio_defs]
        rows = [self._batch_row(bs) for bs in self.batch_sizes] + [self._best_row()]
        return [table_row(header), table_rule(len(header))] + [table_row(cells) for cells in rows]

    def _reference_cell(self, device, bs):
        ref = self.ref_cells.get((device, bs))
        if ref:
            return _fps(ref["fps"])
        return "OOM" if str(bs) in self.perf["table"][device] else "-"

    def _batch_row(self, bs):
        from .perf_gates import compare_records
        cells = [f"bs{bs}"] + [self._reference_cell(device, bs) for device in self.devices]
        for num, den in self.ratio_defs:
            a, b = self.ref_cells.get((num, bs)), self.ref_cells.get((den, bs))
            cells.append(_fps(compare_records(a, b)["ratio"]) if a and b else "-")
        return cells

    def _best_row(self):
        from .perf import best_batch
        from .perf_gates import compare_records
        bests = {device: best_batch([r for r in self.reference if r["device"] == device]) for device in self.devices}
        cells = ["best batch"] + [_fps_at_batch(bests[device]) for device in self.devices]
        for num, den in self.ratio_defs:
            if bests.get(num) and bests.get(den):
                cells.append(_fps(compare_records(bests[num], bests[den])["ratio"]))
            else:
                cells.append("-")
        return cells


def _reference_gate_lines():
    from .perf_gates import evaluate_gates, format_gates, reference_records
    gates = format_gates(evaluate_gates(reference_records(), mode="inference"))
    return ["### Gates on the recipe's table", "", "```", gates, "```", ""]


def _measured_gate_lines(perf, measured):
    from .perf_gates import evaluate_gates, format_gates
    lines = ["### Gates on the measured records", ""]
    gate_devices = {device for g in perf["gates"] for device in (g["numerator"], g["denominator"])}
    measured_devices = sorted({r["device"] for r in measured})
    if not measured:
        lines.append("No throughput was measured in this run.")
    elif not gate_devices & set(measured_devices):
        lines.append(f"Not evaluated: this run measured device(s) {', '.join(measured_devices)} only; the gates "
                     f"compare {', '.join(sorted(gate_devices))} (give records measured on those devices with "
                     "--extra-perf, or run on an NPU host).")
    else:
        lines.append("```")
        for mode in sorted({r["mode"] for r in measured}):
            lines.append(f"[{mode} records]")
            lines.append(format_gates(evaluate_gates(measured, mode=mode)))
        lines.append("```")
    lines.append("")
    return lines


def card_lines(measured: List[Dict[str, Any]]) -> List[str]:
    """Cards measured as cards (perf --devices): the recipe's convention (one chip x N) beside the
    measured card figure (all chips at once), with their ratio and the scaling efficiency; then the
    gates on each basis. Nothing when no card was measured."""
    from .perf import CARD_BASES
    from .perf_gates import evaluate_gates, format_gates
    cards = [r for r in measured if (r.get("card") or {}).get("basis") == "measured"]
    if not cards:
        return []
    lines = ["### Cards measured as cards", "",
             "Convention: " + CARD_BASES["convention"] + ". Measured: " + CARD_BASES["measured"] + ".", "",
             table_row(["device", "backend", "batch", "chips", "one chip alone", "convention (x N)",
                         "measured card", "measured / convention", "per chip", "scaling efficiency"]),
             table_rule(10)]
    for record in cards:
        card = record["card"]
        lines.append(table_row([
            record["device"], record["backend"], str(record["batch_size"]), str(len(card["devices"])),
            _fps(card["single_chip_fps"], 3), _fps(card["convention_fps"], 3), _fps(card["measured_fps"], 3),
            _fps(card["measured_fps"] / card["convention_fps"], 3),
            ", ".join(f"{d}: {fps:.3f}" for d, fps in zip(card["devices"], card["per_chip_fps"])),
            _fps(card["scaling_efficiency"], 3)]))
    lines += ["", "```"]
    for basis in CARD_BASES:
        lines.append(f"[gates on the {basis} card figures]")
        lines.append(format_gates(evaluate_gates(measured, mode=cards[0]["mode"], card_basis=basis)))
    return lines + ["```", ""]


def _not_ratioed_reason(row):
    """Why a measured record has no ratio, in words shared by every record of the same cause."""
    if row["reference"] is None:
        return f"device {row['measured']['device']} has no column in the recipe's table"
    return "; ".join(row["caveats"]) or "not ratioed"


def _against_reference_lines(measured):
    from .perf_gates import compare_to_reference
    lines = ["### Measured records against the reference cells", ""]
    if not measured:
        return lines
    rows = compare_to_reference(measured)
    ratioed = [row for row in rows if row["ratio"] is not None]
    if ratioed:
        lines += ["| device | backend | precision | mode | batch | fps | reference fps | ratio | caveats |",
                  table_rule(9)]
    for row in ratioed:
        m = row["measured"]
        lines.append(table_row([m["device"], m["backend"], m["precision"], m["mode"], str(m["batch_size"]),
                                 f"{m['fps']:.3f}", _fps(row["reference"]["fps"]), _fps(row["ratio"], 3),
                                 "; ".join(row["caveats"]) or "-"]))
    reasons = {}
    for row in rows:
        if row["ratio"] is None:
            reasons.setdefault(_not_ratioed_reason(row), []).append(row)
    if ratioed and reasons:
        lines.append("")
    if reasons:
        devices = ", ".join(performance_reference()["devices"])
        causes = "; ".join(f"{len(group)} because {reason}" for reason, group in sorted(reasons.items()))
        which = (f"None of the {len(rows)} measured records is" if not ratioed
                 else f"The other {len(rows) - len(ratioed)} measured records are not")
        lines.append(f"{which} comparable with a reference cell (the recipe's devices: {devices}): {causes}.")
    lines.append("")
    return lines


def _mode_lines(measured):
    from .perf import MODE_DEFINITIONS
    lines = ["Modes:", ""]
    for mode in sorted({"inference"} | {r["mode"] for r in measured}):
        lines.append(f"- {mode}: {MODE_DEFINITIONS[mode]}")
    return lines
