"""A card measured as a card (issue 20): every chip timed at once beside one chip alone, the recipe's
x4 convention beside the measured figure in the report, and the gates on either basis, named."""
import time

import pytest

from fsaf_repro import backends, perf, perf_gates, report_perf
from fsaf_repro.cli import main as cli_main
from fsaf_repro.errors import BackendError, ResultsError
from tests.support import fake_om
from tests.unit.fake_tools import install_fake_tools

H, W = 16, 24


class SleepingChip(backends.Backend):
    """A chip whose every call takes `seconds` (slept: the chips of a card run truly at once)."""

    name = "null"

    def __init__(self, seconds, fail=False):
        super().__init__()
        self.seconds, self.fail, self.model_path = seconds, fail, "<chip>"

    def run(self, batch, image_hw=None):
        if self.fail:
            raise BackendError("chip lost")
        time.sleep(self.seconds)
        return {}


def card_records(delays, min_seconds=0.3):
    chips = [(device, SleepingChip(delay)) for device, delay in enumerate(delays)]
    return perf.measure_card(chips, perf.fixed_input(1, 8, 12), loops=3, warmup=1, device="310P",
                             precision="fp16", backend_name="benchmark", min_seconds=min_seconds)


def test_card_record_holds_card_chip_and_scaling_figures():
    measured, convention = card_records([0.01, 0.01, 0.08, 0.01])
    card = measured["card"]
    assert measured["card"]["basis"] == "measured" and convention["card"]["basis"] == "convention"
    assert measured["chips"] == convention["chips"] == 4 and len(card["per_chip_fps"]) == 4
    # chip 2 is eight times slower: its figure is the lowest
    assert card["per_chip_fps"][2] < min(card["per_chip_fps"][i] for i in (0, 1, 3)) / 2
    assert measured["fps"] == pytest.approx(card["measured_fps"])
    assert convention["fps"] == pytest.approx(4 * card["single_chip_fps"])
    assert card["scaling_efficiency"] == pytest.approx(card["measured_fps"] / card["convention_fps"])
    # each chip ran within the card's wall time: their figures add up to at least the card's
    assert sum(card["per_chip_fps"]) >= card["measured_fps"] * (1 - 1e-9)
    assert card["wall_seconds"] == pytest.approx(measured["seconds"])
    assert measured["seconds"] >= 0.3 and measured["images"] > 4 * 3


def test_a_failing_chip_is_named():
    chips = [(0, SleepingChip(0.001)), (1, SleepingChip(0.001, fail=True))]
    with pytest.raises(BackendError, match="device 1: chip lost"):
        perf.measure_card(chips, perf.fixed_input(1, 8, 12), loops=2, warmup=0, min_seconds=0)


def test_gates_use_the_basis_asked_for_and_name_it():
    records = card_records([0.01, 0.01, 0.01, 0.01], min_seconds=0.2)
    measured_fps, convention_fps = records[0]["fps"], records[1]["fps"]
    # another card's figure (counted over 4 chips too: a card is compared with a card)
    other = perf.make_record(perf.RecordLabel("310P_aoe", "benchmark", "fp16", 1),
                             1.2 * (measured_fps + convention_fps) / 2,
                             "pure_inference", "measured: test", chips=4)
    gate = [{"name": "aoe over card", "numerator": "310P_aoe", "denominator": "310P", "min_ratio": 1.2,
             "source": "test"}]
    results = {basis: perf_gates.evaluate_gates(records + [other], mode="pure_inference", gates=gate,
                                                card_basis=basis)[0]
               for basis in perf.CARD_BASES}
    for basis, result in results.items():
        assert result["card_basis"] == basis and any(basis in c for c in result["caveats"])
    assert results["measured"]["denominator"]["fps"] == pytest.approx(measured_fps)
    assert results["convention"]["denominator"]["fps"] == pytest.approx(convention_fps)
    with pytest.raises(ResultsError, match="card basis"):
        perf_gates.evaluate_gates(records, card_basis="x4")


@pytest.mark.slow
def test_a_fake_four_chip_card_run_renders_in_the_report(tmp_path, monkeypatch, capsys):
    install_fake_tools(tmp_path / "bin", monkeypatch)
    fake_om(tmp_path, 1, "Ascend310", H, W)
    # chip 2 of the simulated card is much slower than the others
    monkeypatch.setenv("FAKE_DEVICE_MS_PER_SAMPLE", "0=50,1=50,2=600,3=50")
    out = tmp_path / "card.json"
    assert cli_main(["perf", "--backend", "benchmark", "--model", str(tmp_path / "om" / "fsaf_bs1.om"),
                     "--devices", "0,1,2,3", "--device", "310", "--precision", "fp16", "--loops", "3",
                     "--min-seconds", "0", "--warmup", "1", "--height", str(H), "--width", str(W),
                     "--backend-option", f"workdir={tmp_path}", "--out", str(out)]) == 0
    assert "scaling efficiency" in capsys.readouterr().out
    records = perf.load_records(str(out))  # validated as every perf file is
    card = records[0]["card"]
    assert card["devices"] == [0, 1, 2, 3] and card["per_chip_fps"][2] < card["per_chip_fps"][0]
    lines = "\n".join(report_perf.perf_lines(records, canvas=[H, W]))
    assert "### Cards measured as cards" in lines
    row = next(line for line in lines.splitlines() if line.startswith("| 310 | benchmark | 1 | 4 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[5]) == pytest.approx(card["convention_fps"], abs=1e-3)
    assert float(cells[6]) == pytest.approx(card["measured_fps"], abs=1e-3)
    assert float(cells[7]) == pytest.approx(card["measured_fps"] / card["convention_fps"], abs=1e-3)
    assert "[gates on the measured card figures]" in lines and "[gates on the convention card figures]" in lines


@pytest.mark.slow
def test_ais_bench_chips_honour_their_device_id(tmp_path, monkeypatch):
    """The fake ais_bench takes --device: a chip that fails is named, the others' speeds show."""
    install_fake_tools(tmp_path / "bin", monkeypatch)
    om = fake_om(tmp_path, 1, "Ascend310P3", H, W)
    chips = [(device, backends.create_backend("ais_bench", device_id=device, workdir=str(tmp_path)).load(om))
             for device in (0, 1)]
    batch = perf.fixed_input(1, H, W)
    monkeypatch.setenv("FAKE_DEVICE_FAIL", "1")
    with pytest.raises(BackendError, match="(?s)device 1: .*device 1 is not available"):
        perf.measure_card(chips, batch, loops=1, warmup=0, min_seconds=0)
    monkeypatch.delenv("FAKE_DEVICE_FAIL")
    monkeypatch.setenv("FAKE_DEVICE_MS_PER_SAMPLE", "0=10,1=900")
    card = perf.measure_card(chips, batch, loops=2, warmup=0, min_seconds=0)[0]["card"]
    assert card["per_chip_fps"][1] < card["per_chip_fps"][0]
