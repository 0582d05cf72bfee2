"""The FedOpt family against references written from the papers' formulas (issue 8).

The references below re-derive every update by hand: FedProx's proximal term goes through autograd as
part of the loss, SCAFFOLD's and FedNova's updates and the adaptive server steps (Reddi et al. 2021,
Algorithm 2) are spelled out per tensor. They share with the strategy only the documented pure draws
(partition, client sample, straggler work, batch order, per-client seed), so both see the same batches.
"""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from fl_testing import TinyData, fit_in_process, float_state, max_abs_diff, net_state, run_script, seeded_module
from lightning_fl import (
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedAvgStrategy,
    FederatedConfigError,
    FedNova,
    FedProx,
    FedYogi,
    ParameterServerStrategy,
    Scaffold,
)
from lightning_fl.federated.client_algorithms import fednova_a
from lightning_fl.federated.partition import make_partition
from lightning_fl.federated.sampling import client_batches, num_client_steps, sample_clients, straggler_steps
from lightning_fl.federated.server_update import ServerUpdate
from lightning_fl.seeding import derive_seed

# Three unequal clients (Dirichlet), all of them each round, one local epoch: clients run different
# numbers of local steps, which is where FedNova and SCAFFOLD differ from FedAvg.
SETTINGS = dict(num_clients=3, clients_per_round=3, partition="dirichlet", alpha=0.5, seed=4)
BATCH, LR, ROUNDS = 16, 0.1, 2
MODULE = dict(batchnorm=False, lr=LR)


def data() -> TinyData:
    return TinyData(batch_size=BATCH)


# ---------------------------------------------------------------- references from the papers
def adaptive_server(rule: str, lr: float, beta1: float, beta2: float, tau: float):
    """Reddi et al. 2021, Algorithm 2, per tensor: m, v with v₀ = τ², no bias correction."""
    m: dict[str, torch.Tensor] = {}
    v: dict[str, torch.Tensor] = {}

    def step(x: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> None:
        for k, d in delta.items():
            m_prev = m.get(k, torch.zeros_like(d))
            v_prev = v.get(k, torch.full_like(d, tau * tau))
            if rule == "adagrad":
                m[k] = d
                v[k] = v_prev + d * d
            else:
                m[k] = beta1 * m_prev + (1 - beta1) * d
                if rule == "adam":
                    v[k] = beta2 * v_prev + (1 - beta2) * d * d
                else:  # yogi
                    v[k] = v_prev - (1 - beta2) * d * d * torch.sign(v_prev - d * d)
            x[k] = x[k] + lr * m[k] / (v[k].sqrt() + tau)

    return step


def momentum_server(lr: float, beta: float):
    """FedAvgM (Hsu et al. 2019): v ← β·v + Δ, x ← x + lr·v."""
    velocity: dict[str, torch.Tensor] = {}

    def step(x: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> None:
        for k, d in delta.items():
            velocity[k] = beta * velocity[k] + d if k in velocity else d.clone()
            x[k] = x[k] + lr * velocity[k]

    return step


def reference(
    algorithm: str = "fedavg",
    *,
    rounds: int = ROUNDS,
    mu: float = 0.0,
    server_lr: float = 1.0,
    server=None,
    local_steps: int | None = None,
    stragglers: float = 0.0,
    settings: dict = SETTINGS,
    gamma: float = 1.0,
    clip_norm: float | None = None,
    bf16: bool = False,
) -> dict[str, torch.Tensor]:
    net = seeded_module(**MODULE).net
    x_all, y_all = data().train_set.tensors
    n_clients, per_round, seed = settings["num_clients"], settings["clients_per_round"], settings["seed"]
    part = make_partition(settings["partition"], len(y_all), n_clients, seed, labels=y_all, alpha=settings["alpha"])
    x = {k: v.clone() for k, v in net.state_dict().items()}
    c = {k: torch.zeros_like(v) for k, v in x.items()}  # SCAFFOLD's server variate
    c_clients: dict[int, dict[str, torch.Tensor]] = {}
    for r in range(rounds):
        sampled = sample_clients(n_clients, per_round, seed, r)
        sizes = [len(part.client(cid)) for cid in sampled]
        steps = [num_client_steps(n, BATCH, False, 1, local_steps) for n in sizes]
        steps = straggler_steps(steps, sampled, stragglers, seed, r)
        total = sum(sizes)
        results = []
        for cid, n, k in zip(sampled, sizes, steps):
            net.load_state_dict(x)
            lr = LR * gamma**r  # a per-round ExponentialLR
            opt = torch.optim.SGD(net.parameters(), lr=lr)
            torch.manual_seed(derive_seed(seed, "client-rng", r, cid))
            c_i = c_clients.get(cid, {kk: torch.zeros_like(v) for kk, v in x.items()})
            for b in client_batches(part.client(cid), BATCH, k, False, seed, r, cid):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = nn.functional.cross_entropy(net(x_all[b]), y_all[b])
                if algorithm == "fedprox":  # F_k(w) + μ/2 ‖w − w_global‖², differentiated by autograd
                    loss = loss + mu / 2 * sum(((p - x[name]) ** 2).sum() for name, p in net.named_parameters())
                loss.backward()
                if algorithm == "scaffold":  # g − c_i + c
                    for name, p in net.named_parameters():
                        p.grad += c[name] - c_i[name]
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
                opt.step()
            y = {kk: v.detach().clone() for kk, v in net.state_dict().items()}
            results.append((cid, n, k, y, c_i))
        if algorithm == "scaffold":  # option II: c_i⁺ = c_i − c + (x − y_i)/(K η_l)
            delta_c = {kk: torch.zeros_like(v) for kk, v in x.items()}
            for cid, _n, k, y, c_i in results:
                new = {kk: c_i[kk] - c[kk] + (x[kk] - y[kk]) / (k * LR * gamma**r) for kk in x}
                for kk in x:
                    delta_c[kk] += new[kk] - c_i[kk]
                c_clients[cid] = new
        if algorithm == "fednova":  # d_i = (x − y_i)/τ_i, x ← x − τ_eff Σ p_i d_i, τ_eff = Σ p_i τ_i
            tau_eff = sum(n / total * k for _c, n, k, _y, _ci in results)
            delta = {kk: -tau_eff * sum(n / total * (x[kk] - y[kk]) / k for _c, n, k, y, _ci in results) for kk in x}
        else:
            delta = {kk: sum(n / total * (y[kk] - x[kk]) for _c, n, _k, y, _ci in results) for kk in x}
        if algorithm == "scaffold":
            delta = {kk: server_lr * d for kk, d in delta.items()}
            for kk in c:
                c[kk] = c[kk] + delta_c[kk] / n_clients  # c ← c + (|S|/N)·mean(c_i⁺ − c_i)
        if server is None:
            x = {kk: x[kk] + delta[kk] for kk in x}
        else:
            server(x, delta)
    return x


def run(client_algorithm=None, server_optimizer=None, rounds: int = ROUNDS, module=None, trainer=None, **overrides):
    module = module or seeded_module(**MODULE)
    kwargs = dict(SETTINGS, client_algorithm=client_algorithm, server_optimizer=server_optimizer)
    kwargs.update(overrides)
    fit_in_process(FedAvgStrategy(**kwargs), module, data(), rounds, **(trainer or {}))
    return float_state(module.net)


# ---------------------------------------------------------------- acceptance 1: against the formulas
@pytest.mark.parametrize(
    "factory,reference_step",
    [
        (FedAdagrad(lr=0.3, tau=0.05), adaptive_server("adagrad", 0.3, 0.0, 0.0, 0.05)),
        (FedAdam(lr=0.3, betas=(0.8, 0.9), tau=0.05), adaptive_server("adam", 0.3, 0.8, 0.9, 0.05)),
        (FedYogi(lr=0.3, betas=(0.8, 0.9), tau=0.05), adaptive_server("yogi", 0.3, 0.8, 0.9, 0.05)),
        (FedAvgM(lr=0.7, momentum=0.9), momentum_server(0.7, 0.9)),
    ],
    ids=["fedadagrad", "fedadam", "fedyogi", "fedavgm"],
)
def test_server_optimizers_follow_the_paper_recursion(factory, reference_step):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(5, generator=g)
    server = ServerUpdate(factory)
    server.bind(theta)
    ref = {"w": theta.clone()}
    for _ in range(4):
        average = ref["w"] + torch.randn(5, generator=g) * 0.5  # the clients' average model
        reference_step(ref, {"w": average - ref["w"]})
        server.step(average)
        assert torch.allclose(theta, ref["w"], atol=1e-6, rtol=0)


def test_fedprox_matches_its_objective_through_autograd():
    got = run(FedProx(mu=0.5))
    assert max_abs_diff(got, reference("fedprox", mu=0.5)) <= 1e-6


def test_scaffold_matches_algorithm_1_option_2():
    got = run(Scaffold(server_lr=0.8), rounds=3)
    ref = reference("scaffold", server_lr=0.8, rounds=3)
    assert max_abs_diff(got, ref) <= 1e-6
    # The variates matter: from round 2 on SCAFFOLD is not FedAvg.
    assert max_abs_diff(got, reference("fedavg", rounds=3, server=momentum_server(0.8, 0.0))) > 1e-4


def test_fednova_matches_normalized_averaging_with_unequal_local_work():
    got = run(FedNova(), stragglers=0.7)
    ref = reference("fednova", stragglers=0.7)
    assert max_abs_diff(got, ref) <= 1e-6
    assert max_abs_diff(got, reference("fedavg", stragglers=0.7)) > 1e-4  # unequal τ_i: not FedAvg


@pytest.mark.parametrize("name", ["fedadagrad", "fedadam", "fedyogi", "fedavgm"])
def test_server_optimizers_in_the_strategy_match_the_paper(name):
    parts = {
        "fedadagrad": (FedAdagrad(lr=0.05, tau=0.01), adaptive_server("adagrad", 0.05, 0, 0, 0.01)),
        "fedadam": (FedAdam(lr=0.05, betas=(0.9, 0.99), tau=0.01), adaptive_server("adam", 0.05, 0.9, 0.99, 0.01)),
        "fedyogi": (FedYogi(lr=0.05, betas=(0.9, 0.99), tau=0.01), adaptive_server("yogi", 0.05, 0.9, 0.99, 0.01)),
        "fedavgm": (FedAvgM(lr=1.0, momentum=0.9), momentum_server(1.0, 0.9)),
    }
    factory, ref_step = parts[name]
    assert max_abs_diff(run(server_optimizer=factory), reference(server=ref_step)) <= 1e-6


def test_fednova_a_is_the_sum_of_momentum_coefficients():
    for rho in (0.0, 0.5, 0.9):
        for tau in (1, 2, 7):
            series = sum(sum(rho**j for j in range(k + 1)) for k in range(tau))  # Σ_k Σ_{j≤k} ρ^j
            assert fednova_a(tau, rho) == pytest.approx(series, rel=1e-12)


def test_scaffold_with_momentum_sets_c_i_to_the_mean_gradient():
    # A linear loss has a constant gradient g: whatever the momentum and the learning-rate schedule,
    # the weighted mean of the client's gradients, hence c_i⁺ (from zero variates), is g.
    from lightning_fl.federated.client_algorithms import AlgorithmContext

    class MemoryStore:
        def __init__(self):
            self.saved = {}

        def load(self, cid):
            return self.saved.get(cid)

        def save(self, cid, t):
            self.saved[cid] = t.clone()

    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    g = torch.tensor([0.3, -0.1, 2.0])
    store = MemoryStore()
    algo = Scaffold()
    global_flat = w.detach().clone()
    algo.setup(AlgorithmContext([w], global_flat, 3, num_clients=4, open_store=lambda name, n: store))
    opt = torch.optim.SGD([w], lr=0.2, momentum=0.9, weight_decay=0.0)
    algo.client_start(1)
    for lr in (0.2, 0.1, 0.05, 0.05):
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        (w * g).sum().backward()
        algo.correct_gradients(None)
        opt.step()
        algo.after_step(opt)
    sums = {"scaffold/delta_c": torch.zeros(3)}
    algo.client_update(1, w.detach() - global_flat, 1.0, sums)
    assert torch.allclose(store.saved[1], g, atol=1e-6)
    assert torch.allclose(sums["scaffold/delta_c"], g, atol=1e-6)


# ---------------------------------------------------------------- what an unmodified module uses
ALGORITHMS = {"fedprox": lambda: FedProx(mu=0.5), "scaffold": lambda: Scaffold(), "fednova": lambda: FedNova()}
REFERENCE_ARGS = {"fedprox": dict(mu=0.5), "scaffold": {}, "fednova": {}}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_follows_an_lr_schedule_and_bf16_mixed(name):
    got = run(ALGORITHMS[name](), module=seeded_module(batchnorm=False, lr=LR, gamma=0.5), rounds=3,
              trainer=dict(precision="bf16-mixed"))
    ref = reference(name, rounds=3, gamma=0.5, bf16=True, **REFERENCE_ARGS[name])
    assert max_abs_diff(got, ref) <= 1e-6


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_gradient_clipping_sees_the_corrected_gradient(name):
    got = run(ALGORITHMS[name](), trainer=dict(gradient_clip_val=0.05))
    assert max_abs_diff(got, reference(name, clip_norm=0.05, **REFERENCE_ARGS[name])) <= 1e-6


class ElementwiseModule(type(seeded_module())):
    """A linear softmax model written with elementwise ops only, which autocast leaves in float32: under
    16-mixed with a power-of-two loss scale the training is then exactly the float32 one."""

    def __init__(self):
        super().__init__(batchnorm=False, lr=LR)
        self.net = nn.ParameterDict({"w": nn.Parameter(torch.randn(3, 6) * 0.3)})

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = (x.unsqueeze(1) * self.net["w"]).sum(-1)
        return -(logits.log_softmax(-1).gather(1, y[:, None])).mean()

    def validation_step(self, batch, batch_idx):
        pass


def test_fedprox_under_16_mixed_scales_its_gradient_like_the_loss():
    from lightning.pytorch.plugins.precision import MixedPrecision

    def fit(**trainer):
        torch.manual_seed(3)
        module = ElementwiseModule()
        fit_in_process(FedAvgStrategy(**SETTINGS, client_algorithm=FedProx(mu=5.0)), module, data(), 2, **trainer)
        return {"w": module.net["w"].detach().clone()}

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fp16 = fit(plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert scaler.get_scale() == 2.0**10  # no step was skipped, so the runs did the same steps
    assert max_abs_diff(fp16, fit()) <= 1e-6


@pytest.mark.parametrize("name", ["scaffold", "fednova"])
def test_step_counting_algorithms_refuse_16_mixed(name):
    from lightning.pytorch.plugins.precision import MixedPrecision

    with pytest.raises(FederatedConfigError, match="supports precision .* got '16-mixed'"):
        run(ALGORITHMS[name](), trainer=dict(plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]))


class ManualModule(type(seeded_module())):
    def __init__(self):
        super().__init__(batchnorm=False, lr=LR)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        x, y = batch
        self.manual_backward(nn.functional.cross_entropy(self.net(x), y))
        opt.step()


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_manual_optimization_gets_the_same_corrections(name):
    torch.manual_seed(1)
    got = run(ALGORITHMS[name](), module=ManualModule())
    assert max_abs_diff(got, reference(name, **REFERENCE_ARGS[name])) <= 1e-6


class TwoOptimizers(type(seeded_module())):
    def configure_optimizers(self):
        return [torch.optim.SGD(self.net[0].parameters(), lr=LR), torch.optim.SGD(self.net[-1].parameters(), lr=LR)]


def test_fednova_refuses_several_optimizers():
    torch.manual_seed(1)
    module = TwoOptimizers(batchnorm=False)
    module.automatic_optimization = False
    with pytest.raises(FederatedConfigError, match="FedNova counts one optimizer's local steps"):
        run(FedNova(), module=module)


# ---------------------------------------------------------------- acceptance 2: reductions
def test_fedprox_with_mu_zero_is_fedavg():
    assert max_abs_diff(run(FedProx(mu=0.0)), run()) == 0.0


def test_fednova_with_equal_local_steps_is_fedavg():
    assert max_abs_diff(run(FedNova(), local_steps=4), run(local_steps=4)) <= 1e-6


def test_fedavgm_with_momentum_zero_and_lr_one_is_fedavg():
    assert max_abs_diff(run(server_optimizer=FedAvgM(lr=1.0, momentum=0.0)), run()) <= 1e-6


def test_scaffold_first_round_from_zero_variates_is_fedavg_with_the_server_lr():
    got = run(Scaffold(server_lr=0.5), rounds=1)
    assert max_abs_diff(got, run(server_optimizer=FedAvgM(lr=0.5, momentum=0.0), rounds=1)) <= 1e-6


# ---------------------------------------------------------------- acceptance 3: processes and resume
COMPOSITIONS = {
    "fedprox+fedyogi": {"client_algorithm": ["FedProx", {"mu": 0.1}], "server_optimizer": ["FedYogi", {"lr": 0.05}]},
    "scaffold+fedavgm": {"client_algorithm": ["Scaffold", {}], "server_optimizer": ["FedAvgM", {"lr": 1.0}]},
    "fednova+fedadam": {"client_algorithm": ["FedNova", {}], "server_optimizer": ["FedAdam", {"lr": 0.05}]},
    "fedadagrad": {"server_optimizer": ["FedAdagrad", {"lr": 0.05}]},
}
DIST_SETTINGS = dict(num_clients=6, clients_per_round=4, partition="dirichlet", alpha=0.5, seed=2, stragglers=0.5)


def build(parts: dict) -> dict:
    import lightning_fl

    return {arg: getattr(lightning_fl, name)(**kw) for arg, (name, kw) in parts.items()}


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_two_processes_equal_one(tmp_path, name):
    settings = dict(DIST_SETTINGS, client_state_dir=str(tmp_path / "state"))
    two = run_script(tmp_path, 2, settings, {"parts": COMPOSITIONS[name], "module": MODULE, "rounds": 3})
    assert two["rank_spread"] == 0.0
    one = seeded_module(**MODULE)
    fit_in_process(FedAvgStrategy(**settings, **build(COMPOSITIONS[name])), one, TinyData(), 3)
    got = {k: v for k, v in net_state(two["state"]).items()}
    assert max_abs_diff(got, float_state(one.net)) <= 1e-5


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_resume_is_bit_exact_with_variates_and_server_state(tmp_path, name):
    def strategy():
        return FedAvgStrategy(**DIST_SETTINGS, client_state_dir=str(tmp_path / "live"), **build(COMPOSITIONS[name]))

    straight = seeded_module(**MODULE)
    fit_in_process(strategy(), straight, TinyData(), rounds=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="r{epoch}",
                           auto_insert_metric_name=False)
    fit_in_process(strategy(), seeded_module(**MODULE), TinyData(), rounds=3, callbacks=[ckpt],
                   enable_checkpointing=True)
    saved = torch.load(tmp_path / "r1.ckpt", weights_only=True)["lightning_fl"]
    if "Scaffold" in name:
        assert saved["client_state"] == ["scaffold_c"] and saved["client_algorithm_state"]["c"].abs().sum() > 0
        assert (tmp_path / "r1.ckpt.client_state" / "scaffold_c").is_dir()
        assert not (tmp_path / "live").exists() or not any((tmp_path / "live").iterdir())  # removed at the end
    resumed = seeded_module(**MODULE)
    fit_in_process(strategy(), resumed, TinyData(), rounds=4, ckpt_path=str(tmp_path / "r1.ckpt"))
    for key, value in float_state(straight).items():
        assert torch.equal(value, float_state(resumed)[key]), key


def test_scaffold_checkpoint_without_its_client_state_is_a_clear_error(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="r{epoch}",
                           auto_insert_metric_name=False)
    fit_in_process(FedAvgStrategy(**SETTINGS, client_algorithm=Scaffold(), client_state_dir=str(tmp_path / "s")),
                   seeded_module(**MODULE), data(), rounds=1, callbacks=[ckpt], enable_checkpointing=True)
    import shutil

    shutil.rmtree(tmp_path / "r0.ckpt.client_state")
    with pytest.raises(FederatedConfigError, match="per-client state directory"):
        fit_in_process(FedAvgStrategy(**SETTINGS, client_algorithm=Scaffold()), seeded_module(**MODULE), data(),
                       rounds=2, ckpt_path=str(tmp_path / "r0.ckpt"))
    with pytest.raises(FederatedConfigError, match="client_algorithm=Scaffold, this run uses client_algorithm=None"):
        fit_in_process(FedAvgStrategy(**SETTINGS), seeded_module(**MODULE), data(), rounds=2,
                       ckpt_path=str(tmp_path / "r0.ckpt"))


def test_scaffold_variates_stay_on_disk_one_file_per_client_that_trained(tmp_path):
    strategy = FedAvgStrategy(num_clients=12, clients_per_round=2, seed=1, client_algorithm=Scaffold(),
                              client_state_dir=str(tmp_path))
    trainer = fit_in_process(strategy, seeded_module(**MODULE), data(), rounds=2)
    per_client = 4 * sum(p.numel() for p in seeded_module(**MODULE).parameters())
    stored = trainer.callback_metrics["fl/client_state_bytes"].item()
    trained = {c for r in range(2) for c in sample_clients(12, 2, 1, r)}
    assert per_client * len(trained) <= stored <= (per_client + 2048) * len(trained)


# ---------------------------------------------------------------- heterogeneous work and registered names
def test_local_steps_and_stragglers_change_the_work_per_client():
    trainer = fit_in_process(FedAvgStrategy(**SETTINGS, local_steps=5, stragglers=1.0), seeded_module(**MODULE),
                             data(), rounds=1)
    steps = [job.num_steps for job in trainer.strategy.current_plan.jobs]
    assert len(steps) == 3 and all(1 <= s <= 5 for s in steps) and len(set(steps)) > 1


@pytest.mark.parametrize(
    "name,part",
    [("fedprox", "client_algorithm"), ("scaffold", "client_algorithm"), ("fednova", "client_algorithm"),
     ("fedavgm", "server_optimizer"), ("fedadam", "server_optimizer"), ("fedyogi", "server_optimizer"),
     ("fedadagrad", "server_optimizer")],
)
def test_registered_names_select_the_part(name, part):
    import lightning as L

    for suffix, start in (("", "popen"), ("_spawn", "spawn")):
        strategy = L.Trainer(strategy=name + suffix, accelerator="cpu", devices=1, logger=False).strategy
        assert isinstance(strategy, FedAvgStrategy) and strategy._start_method == start
        chosen = strategy.client_algorithm if part == "client_algorithm" else strategy.server.optimizer_factory
        assert type(chosen).__name__.lower() == name


# ---------------------------------------------------------------- acceptance 6: bad settings
@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: FedProx(mu=-0.1), "FedProx: mu must be >= 0"),
        (lambda: Scaffold(server_lr=0), "Scaffold: server_lr must be > 0"),
        (lambda: FedAdam(tau=0), "FedAdam: tau must be > 0"),
        (lambda: FedYogi(tau=-1), "FedYogi: tau must be > 0"),
        (lambda: FedAdagrad(tau=0.0), "FedAdagrad: tau must be > 0"),
        (lambda: FedAdam(betas=(0.9, 1.0)), r"FedAdam: betas\[1\] must be in \[0, 1\)"),
        (lambda: FedYogi(betas=(-0.1, 0.9)), r"FedYogi: betas\[0\] must be in \[0, 1\)"),
        (lambda: FedAvgM(momentum=1.5), r"FedAvgM: momentum must be in \[0, 1\)"),
        (lambda: FedAvgStrategy(local_steps=0), "local_steps must be an integer >= 1"),
        (lambda: FedAvgStrategy(stragglers=1.5), r"stragglers must be a share of clients in \[0, 1\]"),
        (lambda: FedAvgStrategy(client_algorithm="fedprox"), "client_algorithm must be None, FedProx"),
        (lambda: ParameterServerStrategy(client_algorithm=FedProx()), "client_algorithm"),
    ],
)
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises(FederatedConfigError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


class AdamModule(type(seeded_module())):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


@pytest.mark.parametrize("algorithm", [Scaffold(), FedNova()])
def test_client_algorithms_refuse_optimizers_they_cannot_follow(algorithm):
    torch.manual_seed(0)
    with pytest.raises(FederatedConfigError, match=f"client_algorithm={algorithm.name} needs torch.optim.SGD"):
        fit_in_process(FedAvgStrategy(**SETTINGS, client_algorithm=copy.deepcopy(algorithm)), AdamModule(), data(), 1)
