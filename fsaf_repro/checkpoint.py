"""Checkpoints in mmdetection's published layout: safe loading, strict validation, seeded weights.

A published mmdetection checkpoint is a pickle holding `{'state_dict': {...}, 'meta': {...}}`; a bare
state dict is accepted too. Loading goes through torch's weights-only unpickler where the installed
torch has one, so an untrusted file cannot run code; torch 1.8 has none, which is said once.

Seeded weights (`seeded_state_dict`) stand in for the official checkpoint wherever it is absent: they
are written to disk in the official layout so that every consumer goes through the real loader.
"""
import collections
import inspect
import io
import math
import os
import pickle
import tarfile
import warnings
import zipfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from .errors import CheckpointError
from .fileio import atomic_write_bytes, file_sha256  # noqa: F401  (file_sha256 is part of this API)
from .model import build_detector
from .spec import load_recipe_spec, model_constants
from .torch_threads import temporarily_intra_op_threads

# Keys torch adds to BatchNorm buffers; old checkpoints may lack them and they do not affect eval.
OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)

_WARNED_NO_SAFE_LOAD = []


def torch_has_weights_only_load() -> bool:
    return "weights_only" in inspect.signature(torch.load).parameters


# The first pickle of a torch.save file in the legacy (pre-1.6) format: torch's magic number
# 0x1950a86a20f9469cfc6c, pickled with protocol 2 (PROTO 2, LONG1 of 10 bytes, STOP).
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little") + b"."


def checkpoint_container(path: str) -> Optional[str]:
    """"zip" or "legacy" for the two layouts torch.save writes ("tar" for torch's oldest), None otherwise."""
    if zipfile.is_zipfile(path):
        return "zip"
    with open(path, "rb") as handle:
        head = handle.read(len(LEGACY_TORCH_MAGIC))
    if head == LEGACY_TORCH_MAGIC:
        return "legacy"
    if tarfile.is_tarfile(path):
        return "tar"
    return None


def _read_pickle(path, trusted):
    if not os.path.exists(path):
        official = load_recipe_spec()["checkpoint"]["file_name"]
        raise CheckpointError(f"checkpoint not found: {path} (pass the official {official} or run `fsaf-repro "
                              "make-checkpoint` for seeded weights)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint is not readable (permissions): {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is an empty file: {path}")
    container = checkpoint_container(path)
    if container is None:
        # torch.load would fail on it anyway; said here so that a damaged or foreign file is not
        # reported as a weights-only refusal that advises trusting it
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive (or, before "
                              "torch 1.6, a pickle starting with torch's magic number); check that the "
                              "download is complete and is the .pth file")
    # FSAF_TRUST_CHECKPOINT=1 is the environment's form of --trust-checkpoint, for runs (acceptance
    # tests, CI jobs) that load a file the user vouches for through several entry points.
    trusted = trusted or os.environ.get("FSAF_TRUST_CHECKPOINT") == "1"
    kwargs = {"map_location": "cpu"}
    if torch_has_weights_only_load():
        kwargs["weights_only"] = not trusted
    elif not trusted and not _WARNED_NO_SAFE_LOAD:
        _WARNED_NO_SAFE_LOAD.append(True)
        warnings.warn(f"torch {torch.__version__} has no weights-only unpickler: {path} is loaded with the full pickle "
                      "loader, which can run code; load only checkpoints you trust", RuntimeWarning, stacklevel=3)
    try:
        return torch.load(path, **kwargs)
    except pickle.UnpicklingError as exc:
        if kwargs.get("weights_only"):
            raise CheckpointError(
                f"refused to load {path}: the weights-only unpickler rejected it ({_first_line(exc)}). "
                "A checkpoint that needs arbitrary objects can run code when loaded; if you trust this file, pass "
                "--trust-checkpoint (or set FSAF_TRUST_CHECKPOINT=1)")
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unpickling failed: {exc})")
    except Exception as exc:  # noqa: B902 - torch.load on foreign bytes raises many types; all mean "not a checkpoint"
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {_first_line(exc)})")


def _first_line(exc):
    """The first line of an exception's message ("" for an empty one)."""
    text = str(exc)
    return text.splitlines()[0] if text else ""


def extract_state_dict(obj: Any, path: str = "<checkpoint>") -> Dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: `obj['state_dict']` or `obj` itself."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state_dict = obj["state_dict"]
    elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        state_dict = obj
    else:
        found = f"a dict with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path} holds no state dict: expected {{'state_dict': ..., 'meta': ...}} (mmdetection layout) or "
            f"a dict of tensors, found {found}")
    non_tensors = sorted(k for k, v in state_dict.items() if not torch.is_tensor(v))
    if non_tensors:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {non_tensors[:10]}")
    return state_dict


def expected_layout() -> Dict[str, Tuple[int, ...]]:
    """OrderedDict key -> shape of the FSAF detector's state dict."""
    model = build_detector()
    return collections.OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _is_optional(key):
    return key.endswith(OPTIONAL_KEY_SUFFIXES)


def validate_state_dict(state_dict: Dict[str, torch.Tensor], path: str = "<checkpoint>") -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped key."""
    layout = expected_layout()
    missing = [k for k in layout if k not in state_dict and not _is_optional(k)]
    unexpected = [k for k in state_dict if k not in layout]
    misshaped = [(k, tuple(state_dict[k].shape), layout[k]) for k in layout
                 if k in state_dict and tuple(state_dict[k].shape) != layout[k]]
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{path} does not fit FSAF R50-FPN ({len(missing)} missing, {len(unexpected)} unexpected, "
             f"{len(misshaped)} mis-shaped keys):"]
    for key in missing:
        lines.append(f"  missing: {key}")
    for key in unexpected:
        lines.append(f"  unexpected: {key}")
    num_classes = model_constants()["num_classes"]
    for key, found, wanted in misshaped:
        hint = ""
        if key == "bbox_head.retina_cls.weight" and found[0] % num_classes == 0 and found[0] != num_classes:
            hint = (f" ({found[0]} outputs = {found[0] // num_classes} anchors x {num_classes} classes: "
                    "this looks like a RetinaNet checkpoint; FSAF has one anchor per location)")
        lines.append(f"  mis-shaped: {key} checkpoint {list(found)} vs model {list(wanted)}{hint}")
    raise CheckpointError("\n".join(lines))


def check_finite_weights(state_dict: Dict[str, torch.Tensor], path: str = "<checkpoint>") -> None:
    """CheckpointError naming the first tensor (in key order) holding a NaN or an infinity.

    Such weights run without error and give no detections or NaN boxes, which would be scored and
    reported as a measured model; they are refused at load instead. Integer tensors (BatchNorm's
    num_batches_tracked) are always finite."""
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{path}: weight {key} holds {bad} non-finite value(s) (NaN or inf) of "
                                  f"{tensor.numel()}: the checkpoint is damaged or diverged in training; use "
                                  "another checkpoint")


def load_state_dict(path: str, trusted: bool = False) -> Dict[str, torch.Tensor]:
    """Read and validate the state dict of the checkpoint at `path`: its layout, and finite weights."""
    state_dict = extract_state_dict(_read_pickle(path, trusted), path)
    validate_state_dict(state_dict, path)
    check_finite_weights(state_dict, path)
    return state_dict


def load_detector(path: str, trusted: bool = False) -> torch.nn.Module:
    """An FSAFDetector in eval mode with the weights of the checkpoint at `path`."""
    state_dict = load_state_dict(path, trusted)
    model = build_detector()
    model.load_state_dict(state_dict, strict=False)  # validated above; only optional keys may be absent
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Seeded weights

def generated_network_inputs(generator: torch.Generator, count: int, height: int, width: int) -> torch.Tensor:
    """Normalised network inputs with image-like structure, deterministic per generator state.

    Even-numbered images are smooth colour fields with noise; odd-numbered ones are flat
    backgrounds with sharp-edged rectangles (like drawn objects), whose strong edges excite the
    network differently. Calibrating on both keeps seeded scores unsaturated on either kind.
    """
    images = torch.empty((count, 3, height, width))
    for index in range(count):
        if index % 2 == 0:
            coarse = torch.rand((1, 3, height // 16 + 1, width // 16 + 1), generator=generator) * 255.0
            image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear",
                                                    align_corners=False)[0]
            image = image + torch.randn((3, height, width), generator=generator) * 20.0
        else:
            image = torch.ones((3, height, width)) * torch.rand((3, 1, 1), generator=generator) * 255.0
            for _ in range(12):
                y0 = int(torch.randint(0, height - 4, (1,), generator=generator))
                x0 = int(torch.randint(0, width - 4, (1,), generator=generator))
                y1 = y0 + int(torch.randint(4, max(5, height // 2), (1,), generator=generator))
                x1 = x0 + int(torch.randint(4, max(5, width // 2), (1,), generator=generator))
                image[:, y0:y1, x0:x1] = torch.rand((3, 1, 1), generator=generator) * 255.0
            image = image + torch.randn((3, height, width), generator=generator) * 5.0
        images[index] = image
    constants = load_recipe_spec()["input"]
    mean = torch.tensor(constants["mean_rgb"]).view(1, 3, 1, 1)
    std = torch.tensor(constants["std_rgb"]).view(1, 3, 1, 1)
    return (images.clamp(0, 255) - mean) / std


def seeded_state_dict(seed: int = 0, target_candidate_fraction: float = 0.01) -> Dict[str, torch.Tensor]:
    """Deterministic, realistic weights for FSAF R50-FPN.

    Backbone convs get He-normal weights and BN statistics calibrated on generated images, so
    activations stay in range through all 50 layers; neck and head follow mmdetection's init (head
    Normal(0, 0.01), box bias 0.25) except that every bias is non-zero (so bias handling is tested)
    and the classification bias is calibrated so that about `target_candidate_fraction` of all
    (location, class) pairs score above the 0.05 threshold: many detections, busy NMS.

    The calibration runs on one thread: multi-threaded convolutions sum in an order that depends on
    the thread count, and the weights must not depend on what the caller set it to. On torch 1.8.0 it
    also runs with oneDNN off, so that no convolution is cached at one thread (see torch_threads).
    """
    with temporarily_intra_op_threads(1):
        return _seeded_state_dict(seed, target_candidate_fraction)


def _seeded_state_dict(seed, target_candidate_fraction):
    generator = torch.Generator().manual_seed(int(seed))
    model = build_detector()
    with torch.no_grad():
        _init_weights(model, generator)
        model.bbox_head.retina_reg.bias.add_(0.25)
        _calibrate_batch_norm(model, generator)
        _calibrate_classifier(model, generator, target_candidate_fraction)
    return model.state_dict()


def _conv_std(name, module):
    """Standard deviation of a conv's initial weights: He for the backbone and the head's towers,
    Xavier for the neck, mmdetection's small normals for the head's output layers."""
    fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
    fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    if name.startswith("backbone"):
        return math.sqrt(2.0 / fan_out)
    if name.startswith("neck"):
        return math.sqrt(2.0 / (fan_in + fan_out))
    if name.endswith(("retina_cls", "retina_reg")):
        return 0.0005 if name.endswith("retina_reg") else 0.01
    return math.sqrt(2.0 / fan_in)


def _init_weights(model, generator):
    """Random conv and BatchNorm parameters, drawn from `generator` in module order."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            std = _conv_std(name, module)
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.01)
        elif isinstance(module, torch.nn.BatchNorm2d):
            # Residual branches end small (bn3 gain 0.2), as in trained ResNets: a random net
            # with unit-gain branches is chaotic, and float32 rounding would grow ~1.3x per
            # block, far beyond what the parity tolerances allow.
            gain = 0.2 if name.endswith("bn3") else 1.0
            module.weight.copy_(gain * (1.0 + 0.1 * torch.randn(module.weight.shape, generator=generator)))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


def _calibrate_batch_norm(model, generator):
    """BN running statistics: cumulative averages over a few generated batches, variance floored."""
    batch_norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    for module in batch_norms:
        module.reset_running_stats()
        module.momentum = None
    model.backbone.train()
    for _ in range(2):
        model.backbone(generated_network_inputs(generator, 2, 256, 320))
    model.eval()
    for module in batch_norms:
        module.momentum = 0.1
        # Near-dead channels would get huge gains 1/sqrt(var) and amplify float32 rounding
        # through the depth (trained networks do not do that): floor each channel's variance
        # at a fraction of its layer's mean.
        floor = module.running_var.mean() * 0.25
        module.running_var.copy_(torch.max(module.running_var, floor))


def _calibrate_classifier(model, generator, target_candidate_fraction):
    """Scale the classification layer on the logits of a generated image so that scores spread from
    the 0.05 threshold (at the wanted quantile) to about 0.8 at the top, with no saturation near 1.0
    where float32 scores would tie."""
    classifier = model.bbox_head.retina_cls
    cls_scores, _ = model(generated_network_inputs(generator, 2, 256, 320))
    logits = torch.cat([c.permute(0, 2, 3, 1).reshape(-1) for c in cls_scores])
    base = (logits - classifier.bias.repeat(logits.numel() // classifier.bias.numel())).numpy()
    low = float(np.quantile(base, 1.0 - target_candidate_fraction))
    high = float(base.max())
    score_threshold = model_constants()["score_threshold"]
    threshold_logit = math.log(score_threshold / (1.0 - score_threshold))
    top_logit = math.log(0.7 / 0.3)
    scale = (top_logit - threshold_logit) / max(high - low, 1e-6)
    classifier.weight.mul_(scale)
    classifier.bias.mul_(scale)
    classifier.bias.add_(threshold_logit - low * scale - classifier.bias.mean())


def checkpoint_meta(seed: int) -> Dict[str, Any]:
    return {
        "mmdet_version": "2.15.0",
        "CLASSES": tuple(load_recipe_spec()["coco_classes"]),
        "seeded": True,
        "seed": int(seed),
        "note": "seeded weights written by fsaf-repro in the official layout; not trained",
    }


def save_checkpoint(state_dict: Dict[str, torch.Tensor], path: str, meta: Optional[Dict[str, Any]] = None) -> str:
    """Write `{'meta': meta, 'state_dict': state_dict}` atomically (a complete file or none)."""
    buffer = io.BytesIO()
    torch.save({"meta": meta or {}, "state_dict": collections.OrderedDict(state_dict)}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def write_seeded_checkpoint(path: str, seed: int = 0) -> str:
    """Seeded weights written in the official checkpoint layout; returns `path`."""
    return save_checkpoint(seeded_state_dict(seed), path, checkpoint_meta(seed))
