"""The math of federated rounds: torch only, no Lightning, no Hydra.

Who trains on what and when (``partition``, ``sampling``, ``schedule``), how client results are combined
(``aggregation``), and the server's step (``server_update``). The strategy in
``lightning_fl.strategies.fedavg`` only calls these at the right moments of a round.
"""
