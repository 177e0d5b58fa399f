"""The specification's model example: Conv3d -> MaxPool3d -> Linear, forward and backward.

Corrected from the specification: the input has 2 channels to match
``in_channels=2``, so its shape is (1, 2, 2, 2, 2).  Conv3d (k=3, s=1, p=1)
keeps 2x2x2, MaxPool3d (k=2, s=2) gives 1x1x1, so the Linear layer sees
4 * 1 * 1 * 1 features and the output has shape (1, 1).

Run:  python -m lucid.examples.maxpool3d_model
"""

import numpy as np

import lucid
import lucid.nn as nn
from lucid import Tensor


class MaxPool3dModel(nn.Module):
    def __init__(self):
        super(MaxPool3dModel, self).__init__()
        self.conv1 = nn.Conv3D(in_channels=2, out_channels=4, kernel_size=3, stride=1, padding=1)
        self.max_pool = nn.MaxPool3d(kernel_size=2, stride=2, padding=0)
        self.fc = nn.Linear(in_features=4 * 1 * 1 * 1, out_features=1)

    def forward(self, x):
        x = self.conv1(x)
        x = self.max_pool(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x


def make_input() -> Tensor:
    """Channel 0 is the specification's 1..8; channel 1 continues with 9..16."""
    return Tensor(np.arange(1.0, 17.0).reshape(1, 2, 2, 2, 2), requires_grad=True)


def main(seed: int = 0) -> None:
    lucid.random.seed(seed)  # the weights are random: seed them for a reproducible run
    model = MaxPool3dModel()
    input_data = make_input()

    output = model(input_data)
    output.backward(Tensor([[1.0]]))

    print(model)
    print("output:", output)
    print("input_data.grad:", input_data.grad)


if __name__ == "__main__":
    main()
