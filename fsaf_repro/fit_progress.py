"""The fit's progress: time-spaced progress lines with an ETA, and the optional tqdm bar."""
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import FitError

# Seconds between the fit's progress lines (its log, and the console without a progress bar): a line
# every 125 steps came 17 minutes apart on a loaded host; time, not steps, is what a watcher waits on.
PROGRESS_INTERVAL_S = 30.0


class FitProgress:
    """Progress lines of the fit by time: one when `interval_s` seconds have passed since the last (and
    at the last step), each with the step, the running loss, the elapsed time and an ETA from the mean
    step time so far. `clock` (seconds, monotonic) is injectable, so that tests need not wait."""

    def __init__(self, steps, say, interval_s=PROGRESS_INTERVAL_S, clock=time.monotonic):
        if not interval_s > 0:
            raise FitError(f"the progress interval must be > 0 seconds, got {interval_s!r}")
        self.steps, self.say, self.interval_s, self.clock = int(steps), say, float(interval_s), clock
        self.started = self.last = clock()

    def update(self, step, loss, cls_loss, box_loss):
        """Say a line for `step` if the interval has passed or it is the last step; returns the line or None."""
        now = self.clock()
        if now - self.last < self.interval_s and step != self.steps:
            return None
        self.last = now
        elapsed = now - self.started
        eta = elapsed / step * (self.steps - step)
        line = (f"fit step {step}/{self.steps}: loss {loss:.3f} (class {cls_loss:.3f}, box {box_loss:.3f}), "
                f"elapsed {_duration(elapsed)}, ETA {_duration(eta)}")
        self.say(line)
        return line


def _duration(seconds):
    """`42 s`, `3 min 05 s`, `1 h 02 min`: what a person reads at a glance."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_bar(total, desc, enabled, unit):
    """A tqdm bar on stderr, or None when `enabled` is false (the callers then print progress lines)."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


@dataclass(frozen=True)
class FitReporting:
    """How a fit reports, apart from what it fits: a tqdm bar (`bar`), where its lines go (`log`; None:
    stderr), a held-out evaluation every `eval_every` steps (0: none between the first and the last), a
    line every `log_every` steps (0: by time only) and one every `interval_s` seconds."""
    bar: bool = True
    log: Optional[Callable[[str], None]] = None
    eval_every: int = 0
    log_every: int = 0
    interval_s: float = PROGRESS_INTERVAL_S


# a bar, lines to stderr every PROGRESS_INTERVAL_S seconds, the held-out set scored at the end only
BAR_AND_TIMED_LINES = FitReporting()
