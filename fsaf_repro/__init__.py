"""fsaf-repro: a reproduction suite for deploying mmdetection's FSAF (R50-FPN) to accelerators."""

__version__ = "0.1.0"
