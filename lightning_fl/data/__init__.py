"""Lightning data modules for the data sets used in the experiments."""

from lightning_fl.data.digits import DigitsDataModule
from lightning_fl.data.mnist import MNISTDataModule

__all__ = ["DigitsDataModule", "MNISTDataModule"]
