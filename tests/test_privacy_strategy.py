"""Client-level DP inside FedAvgStrategy (issue 9, acceptance 1 and 2): the strategy against DP-FedAvg's
formula, the accountant library called directly, and 1 vs 2 processes."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fl_testing import TinyData, fit_in_process, float_state, max_abs_diff, net_state, run_script, seeded_module
from lightning_fl import FedAvgStrategy, FederatedConfigError, FedNova, FedProx, Scaffold
from lightning_fl.federated.privacy import CentralDP
from lightning_fl.federated.robust import Median, NormBound

dpa = pytest.importorskip("dp_accounting", reason="needs the privacy extra: pip install 'lightning-fl[privacy]'")
from dp_accounting.rdp import rdp_privacy_accountant as rdp  # noqa: E402

# 240 samples split IID into 6 clients of 40: equal sizes, so FedAvg's sample weights are uniform too.
SETTINGS = dict(num_clients=6, clients_per_round=3, partition="iid", seed=5)
MODULE = dict(batchnorm=False, lr=0.1)


def fit(privacy=None, rounds=2, module=None, **kwargs):
    module = module or seeded_module(**MODULE)
    trainer = fit_in_process(FedAvgStrategy(**SETTINGS, privacy=privacy, **kwargs), module, TinyData(), rounds)
    return module, trainer


def test_without_noise_or_effective_clipping_it_is_fedavg_with_uniform_weights():
    private, _ = fit(CentralDP(noise_multiplier=0.0, clip_norm=1e6))
    plain, _ = fit()
    assert max_abs_diff(float_state(private.net), float_state(plain.net)) <= 1e-6


class RecordingDP(CentralDP):
    """CentralDP that records the norm of every clipped update the strategy adds to the sum."""

    def clip(self, update):
        clipped, under = super().clip(update)
        self.norms = getattr(self, "norms", []) + [float(clipped.norm())]
        return clipped, under


def test_every_client_contribution_is_clipped_to_the_clip_norm():
    dp = RecordingDP(noise_multiplier=0.0, clip_norm=0.05)
    module, trainer = fit(dp, rounds=2)
    norms = trainer.strategy.privacy.norms
    assert len(norms) == 6 and max(norms) <= 0.05 * (1 + 1e-5) and min(norms) > 0.04  # all were clipped
    start = float_state(seeded_module(**MODULE).net)
    moved = torch.cat([(float_state(module.net)[k] - start[k]).flatten() for k in start]).norm()
    assert moved <= 2 * 0.05 + 1e-6  # two rounds, each moving the model by at most S


def test_noise_std_of_the_global_update_is_z_s_over_m():
    # lr = 0: every client's update is exactly zero, so the global change is pure noise / m.
    z, s, m = 2.0, 0.5, SETTINGS["clients_per_round"]
    start = float_state(seeded_module(**MODULE).net)
    module, trainer = fit(CentralDP(noise_multiplier=z, clip_norm=s), rounds=1, module=seeded_module(batchnorm=False, lr=0.0))
    change = torch.cat([(float_state(module.net)[k] - start[k]).flatten() for k in start])
    assert change.numel() > 150
    assert change.std().item() == pytest.approx(z * s / m, rel=0.2)
    assert abs(change.mean().item()) < 3 * z * s / m / change.numel() ** 0.5
    assert trainer.callback_metrics["fl/dp_noise_std"].item() == pytest.approx(z * s / m)


def test_logged_epsilon_equals_the_accountant_library_and_target_stops_in_time():
    z, rounds = 1.5, 3
    _, trainer = fit(CentralDP(noise_multiplier=z, clip_norm=1.0, delta=1e-3), rounds=rounds)
    direct = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    # Replacing one client's clipped update moves the sum by up to 2S: the library's multiplier is z/2.
    direct.compose(dpa.SampledWithoutReplacementDpEvent(6, 3, dpa.GaussianDpEvent(z / 2)), count=rounds)
    assert trainer.callback_metrics["fl/epsilon"].item() == pytest.approx(direct.get_epsilon(1e-3), rel=1e-6)
    # target_epsilon between the epsilon of round 2 and of round 3: training stops after round 2.
    two = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    two.compose(dpa.SampledWithoutReplacementDpEvent(6, 3, dpa.GaussianDpEvent(z / 2)), count=2)
    target = (two.get_epsilon(1e-3) + direct.get_epsilon(1e-3)) / 2
    _, stopped = fit(CentralDP(noise_multiplier=z, clip_norm=1.0, delta=1e-3, target_epsilon=target), rounds=5)
    assert stopped.current_epoch == 2 and stopped.callback_metrics["fl/epsilon"].item() <= target


def test_resume_is_exact_with_the_accountant_and_adaptive_clip(tmp_path):
    def dp():
        return CentralDP(noise_multiplier=1.0, clip_norm=0.1, target_quantile=0.5, count_noise_multiplier=1.0)

    straight, done = fit(dp(), rounds=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="r{epoch}",
                           auto_insert_metric_name=False)
    fit_in_process(FedAvgStrategy(**SETTINGS, privacy=dp()), seeded_module(**MODULE), TinyData(), 2,
                   callbacks=[ckpt], enable_checkpointing=True)
    resumed = seeded_module(**MODULE)
    trainer = fit_in_process(FedAvgStrategy(**SETTINGS, privacy=dp()), resumed, TinyData(), 4,
                             ckpt_path=str(tmp_path / "r1.ckpt"))
    assert max_abs_diff(float_state(straight.net), float_state(resumed.net)) == 0.0
    for key in ("fl/epsilon", "fl/dp_clip_norm"):
        assert trainer.callback_metrics[key].item() == done.callback_metrics[key].item()
    with pytest.raises(FederatedConfigError, match="trained without it"):
        ckpt2 = ModelCheckpoint(dirpath=tmp_path / "plain", every_n_epochs=1, filename="p")
        fit_in_process(FedAvgStrategy(**SETTINGS), seeded_module(**MODULE), TinyData(), 1, callbacks=[ckpt2],
                       enable_checkpointing=True)
        fit_in_process(FedAvgStrategy(**SETTINGS, privacy=dp()), seeded_module(**MODULE), TinyData(), 2,
                       ckpt_path=str(tmp_path / "plain" / "p.ckpt"))


@pytest.mark.distributed
def test_two_processes_hold_the_identical_noised_model(tmp_path):
    parts = {"privacy": ["CentralDP", {"noise_multiplier": 1.0, "clip_norm": 0.2}],
             "client_algorithm": ["FedProx", {"mu": 0.1}]}
    two = run_script(tmp_path, 2, SETTINGS, {"parts": parts, "module": MODULE, "rounds": 2})
    assert two["rank_spread"] == 0.0
    one, _ = fit(CentralDP(noise_multiplier=1.0, clip_norm=0.2), client_algorithm=FedProx(mu=0.1))
    assert max_abs_diff(net_state(two["state"]), float_state(one.net)) <= 1e-6


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(client_algorithm=Scaffold()), "client_algorithm=Scaffold also sends what privacy does not cover"),
        (dict(client_algorithm=FedNova()), "client_algorithm=FedNova also sends"),
        (dict(aggregator=Median()), "aggregator=Median.* is not a sum"),
    ],
)
def test_parts_privacy_cannot_serve_are_refused(kwargs, message):
    with pytest.raises(FederatedConfigError, match=message):
        FedAvgStrategy(privacy=CentralDP(noise_multiplier=1.0, clip_norm=1.0), **kwargs)
    FedAvgStrategy(privacy=CentralDP(noise_multiplier=1.0, clip_norm=1.0), aggregator=NormBound(1.0))  # composes


def test_a_budget_too_small_for_one_round_fails_at_setup():
    with pytest.raises(FederatedConfigError, match="privacy: CentralDP: stopping before round 1"):
        fit(CentralDP(noise_multiplier=0.5, clip_norm=1.0, target_epsilon=0.01), rounds=1)
