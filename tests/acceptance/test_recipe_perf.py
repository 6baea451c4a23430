"""Recipe section 7.1: best-batch 310P_aoe >= 1.2 x 310 and best-batch 310P >= 1.6 x T4.

- The reference table satisfies its own gates, computed from its per-batch rows with fsaf_repro.perf
  (runs on any host).
- This host's measurements: the perf records of device FSAF_DEVICE found under the run directory
  (`*perf*.json`, written by the full-val2017 accuracy run of each batch size, or by `fsaf-repro perf
  --out`) against the other device of each gate: the records in FSAF_REFERENCE_PERF when given, else
  the recipe's table. A gate compares best batches, so it is evaluated only once the run directory holds
  every batch size the table has for this device; a CI matrix with one batch size per job leaves that to
  its gates job (`fsaf-repro gates` over all the run directories).
"""
import os

import pytest

from fsaf_repro.perf import best_batch, load_records
from fsaf_repro.perf_gates import evaluate_gates, reference_records
from fsaf_repro.spec import performance_reference

from tests.acceptance.conftest import ENV_OF, perf_records_in, provide, write_json


def test_reference_table_meets_its_gates():
    perf = performance_reference()
    results = evaluate_gates(reference_records(), mode="inference")
    assert [g["name"] for g in results] == [g["name"] for g in perf["gates"]]
    for gate, result in zip(perf["gates"], results):
        assert result["passed"] is True and result["ratio"] >= gate["min_ratio"], result
        # the gate used each device's best row of the table
        for side in ("numerator", "denominator"):
            row = perf["table"][gate[side]]
            assert result[side]["fps"] == max(v for v in row.values() if v is not None)
        # and the recipe's published best-batch row passes it too
        published = perf["published_best_batch"]
        assert published[gate["numerator"]] / published[gate["denominator"]] >= gate["min_ratio"]


def gate_devices():
    return sorted(set(d for g in performance_reference()["gates"] for d in (g["numerator"], g["denominator"])))


def test_this_host_meets_the_gates(settings, run_dir):
    perf = performance_reference()
    device = settings.device
    if device not in gate_devices():
        pytest.skip("{} to the device this host measures, one of {} (got {!r})".format(
            provide("--device"), ", ".join(gate_devices()), device))
    measured = [r for r in perf_records_in(run_dir) if r["device"] == device and r["mode"] == "inference"]
    if not measured:
        pytest.skip("no inference perf records of device {} under {}: run the full-val2017 accuracy claim "
                    "(FSAF_CHECKPOINT, FSAF_COCO_ROOT) with {} set, or put `fsaf-repro perf --out` records named "
                    "*perf*.json there".format(device, run_dir, ENV_OF["--run-dir"]))
    wanted = sorted(int(bs) for bs, fps in perf["table"][device].items() if fps is not None)
    have = sorted(set(r["batch_size"] for r in measured))
    if not set(wanted) <= set(have):
        pytest.skip("the gates compare best batches: records of device {} cover batch sizes {} of the table's {}; "
                    "measure the rest ({}={}) or let the CI gates job combine the run directories".format(
                        device, have, wanted, ENV_OF["--batch-sizes"], ",".join(str(b) for b in wanted)))
    if settings.reference_perf:
        if not os.path.isfile(settings.reference_perf):
            pytest.fail("{}={} is not a file".format(ENV_OF["--reference-perf"], settings.reference_perf))
        others = [r for r in load_records(settings.reference_perf) if r["device"] != device]
        origin = settings.reference_perf
    else:
        others = [r for r in reference_records() if r["device"] != device]
        origin = "the recipe's table ({})".format(perf["source"])
    gates = [g for g in perf["gates"] if device in (g["numerator"], g["denominator"])]
    results = evaluate_gates(measured + others, mode="inference", gates=gates)
    write_json(os.path.join(run_dir, f"gates_{device}.json"),
               {"device": device, "other_side": origin, "best_measured": best_batch(
                   [r for r in measured if r["backend"] == measured[0]["backend"]]), "gates": results})
    for result in results:
        assert result["ratio"] is not None, "gate {} not evaluated: {} (other side from {})".format(
            result["name"], result["caveats"], origin)
        assert result["passed"], "gate {}: ratio {:.3f} < {} (other side from {}; caveats: {})".format(
            result["name"], result["ratio"], result["min_ratio"], origin, result["caveats"])
