"""Helpers shared by tests (importable as `tests.support`)."""

UNIT_INPUT_HW = (192, 256)  # reduced input size for unit tests; one full-size case exists too


def generated_inputs(seed, count, height, width):
    """Normalised network inputs with image-like structure (deterministic per seed)."""
    import torch

    from fsaf_repro.checkpoint import generated_network_inputs

    return generated_network_inputs(torch.Generator().manual_seed(seed), count, height, width)
