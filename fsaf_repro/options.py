"""Declared option kinds: every option's type and range, checked before any work.

An option kind converts a value and checks its range. The same kind object serves three callers:
- the command line: `fsaf_repro.cli.args.typed(kind)` makes it an argparse `type=` (a value out of
  range is argparse's one-line error, exit 2);
- `reproduce`'s options (`fsaf_repro.reproduce_options.ReproduceOptions`, each field's declaration);
- the backends' options (`Backend.option_kinds`, checked by `fsaf_repro.backends.create_backend`).
`kind(text)` parses command-line text; `kind.check(value, option)` checks a library value, naming the
option in the OptionError. No kind takes 0 to mean "the default": a default is None. Where 0 has a
meaning of its own, the kind is declared with `zero=` naming it, and the option's help says so.
"""
import math
import numbers
import os
from typing import Any, Iterable, Optional

from .errors import OptionError

# At most this many threads (intra-op, decoding workers) per core that os.cpu_count() reports. More
# threads than cores only adds contention (each intra-op barrier waits for the slowest thread), and
# every thread reserves a stack and per-thread scratch in the runtimes: a backend given 100000 threads
# grew to 22 GB, then segfaulted. 4x leaves room for a cpu_count that undercounts what the
# runtime may use (SMT siblings, a cgroup quota changed after start) without allowing a runaway value.
THREADS_PER_CORE_LIMIT = 4

# Seeds feed numpy's RandomState and torch.manual_seed; RandomState takes 0 .. 2**32 - 1.
SEED_LIMIT = 2 ** 32 - 1

# A network input side above this is refused before any allocation: 8192 is over 6x the recipe's
# 1216 (one such float32 image is 800 MB before activations).
IMAGE_SIDE_LIMIT = 8192

# Batch memory estimate (check_batch_memory): one float32 CHW input is 3*H*W*4 bytes; a forward pass
# of FSAF R50-FPN keeps activations of several times that per image (conv1's 64-channel stride-2
# output alone is 64/3/4 = 5.3x the input). Measured: a no-grad forward of the seeded model at 256x384
# (torch 2, one thread) raised peak RSS by 14.2x (batch 16) and 15.4x (batch 32) the batch's input
# bytes; 24 leaves a margin for other runtimes' arenas (ONNX Runtime) and the loader's copies.
ACTIVATION_BYTES_PER_INPUT_BYTE = 24


class OptionKind:
    """A declared option type: `kind(text)` parses command-line text, `kind.check(value, option)` checks
    a value given to a library function. `describe` says the type and range in words (help, errors)."""

    describe = "a value"

    def __call__(self, text: Any) -> Any:
        return self.check(text, None)

    def check(self, value: Any, option: Optional[str]) -> Any:
        raise NotImplementedError

    def refuse(self, value: Any, option: Optional[str], why: Optional[str] = None) -> OptionError:
        where = f"{option} " if option else ""
        return OptionError(f"{where}must be {self.describe}, got {value!r}" + (f" ({why})" if why else ""))


class Integer(OptionKind):
    """An int in [minimum, maximum] (maximum: a number, a callable giving one, or None). `zero` names
    what 0 means for an option where 0 is allowed below `minimum` (e.g. "the runtime's own count")."""

    def __init__(self, minimum: int, maximum: Any = None, zero: Optional[str] = None, what: str = "an integer"):
        self.minimum, self._maximum, self.zero, self.what = minimum, maximum, zero, what

    @property
    def maximum(self) -> Optional[int]:
        return self._maximum() if callable(self._maximum) else self._maximum

    @property
    def describe(self):
        bounds = f"{self.what} >= {self.minimum}"
        if self.maximum is not None:
            bounds = f"{self.what} in {self.minimum}..{self.maximum}"
        return bounds + (f", or 0 ({self.zero})" if self.zero else "")

    def check(self, value, option):
        number = _as_int(value)
        if number is None:
            raise self.refuse(value, option)
        if number == 0 and self.zero:
            return 0
        maximum = self.maximum
        if number < self.minimum or (maximum is not None and number > maximum):
            raise self.refuse(value, option)
        return number


def _as_int(value):
    """An int from int-like text or an integral number (bool, float and other types: None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in ("+", "-") else text
        if digits.isascii() and digits.isdigit():  # not "1.5", "nan", "1e3" or non-ASCII digits
            return int(text)
    return None


class Real(OptionKind):
    """A finite float in a range; `low_open` / `high_open` exclude the bound itself."""

    def __init__(self, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    @property
    def describe(self):
        low = ("(" if self.low_open else "[") + f"{self.low:g}"
        high = "inf)" if math.isinf(self.high) else f"{self.high:g}" + (")" if self.high_open else "]")
        return f"a finite number in {low}, {high}"

    def check(self, value, option):
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
            raise self.refuse(value, option)
        try:
            number = float(value)
        except ValueError:
            raise self.refuse(value, option) from None
        if not math.isfinite(number):
            raise self.refuse(value, option, "not finite")
        below = number <= self.low if self.low_open else number < self.low
        above = number >= self.high if self.high_open else number > self.high
        if below or above:
            raise self.refuse(value, option)
        return number


class Text(OptionKind):
    """A non-empty one-line string (a name, a label, an executable)."""

    describe = "non-empty text on one line"

    def check(self, value, option):
        if not isinstance(value, str) or not value.strip() or any(c in value for c in "\n\r\0"):
            raise self.refuse(value, option)
        return value


class Choice(OptionKind):
    def __init__(self, values: Iterable[Any]):
        self.values = tuple(values)

    @property
    def describe(self):
        return "one of " + ", ".join(repr(v) for v in self.values)

    def check(self, value, option):
        # bool is an int (True == 1): it matches no declared choice by accident
        if isinstance(value, bool) != any(isinstance(v, bool) for v in self.values) or value not in self.values:
            raise self.refuse(value, option)
        return value


class Boolean(Choice):
    def __init__(self):
        super().__init__((True, False))


class OfType(OptionKind):
    """A value of given Python types (a mapping of provider options, a command as a list)."""

    def __init__(self, types: tuple, describe: str):
        self.types, self.describe = types, describe

    def check(self, value, option):
        if not isinstance(value, self.types):
            raise self.refuse(value, option)
        return value


class SizeList(OptionKind):
    """Comma-separated batch sizes ("1,4,8", or a list of ints): each a positive int, given once; the
    package's one batch-size list parser (CLI arguments, reproduce options, convert). Returns them sorted.
    0, a negative, a duplicate or an empty list is refused: "1,1" is a slip, not one size."""

    describe = "comma-separated positive integers, each once"

    def check(self, value, option):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise self.refuse(value, option)
        sizes = [_as_int(item) for item in items if not (isinstance(item, str) and not item.strip())]
        if not sizes or any(size is None or size < 1 for size in sizes):
            raise self.refuse(value, option)
        repeated = sorted(set(size for size in sizes if sizes.count(size) > 1))
        if repeated:
            raise self.refuse(value, option, "{} given twice".format(", ".join(map(str, repeated))))
        return sorted(sizes)


class ShardSpec(OptionKind):
    """`i/n`: part i of n (0 <= i < n), as (i, n)."""

    describe = "i/n with 0 <= i < n (e.g. 0/4 .. 3/4)"

    def check(self, value, option):
        parts = value.split("/") if isinstance(value, str) else value
        pair = [_as_int(p) for p in parts] if isinstance(parts, (list, tuple)) else []
        if len(pair) != 2 or None in pair or not 0 <= pair[0] < pair[1]:
            raise self.refuse(value, option)
        return pair[0], pair[1]


class DeviceIds(OptionKind):
    """Comma-separated device ids: non-negative, each once, at least one; a list in the order given."""

    describe = "comma-separated distinct device ids >= 0 (e.g. 0,1,2,3)"

    def check(self, value, option):
        items = value.split(",") if isinstance(value, str) else value
        ids = [_as_int(item) for item in items] if isinstance(items, (list, tuple)) else [None]
        if not ids or any(i is None or i < 0 for i in ids):
            raise self.refuse(value, option)
        if len(set(ids)) != len(ids):
            raise self.refuse(value, option, "a device given twice")
        return ids


def thread_limit() -> int:
    return THREADS_PER_CORE_LIMIT * (os.cpu_count() or 1)


# The declared kinds (each option's declaration names one of these).
POSITIVE_INT = Integer(1)
NON_NEGATIVE_INT = Integer(0)
COUNT = Integer(1, what="a count")  # images, loops, runs: None (absent) is "all" or the default, never 0
SEED = Integer(0, SEED_LIMIT, what="a seed")
THREADS = Integer(1, thread_limit, what="a thread count")
# "0: the runtimes' own count" is a meaning of its own (reproduce --threads 0), said in the help
THREADS_OR_RUNTIME = Integer(1, thread_limit, zero="the runtimes' own count", what="a thread count")
IMAGE_SIDE = Integer(1, IMAGE_SIDE_LIMIT, what="an image side in pixels")
BATCH_SIZE = Integer(1, what="a batch size")  # the memory a batch takes: check_batch_memory
BATCH_SIZES = SizeList()
SHARD = ShardSpec()
DEVICE_IDS = DeviceIds()
DURATION = Real(0.0)  # seconds >= 0, finite; 0 is "no minimum", said in each option's help
TIMEOUT = Real(0.0, low_open=True)  # seconds, finite and > 0; no timeout is None
PROBABILITY = Real(0.0, 1.0)
TEXT = Text()
BOOLEAN = Boolean()


def check_options(kinds, values, what, spell=None):
    """`values` (a dict) checked against `kinds` (name -> OptionKind): an unknown name is refused with
    the known ones listed (a misspelt option must not be ignored); None stays None (the default).
    `spell(name)` is how an error names the option (reproduce: its command-line spelling).
    Returns the checked values."""
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise OptionError("{}: unknown option(s) {}; known options: {}".format(
            what, ", ".join(unknown), ", ".join(sorted(kinds)) or "none"))
    spell = spell or str
    return {name: None if value is None else kinds[name].check(value, spell(name)) for name, value in values.items()}


# --- batch memory -----------------------------------------------------------------------------------

def available_memory_bytes() -> Optional[int]:
    """Memory available to a new allocation without swapping (Linux: MemAvailable), or None when this
    system does not say (the batch memory check is then skipped)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def batch_memory_bytes(batch_size: int, height: int, width: int, batches_in_flight: int = 1) -> int:
    """Estimated bytes a run at this batch size takes: `batches_in_flight` float32 input batches (a
    loader's queue and buffers) plus one batch's forward activations."""
    per_image = 3 * int(height) * int(width) * 4
    return int(batch_size) * per_image * (int(batches_in_flight) + ACTIVATION_BYTES_PER_INPUT_BYTE)


def check_batch_memory(batch_size: int, height: int, width: int, option: str, batches_in_flight: int = 1,
                       images: Optional[int] = None, available: Optional[int] = None) -> int:
    """Refuse (OptionError) a batch size whose estimated memory exceeds the memory available, or (when
    `images` is given) a batch larger than the images there are to fill it."""
    if images is not None and batch_size > images:
        raise OptionError(f"{option} {batch_size} is larger than the {images} image(s) to run; give at most "
                          f"{images}")
    available = available_memory_bytes() if available is None else available
    needed = batch_memory_bytes(batch_size, height, width, batches_in_flight)
    if available is not None and needed > available:
        per_batch = batch_memory_bytes(1, height, width, batches_in_flight)
        raise OptionError(
            f"{option} {batch_size} at {height}x{width} would take about {needed / 2 ** 30:.1f} GiB "
            f"({batch_size} x {per_batch / 2 ** 20:.0f} MiB: inputs and activations) but {available / 2 ** 30:.1f} "
            f"GiB is available; give at most {max(1, available // per_batch)}")
    return batch_size
