"""Neural-network layers: ``lucid.nn.MaxPool3d`` and friends."""

from lucid.nn import functional
from lucid.nn.module import Module, Parameter
from lucid.nn.pooling import MaxPool3d

__all__ = ["functional", "Module", "Parameter", "MaxPool3d"]
