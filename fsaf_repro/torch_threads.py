"""torch's intra-op thread count, set in one place because torch 1.8.0 corrupts memory when it rises.

The fault (reproduced on torch 1.8.0, the recipe's pin; docs/torch-1.8.0-thread-crash.md has the
measurements): torch 1.8.0 keeps every oneDNN (MKL-DNN 1.7) convolution it builds in a cache keyed by
shapes and attributes, not by the thread count, and the convolution's scratch memory is sized for the
thread count in effect when it was built. Run later at *more* threads, a 1x1 stride-2 convolution
(ResNet's downsample) writes past that memory: `double free or corruption`, `free(): invalid size`,
`munmap_chunk(): invalid pointer`, then abort. The kernel that overflows is the AVX2 one
(`jit_1x1:avx2`), which oneDNN picks on CPUs without AVX-512; `DNNL_MAX_CPU_ISA=AVX2` selects it on
any x86 CPU, which is how the regression test reproduces it on AVX-512 hosts. Lowering the count is
safe, and so is going back up to a count at which every cached convolution was built. torch 1.8.1
(same oneDNN 1.7.0 build) and torch 2.x do not crash: the guard applies to 1.8.0 only.

The guard, on an affected torch:
- `set_intra_op_threads(n)` never raises the count above the lowest count at which the detector has
  run a forward pass with oneDNN on (`note_forward` records it). A larger request is clamped to that
  count, with a `ThreadCountClampedWarning`; the count in effect is returned so that records state
  what really ran. Results stay identical to what the process has computed so far (same kernels,
  same count); the cost is speed only (measured in the note above: about 1.4-1.6x per forward at one
  thread instead of two).
- `temporarily_intra_op_threads(n)` (a with-block that restores the count) runs with oneDNN off
  inside, so no cached convolution is built at a lower count and the caller's count can come back
  afterwards (used by the seeded-weights calibration, which runs on one thread so that the
  weights do not depend on the caller's count).
Everywhere else the functions are plain `torch.set_num_threads` / `get_num_threads`.
"""
import contextlib
import platform
import warnings


class ThreadCountClampedWarning(RuntimeWarning):
    """A requested intra-op thread count was lowered to avoid torch 1.8.0's oneDNN memory corruption."""


# Process-wide, like torch's own thread count: the lowest count at which a forward ran with oneDNN on
# (None until the first one), and the requests already warned about (one warning per distinct pair).
_state = {"floor": None, "warned": set()}


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else the platform's own name: measurements name the
    CPU they ran on, because this fault, and timings, depend on it."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux: the platform's own name below
        pass
    import platform
    return platform.processor() or platform.machine()


def onednn_thread_rise_unsafe(torch=None):
    """True on a torch whose cached oneDNN convolutions overflow when the thread count rises (1.8.0, x86)."""
    if torch is None:
        import torch
    version = str(torch.__version__).split("+")[0]
    if version != "1.8.0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    return bool(torch.backends.mkldnn.is_available())


def note_forward():
    """Record that a forward pass runs now (called by the detector's forward; cheap, no tensors touched)."""
    import torch
    if not onednn_thread_rise_unsafe(torch) or not torch.backends.mkldnn.enabled:
        return
    count = torch.get_num_threads()
    floor = _state["floor"]
    _state["floor"] = count if floor is None else min(floor, count)


def intra_op_threads_ceiling():
    """The highest intra-op count that is safe to set now (None: no limit)."""
    import torch
    if not onednn_thread_rise_unsafe(torch):
        return None
    return _state["floor"]


def set_intra_op_threads(count):
    """Set torch's intra-op thread count; returns the count in effect (lower than asked when clamped)."""
    import torch
    count = int(count)
    if count < 1:
        raise ValueError(f"intra-op thread count must be >= 1, got {count}")
    ceiling = intra_op_threads_ceiling()
    if ceiling is not None and count > ceiling:
        key = (count, ceiling)
        if key not in _state["warned"]:
            _state["warned"].add(key)
            warnings.warn(
                f"torch {torch.__version__}: keeping {ceiling} intra-op thread(s) instead of the {count} asked for: "
                "this torch corrupts memory when the thread count rises after a forward pass (oneDNN convolutions "
                "cached at the lower count; torch >= 1.8.1 is not affected). Set the thread count once, before the "
                "first forward, to use more.",
                ThreadCountClampedWarning, stacklevel=2)
        count = ceiling
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


@contextlib.contextmanager
def temporarily_intra_op_threads(count):
    """Run a block at `count` threads and restore the caller's count (see the module docstring)."""
    import torch
    previous = torch.get_num_threads()
    count = int(count)
    ceiling = intra_op_threads_ceiling()
    if ceiling is not None and count > ceiling:
        count = set_intra_op_threads(count)  # a rise: clamped (and warned about) like a lasting one
    # Lowering with oneDNN on would cache convolutions built at `count`; restoring `previous` would
    # then be a rise over them. oneDNN is off inside whatever the caller's count, so that the block
    # computes the same way from every caller (the calibration's weights must not depend on it).
    flags = torch.backends.mkldnn.flags(enabled=False) if onednn_thread_rise_unsafe(torch) else _no_context()
    with flags:
        torch.set_num_threads(count)
        try:
            yield count
        finally:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def _no_context():
    yield
