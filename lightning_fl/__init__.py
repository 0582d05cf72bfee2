"""lightning_fl: federated and parameter-server training as PyTorch Lightning strategies.

``import lightning_fl`` registers ``Trainer(strategy="fedavg")`` and ``Trainer(strategy="parameter_server")``
(each also with ``_spawn`` and ``_fork`` suffixes for those launchers).
Importing it pulls in torch and Lightning but never Hydra: only ``lightning_fl.cli`` knows Hydra.
"""

from lightning_fl.errors import FederatedConfigError
from lightning_fl.strategies import FedAvgStrategy, ParameterServerStrategy

__version__ = "0.1.0"

__all__ = ["FedAvgStrategy", "FederatedConfigError", "ParameterServerStrategy", "__version__"]
