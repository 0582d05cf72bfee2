"""lightning_fl: federated and parameter-server training as PyTorch Lightning strategies.

``import lightning_fl`` registers ``Trainer(strategy="fedavg")`` and ``Trainer(strategy="parameter_server")``,
and the FedAvg family by name: ``fedprox``, ``scaffold``, ``fednova`` (client algorithms) and ``fedavgm``,
``fedadagrad``, ``fedadam``, ``fedyogi`` (server optimizers); each also with ``_spawn`` and ``_fork``
suffixes for those launchers. Compose parts in Python:
``FedAvgStrategy(client_algorithm=FedProx(mu=0.01), server_optimizer=FedYogi(lr=0.01),
privacy=CentralDP(noise_multiplier=1.0, clip_norm=0.1), aggregator=TrimmedMean(beta=0.1))``.
Importing it pulls in torch and Lightning but never Hydra: only ``lightning_fl.cli`` knows Hydra.
"""

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.attacks import LabelFlip, ModelPoisoning
from lightning_fl.federated.client_algorithms import FedNova, FedProx, Scaffold
from lightning_fl.federated.compression import Quantize, TopK
from lightning_fl.federated.privacy import CentralDP
from lightning_fl.federated.robust import Krum, Median, NormBound, TrimmedMean
from lightning_fl.federated.secure import SecureAggregation
from lightning_fl.federated.server_optimizers import FedAdagrad, FedAdam, FedAvgM, FedYogi
from lightning_fl.strategies import FedAvgStrategy, ParameterServerStrategy

__version__ = "0.1.0"

__all__ = [
    "CentralDP",
    "FedAdagrad",
    "FedAdam",
    "FedAvgM",
    "FedAvgStrategy",
    "FedNova",
    "FedProx",
    "FedYogi",
    "FederatedConfigError",
    "Krum",
    "LabelFlip",
    "Median",
    "ModelPoisoning",
    "NormBound",
    "ParameterServerStrategy",
    "Quantize",
    "Scaffold",
    "SecureAggregation",
    "TopK",
    "TrimmedMean",
    "__version__",
]
