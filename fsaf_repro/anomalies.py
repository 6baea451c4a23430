"""Figures of a run that its own other figures make suspect, found from the run's records alone.

- pure inference slower than end to end: for the same device, backend, precision and batch size,
  a pure-inference figure (one batch in memory, timed after warm-up) below the data set's end-to-end
  figure (which does that work and more) can only come from different conditions (thread count,
  host load) between the two timings;
- a throughput spread wider than the figure: the per-call latencies span fps values (batch /
  slowest call to batch / fastest call) that differ by more than the figure itself;
- a parity maximum past its tolerance on a passing row: an fp16 row is judged by the share of the
  reference's detections it reproduces, and its largest difference over all rows (or its match rate
  at IoU >= match_iou) is shown but not judged; the anomaly says so beside the figures.

Each anomaly names what it is about (`subject`, the same words the report's table rows use) so that
the report puts its short flag beside the figure and its full sentence in the anomaly list.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

MS_PER_S = 1000.0


@dataclass(frozen=True)
class Anomaly:
    kind: str
    subject: str
    flag: str
    explanation: str


PURE_BELOW_E2E = "pure inference below end to end"
WIDE_SPREAD = "spread wider than the figure"
PARITY_MAX_PAST_TOLERANCE = "max past tolerance on a passing row"
PARITY_MATCH_RATE_BELOW_RULE = "match rate below the fp16 share on a passing row"


def record_subject(record: Dict[str, Any]) -> str:
    return f"{record['backend']} {record['mode']} bs{record['batch_size']} ({record['device']}, {record['precision']})"


def pair_subject(pair: Dict[str, Any]) -> str:
    return f"{pair['reference']} vs {pair['other']}"


def pure_below_e2e(records: Sequence[Dict[str, Any]], threads: Optional[int] = None,
                   perf_threads: Optional[int] = None) -> List[Anomaly]:
    """Pure-inference figures below the end-to-end figure of the same device/backend/precision/batch."""
    e2e = dict(((r["device"], r["backend"], r["precision"], r["batch_size"]), r) for r in records
               if r["mode"] == "e2e" and not r.get("partial"))
    found = []
    for record in records:
        twin = e2e.get((record["device"], record["backend"], record["precision"], record["batch_size"]))
        if record["mode"] != "pure_inference" or twin is None or record["fps"] >= twin["fps"]:
            continue
        conditions = (f" (threads: {threads} over the data set, {perf_threads or 'the runtime default'} in "
                      "the pure-inference timing)" if threads else "")
        found.append(Anomaly(
            PURE_BELOW_E2E, record_subject(record),
            f"below e2e {twin['fps']:.3g}",
            f"{record_subject(record)}: {record['fps']:.3g} fps, below the same backend's end-to-end "
            f"{twin['fps']:.3g} fps at batch {record['batch_size']}, which does the same inference and more. "
            f"The two timings ran under different conditions{conditions} or host load; neither figure is a "
            "property of the backend alone."))
    return found


def fps_range(record: Dict[str, Any]) -> Optional[Tuple[float, float, str]]:
    """(low, high, what it is) of a record's fps: its measured interval where the record has one, else
    the fps of its slowest and fastest call (from the per-call latencies); None without either."""
    interval = record.get("fps_interval")
    if interval:
        return interval["low"], interval["high"], f"its {interval['kind']} interval is"
    lat = record.get("latencies_ms") or {}
    fastest, slowest = lat.get("min"), lat.get("max")
    if not fastest or not slowest or (lat.get("count") or 0) < 2:
        return None
    calls = f"its {lat['count']} timed calls ran at (slowest to fastest)"
    return record["batch_size"] * MS_PER_S / slowest, record["batch_size"] * MS_PER_S / fastest, calls


def wide_spreads(records: Sequence[Dict[str, Any]]) -> List[Anomaly]:
    """Records whose fps range (fps_range) is wider than the figure itself."""
    found = []
    for record in records:
        spread = fps_range(record)
        if spread is None or spread[1] - spread[0] <= record["fps"]:
            continue
        low, high, what = spread
        found.append(Anomaly(
            WIDE_SPREAD, record_subject(record), f"spread {low:.3g}-{high:.3g} fps",
            f"{record_subject(record)}: {record['fps']:.3g} fps, but {what} {low:.3g} to {high:.3g} fps, "
            "a spread wider than the figure: the host was busy with other work while it was timed; compare "
            "it with other figures with care."))
    return found


def parity_anomalies(parity: Optional[Dict[str, Any]]) -> List[Anomaly]:
    """Passing fp16 rows whose unjudged figures (largest difference, match rate) are past the fp16
    tolerances, with the reason the row still passes."""
    if not parity:
        return []
    tol = parity["tolerances"]
    found = []
    for pair in parity["pairs"]:
        agreement = pair.get("fp16_agreement")
        if not pair["within_tolerance"] or agreement is None:
            continue
        rule = (f"it is judged by the share of the reference's detections found within "
                f"{tol['fp16_om_box_abs_tol_px']} px and {tol['fp16_om_score_abs_tol']}: fp16_agreement "
                f"{agreement['rate']:.3f} ({agreement['found']} of {agreement['total']}) >= "
                f"{tol['fp16_om_min_match_rate']}")
        if pair["max_box_abs_diff"] > tol["fp16_om_box_abs_tol_px"]:
            found.append(Anomaly(
                PARITY_MAX_PAST_TOLERANCE, pair_subject(pair), "max not judged (fp16)",
                f"{pair_subject(pair)}: the largest box difference {pair['max_box_abs_diff']:.3g} px is past the "
                f"fp16 tolerance {tol['fp16_om_box_abs_tol_px']} px, yet the row passes: {rule}. The largest "
                "difference can pair a detection kept on one side only (at the score threshold or the top-100 "
                "cut-off) with another object, which is why it is shown, not judged."))
        if pair["match_rate"] < tol["fp16_om_min_match_rate"]:
            found.append(Anomaly(
                PARITY_MATCH_RATE_BELOW_RULE, pair_subject(pair), "match rate not judged (fp16)",
                f"{pair_subject(pair)}: the match rate at IoU >= {tol['match_iou']} is "
                f"{pair['match_rate']:.1%}, below {tol['fp16_om_min_match_rate']:.0%}, yet the row passes: {rule}. "
                f"IoU >= {tol['match_iou']} is the fp32 test: on a small box a shift of a fraction of a pixel "
                "already takes the IoU below it."))
    return found


def find_anomalies(perf_records: Sequence[Dict[str, Any]], parity: Optional[Dict[str, Any]],
                   threads: Optional[int] = None, perf_threads: Optional[int] = None) -> List[Anomaly]:
    return (pure_below_e2e(perf_records, threads, perf_threads) + wide_spreads(perf_records)
            + parity_anomalies(parity))
