"""Runnable examples: ``python -m lucid.examples.maxpool3d_model``."""
