"""The fit's progress by time (issue 21): without a terminal a line at least every interval, each with
the step, the loss, the elapsed time and an ETA, on a clock the test drives."""
import pytest

from fsaf_repro.errors import FitError
from fsaf_repro.fit_progress import PROGRESS_INTERVAL_S, FitProgress


class SteppingClock:
    """A monotonic clock that advances `step_s` seconds each time it is read after the first."""

    def __init__(self, step_s):
        self.now, self.step_s, self.reads = 100.0, step_s, 0

    def __call__(self):
        if self.reads:
            self.now += self.step_s
        self.reads += 1
        return self.now


def test_a_line_comes_each_interval_with_step_loss_elapsed_and_eta():
    lines = []
    # 7 s per step and a 30 s interval: lines at 35 s (step 5), 70 s (step 10) ... and at the last step
    progress = FitProgress(steps=12, say=lines.append, interval_s=30.0, clock=SteppingClock(7.0))
    said = [progress.update(step, 1.5 / step, 1.0, 0.5) for step in range(1, 13)]
    assert [step for step, line in enumerate(said, start=1) if line] == [5, 10, 12]
    assert lines == [line for line in said if line]
    assert lines[0] == "fit step 5/12: loss 0.300 (class 1.000, box 0.500), elapsed 35 s, ETA 49 s"
    assert lines[1].endswith("elapsed 1 min 10 s, ETA 14 s")
    assert lines[2].endswith("ETA 0 s")


def test_a_slow_host_gets_a_line_every_step_past_the_interval():
    lines = []
    progress = FitProgress(steps=3, say=lines.append, interval_s=PROGRESS_INTERVAL_S,
                           clock=SteppingClock(PROGRESS_INTERVAL_S * 100))
    for step in (1, 2, 3):
        progress.update(step, 1.0, 0.5, 0.5)
    assert len(lines) == 3 and "ETA 1 h 40 min" in lines[0]


def test_a_non_positive_interval_is_refused():
    with pytest.raises(FitError, match="progress interval"):
        FitProgress(steps=3, say=print, interval_s=0)
