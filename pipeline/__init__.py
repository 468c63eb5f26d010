"""Image-classification MLOps pipeline: one module per stage, each a pure function plus a thin CLI."""

__version__ = "0.1.0"
