"""The guard against torch 1.8.0's memory corruption when the intra-op thread count rises.

The crash needs oneDNN's AVX2 1x1 convolution kernel, which oneDNN picks on CPUs without AVX-512;
`DNNL_MAX_CPU_ISA=AVX2` makes it pick that kernel on AVX-512 CPUs too, so the subprocess tests run
the crashing sequence on whatever x86 CPU CI lands on.
"""
import os
import subprocess
import sys
import textwrap
import types
import warnings

import pytest
import torch

from fsaf_repro import torch_threads

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AFFECTED = torch_threads.onednn_thread_rise_unsafe()


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


HAS_AVX2 = "avx2" in _cpu_flags()


def _run_python(code):
    env = dict(os.environ, DNNL_MAX_CPU_ISA="AVX2", PYTHONPATH=ROOT, PYTHONWARNINGS="always")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


# A forward at one thread, then at two, in one process: the sequence that aborts torch 1.8.0.
RAW_RISE = """
    import torch
    from fsaf_repro.model import build_detector
    model, x = build_detector(), torch.randn(1, 3, 128, 192)
    for count in (1, 2):
        torch.set_num_threads(count)
        with torch.no_grad():
            model(x)
    print("finished")
"""

GUARDED_RISE = """
    import torch
    from fsaf_repro.checkpoint import seeded_state_dict
    from fsaf_repro.model import build_detector
    from fsaf_repro.torch_threads import set_intra_op_threads
    model, x = build_detector(), torch.randn(1, 3, 128, 192)
    ran = []
    for count in (2, 1, 2):
        ran.append(set_intra_op_threads(count))
        with torch.no_grad():
            model(x)
    seeded_state_dict(seed=0)  # calibrates on one thread inside, then restores the caller's count
    with torch.no_grad():
        model(x)
    print("ran at", ran, "then", torch.get_num_threads())
"""


@pytest.mark.skipif(not AFFECTED, reason="needs torch 1.8.0 with oneDNN on x86 (the recipe stack): the fault "
                                         f"is that torch's; torch {torch.__version__} is not affected")
@pytest.mark.skipif(not HAS_AVX2, reason="needs a CPU with AVX2: the overflowing oneDNN kernel is jit_1x1:avx2")
def test_unguarded_rise_aborts_on_the_recipe_stack():
    """The control: without the guard the sequence really corrupts memory here, so the next test means
    something."""
    result = _run_python(RAW_RISE)
    assert result.returncode != 0 and "finished" not in result.stdout, result.stdout[-2000:]


@pytest.mark.skipif(not HAS_AVX2, reason="needs a CPU with AVX2: the overflowing oneDNN kernel is jit_1x1:avx2")
def test_guarded_rise_exits_cleanly():
    result = _run_python(GUARDED_RISE)
    assert result.returncode == 0, result.stdout[-2000:]
    if AFFECTED:
        # the rise after a forward at one thread is clamped, said once, and the calibration (one
        # thread, oneDNN off) leaves the count where it was
        assert "ran at [2, 1, 1] then 1" in result.stdout
        assert result.stdout.count("ThreadCountClampedWarning") == 1
    else:
        assert "ran at [2, 1, 2] then 2" in result.stdout
        assert "ThreadCountClampedWarning" not in result.stdout


@pytest.mark.parametrize("version, machine, mkldnn, affected", [
    ("1.8.0", "x86_64", True, True),
    ("1.8.0+cpu", "x86_64", True, True),
    ("1.8.0", "x86_64", False, False),
    ("1.8.0", "aarch64", True, False),
    ("1.8.1", "x86_64", True, False),
    ("1.7.1", "x86_64", True, False),
    ("2.13.0+cpu", "x86_64", True, False),
])
def test_which_torch_is_affected(monkeypatch, version, machine, mkldnn, affected):
    fake = types.SimpleNamespace(__version__=version, backends=types.SimpleNamespace(
        mkldnn=types.SimpleNamespace(is_available=lambda: mkldnn)))
    monkeypatch.setattr(torch_threads.platform, "machine", lambda: machine)
    assert torch_threads.onednn_thread_rise_unsafe(fake) is affected


@pytest.fixture
def affected_guard(monkeypatch):
    """The guard's logic on any torch: declare this torch affected, with a fresh process-wide state."""
    monkeypatch.setattr(torch_threads, "onednn_thread_rise_unsafe", lambda torch=None: True)
    monkeypatch.setattr(torch_threads, "_state", {"floor": None, "warned": set()})
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_counts_may_rise_freely_before_the_first_forward(affected_guard):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch_threads.set_intra_op_threads(1) == 1
        assert torch_threads.set_intra_op_threads(2) == 2
    assert torch.get_num_threads() == 2


def test_a_rise_after_a_forward_is_clamped_and_said_once(affected_guard):
    torch_threads.set_intra_op_threads(1)
    torch_threads.note_forward()
    with pytest.warns(torch_threads.ThreadCountClampedWarning, match="keeping 1 intra-op thread"):
        assert torch_threads.set_intra_op_threads(2) == 1
    assert torch.get_num_threads() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch_threads.set_intra_op_threads(2) == 1  # the same request is not said again
        assert torch_threads.set_intra_op_threads(1) == 1  # lowering is always allowed


def test_a_forward_with_onednn_off_does_not_lower_the_ceiling(affected_guard):
    torch_threads.set_intra_op_threads(2)
    torch_threads.note_forward()
    with torch_threads.temporarily_intra_op_threads(1):
        assert torch.get_num_threads() == 1
        assert torch.backends.mkldnn.enabled is False
        torch_threads.note_forward()
    assert torch.backends.mkldnn.enabled is True
    assert torch.get_num_threads() == 2
    assert torch_threads.intra_op_threads_ceiling() == 2


def test_temporary_block_computes_the_same_way_from_every_caller(affected_guard):
    # oneDNN is off inside even when the caller already runs at the block's count: the calibration's
    # weights must not depend on the caller's count
    torch_threads.set_intra_op_threads(1)
    with torch_threads.temporarily_intra_op_threads(1):
        assert torch.backends.mkldnn.enabled is False
    assert torch.backends.mkldnn.enabled is True


def test_temporary_count_is_restored_after_an_error(affected_guard):
    torch_threads.set_intra_op_threads(2)
    with pytest.raises(KeyError):
        with torch_threads.temporarily_intra_op_threads(1):
            raise KeyError("inside")
    assert torch.get_num_threads() == 2 and torch.backends.mkldnn.enabled is True


def test_invalid_count_is_an_error():
    with pytest.raises(ValueError, match=">= 1"):
        torch_threads.set_intra_op_threads(0)


def test_torch_backend_records_the_count_in_effect(affected_guard, seeded_checkpoint):
    from fsaf_repro.backends import create_backend
    torch_threads.set_intra_op_threads(1)
    torch_threads.note_forward()
    with pytest.warns(torch_threads.ThreadCountClampedWarning):
        with create_backend("torch", threads=2) as backend:
            backend.load(seeded_checkpoint)
            assert backend.intra_op_threads == 1
