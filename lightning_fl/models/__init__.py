"""Networks (plain torch) and the strategy-agnostic Lightning classifier that wraps them."""

from lightning_fl.models.classifier import ImageClassifier
from lightning_fl.models.nets import MLP, McMahanCNN, SeedCNN, SmallCNN, build_net

__all__ = ["MLP", "McMahanCNN", "SeedCNN", "SmallCNN", "build_net", "ImageClassifier"]
