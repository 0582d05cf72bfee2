"""Lightning strategies. Importing this module registers their names with Lightning's StrategyRegistry."""

from lightning.pytorch.strategies import StrategyRegistry

from lightning_fl.strategies.fedavg import FedAvgStrategy
from lightning_fl.strategies.parameter_server import ParameterServerStrategy

FedAvgStrategy.register_strategies(StrategyRegistry)
ParameterServerStrategy.register_strategies(StrategyRegistry)

__all__ = ["FedAvgStrategy", "ParameterServerStrategy"]
