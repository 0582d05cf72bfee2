"""lightning_fl: federated and parameter-server training as PyTorch Lightning strategies.

``import lightning_fl`` registers ``Trainer(strategy="fedavg")`` and ``Trainer(strategy="parameter_server")``,
and the FedAvg family by name: ``fedprox``, ``scaffold``, ``fednova`` (client algorithms) and ``fedavgm``,
``fedadagrad``, ``fedadam``, ``fedyogi`` (server optimizers); each also with ``_spawn`` and ``_fork``
suffixes for those launchers. Compose parts in Python:
``FedAvgStrategy(client_algorithm=FedProx(mu=0.01), server_optimizer=FedYogi(lr=0.01))``.
Importing it pulls in torch and Lightning but never Hydra: only ``lightning_fl.cli`` knows Hydra.
"""

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.client_algorithms import FedNova, FedProx, Scaffold
from lightning_fl.federated.server_optimizers import FedAdagrad, FedAdam, FedAvgM, FedYogi
from lightning_fl.strategies import FedAvgStrategy, ParameterServerStrategy

__version__ = "0.1.0"

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvgM",
    "FedAvgStrategy",
    "FedNova",
    "FedProx",
    "FedYogi",
    "FederatedConfigError",
    "ParameterServerStrategy",
    "Scaffold",
    "__version__",
]
