"""Image classifiers as plain ``torch.nn`` modules (no Lightning), built by name from the config."""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from lightning_fl.errors import check

ARCHS: tuple[str, ...] = ("mlp", "cnn", "mcmahan_cnn", "seed_cnn")


class MLP(nn.Module):
    """McMahan et al.'s "2NN": flatten, ``Linear + ReLU`` per hidden width, then a linear output layer."""

    def __init__(self, in_shape: Sequence[int], num_classes: int = 10, hidden: Sequence[int] = (200, 200)) -> None:
        super().__init__()
        check(all(int(d) >= 1 for d in in_shape), f"model.in_shape must be positive, got {tuple(in_shape)}")
        check(all(int(h) >= 1 for h in hidden), f"model.hidden must hold positive widths, got {tuple(hidden)}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(int(d) for d in in_shape)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class McMahanCNN(nn.Module):
    """The CNN of McMahan et al. (2017): two 5x5 conv + 2x2 max-pool blocks, a 512-unit dense layer.

    On 1x28x28 inputs with 10 classes it has 1,663,370 parameters, the count the paper reports.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        check(image_size >= 4, f"model.in_shape: McMahanCNN needs images of at least 4x4, got {image_size}")
        side = image_size // 2 // 2  # 'same' convolutions keep the size, each pool halves it
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(side * side * 64, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SeedCNN(nn.Module):
    """The project's original seed model with its flatten size fixed to follow the input size.

    Two unpadded 3x3 convs shrink the side by 4 and the 2x2 average pool halves it, so the dense
    layer sees ``((image_size - 4) // 2) ** 2 * 64`` features.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        check(image_size >= 6, f"model.in_shape: SeedCNN needs images of at least 6x6, got {image_size}")
        side = (image_size - 4) // 2
        self.flat_features = side * side * 64
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.flat_features, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A small, fast CNN sized for 8x8 digits (works for any side >= 2)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8) -> None:
        super().__init__()
        check(image_size >= 2, f"model.in_shape: SmallCNN needs images of at least 2x2, got {image_size}")
        side = image_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(side * side * 32, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def build_net(arch: str, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The network named ``arch`` for square images of shape ``in_shape = (C, H, W)``."""
    check(
        arch in ARCHS,
        f"model.arch: unknown architecture '{arch}'; choose one of {', '.join(ARCHS)}",
    )
    shape = tuple(int(d) for d in in_shape)
    check(len(shape) == 3, f"model.in_shape must be (channels, height, width), got {shape}")
    check(shape[1] == shape[2], f"model.in_shape: the networks expect square images, got {shape}")
    check(num_classes >= 2, f"model.num_classes must be >= 2, got {num_classes}")
    in_channels, image_size = shape[0], shape[-1]
    if arch == "mlp":
        return MLP(shape, num_classes)
    if arch == "cnn":
        return SmallCNN(in_channels, num_classes, image_size)
    if arch == "mcmahan_cnn":
        return McMahanCNN(in_channels, num_classes, image_size)
    return SeedCNN(in_channels, num_classes, image_size)
