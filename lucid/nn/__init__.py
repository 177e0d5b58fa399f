"""Neural-network layers: ``lucid.nn.MaxPool3d`` and friends."""

from lucid.nn import functional
from lucid.nn.module import Module, Parameter
from lucid.nn.pooling import MaxPool3d
from lucid.nn.conv import Conv3d, Conv3D
from lucid.nn.linear import Linear
from lucid.nn.activation import ReLU

__all__ = ["functional", "Module", "Parameter", "MaxPool3d", "Conv3d", "Conv3D", "Linear", "ReLU"]
