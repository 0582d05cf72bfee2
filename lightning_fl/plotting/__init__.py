"""Figures from a run's logs: ``lightning-fl-plot RUN_DIR [RUN_DIR ...]`` or :func:`write_run_figures`.

Needs the optional extra ``pip install 'lightning-fl[plot]'`` (matplotlib); reading the logs needs only the
standard library. Not imported by ``import lightning_fl``; matplotlib itself is imported only when a figure
is drawn, so importing this package works without it (drawing then raises :class:`MatplotlibMissing`,
an ``ImportError`` whose message is the one-line install hint :data:`HINT`).

Inputs, in a run directory (Hydra's ``outputs/DATE/TIME/``):

``logs/metrics.csv``
    Lightning's ``CSVLogger`` file. Per round (``fl/round + 1``, else ``epoch + 1``: 1-based, as the
    console prints "round 3/20") the epoch-level value of every column is read: ``x_epoch`` columns count
    as ``x``, ``x_step`` columns are ignored, blank cells are skipped. ``test_*`` columns are single values
    (``trainer.test`` after fit). ``fl/comm_bytes`` and ``fl/epsilon`` get figures of their own; federated
    evaluation's ``fl/eval/<metric>/<stat>`` columns (``<stat>`` one of ``mean``, ``median``, ``min``,
    ``p10``, ``p90``, ``max``, ``std``) are drawn as the mean (or median) with min-max and p10-p90 bands.

``logs/client_metrics.csv`` (optional; written by federated evaluation)
    One row per (evaluation round, client, metric), header line required::

        round,client,metric,value,num_samples
        4,17,val_acc,0.9375,48
        4,17,val_loss,0.2210,48

    ``round``: the 0-based round index, the same number as the ``fl/round`` column of ``metrics.csv``
    (plotted as ``round + 1``); ``client``: the client id (any string); ``metric``: the name the module logs
    in ``validation_step``; ``value``: that client's value (a float; blank or non-finite rows are skipped);
    ``num_samples``: the client's held-out samples the value is over (weights the mean). Rows may come in
    any order; a later row for the same (round, client, metric) is a separate observation, so write each once.

Outputs (each only when its data exists): ``metrics.png`` (global metrics over rounds, one panel per
quantity), ``client_metrics.png`` (a box per evaluation round of each per-client metric), ``comm.png``
(``fl/comm_bytes`` per round and cumulative), ``epsilon.png`` (``fl/epsilon`` over rounds).

Several run directories overlay on one figure, one color each; a Hydra multirun sweep directory (numbered
job subdirectories with ``.hydra/overrides.yaml``) stands for its jobs, each labelled by the overrides that
differ between the runs (``seed=1,strategy.local_epochs=5``).
"""

from lightning_fl.plotting.figures import (
    HINT,
    MatplotlibMissing,
    client_figure,
    comm_figure,
    epsilon_figure,
    metrics_figure,
    write_figures,
    write_run_figures,
)
from lightning_fl.plotting.logs import RunLogs, load_runs, read_client_metrics, read_metrics_csv

__all__ = [
    "HINT",
    "MatplotlibMissing",
    "RunLogs",
    "client_figure",
    "comm_figure",
    "epsilon_figure",
    "load_runs",
    "metrics_figure",
    "read_client_metrics",
    "read_metrics_csv",
    "write_figures",
    "write_run_figures",
]
