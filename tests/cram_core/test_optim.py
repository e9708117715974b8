import copy
import math
import typing

import pytest
import torch
from torch import nn

from cram_core.config import OptimConfig
from cram_core.optim import (
    OPTIMIZERS,
    WRAPPERS,
    adafactor_beta2_decay,
    build_optimizer,
    clip_grad_norm,
)

# learning rates at which each optimizer solves the toy problem in ~30 steps
TOY_LR = {"adamw": 1e-2, "adam": 1e-2, "radam": 3e-2, "sgd": 2e-2, "adafactor": 5e-2, "lion": 1e-2}
# LARS makes SGD's local LR lr * trust * ||w|| / ||g||, so SGD needs a larger global lr under it
TOY_LR_WRAPPED = {("sgd", "lars"): 0.1}
COMBOS = [(name, wrapper) for name in OPTIMIZERS for wrapper in WRAPPERS]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # toy-sized ops are slower with several threads, badly so when other processes share the cores
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class Toy(nn.Module):
    """Biases, a norm and an embedding, like the real model, at toy size."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 8)
        self.inp = nn.Linear(8, 32)
        self.norm = nn.LayerNorm(32)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        return self.out(torch.nn.functional.gelu(self.norm(self.inp(x + self.embed(kind))))).squeeze(-1)


def toy_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, kind = torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    y = x @ torch.randn(8, generator=g) + kind.float() - 1.5
    return x, kind, y


def make(name: str, wrapper: str = "none", seed: int = 0, **overrides) -> tuple[Toy, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Toy()
    cfg = OptimConfig(name=name, wrapper=wrapper, **{"lr": TOY_LR_WRAPPED.get((name, wrapper), TOY_LR[name]),
                                                      **overrides})
    return model, build_optimizer(cfg, model, fused=False)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, data) -> float:
    x, kind, y = data

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = (model(x, kind) - y).square().mean()
        loss.backward()
        return loss

    loss = closure()
    if optimizer.needs_closure:
        optimizer.step(closure)
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ---------------------------------------------------------------- registry and groups


def test_registries_match_config_choices():
    hints = typing.get_type_hints(OptimConfig)
    assert set(OPTIMIZERS) == set(typing.get_args(hints["name"]))
    assert set(WRAPPERS) == set(typing.get_args(hints["wrapper"]))


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="adamw, adam, radam, sgd, adafactor, lion"):
        build_optimizer(OptimConfig(name="shampoo"), Toy(), fused=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="none, lars, sam"):
        build_optimizer(OptimConfig(wrapper="lamb"), Toy(), fused=False)  # type: ignore[arg-type]


class WideNorm(nn.LayerNorm):
    """A norm whose gain is a matrix: excluded from decay by module type, not by shape."""


def test_param_groups_exclude_biases_norms_and_scalars():
    model = nn.ModuleDict({
        "embed": nn.Embedding(10, 4),
        "proj": nn.Linear(4, 4),
        "norm": nn.LayerNorm(4),
        "wide": WideNorm((2, 4)),
    })
    model.scale = nn.Parameter(torch.tensor(0.5))  # e.g. the scaled-sinusoidal scalar
    model.head = nn.Linear(4, 10, bias=False)
    model.head.weight = model.embed.weight  # tied: must appear once
    optimizer = build_optimizer(OptimConfig(weight_decay=0.1, lr=3e-3), model, fused=True)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model["embed"].weight), id(model["proj"].weight)}
    expected = [model["proj"].bias, model["norm"].weight, model["norm"].bias, model["wide"].weight,
                model["wide"].bias, model.scale]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected}
    assert all(g["initial_lr"] == 3e-3 == g["lr"] for g in optimizer.param_groups)
    assert optimizer.defaults["fused"] is None, "fused kernels only for CUDA parameters"
    assert optimizer.needs_closure is False


def test_adamw_decays_weights_but_not_biases_or_norms():
    model, optimizer = make("adamw", weight_decay=0.1, lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            torch.testing.assert_close(p, before[name] * (1 - 0.1 * 0.1))
        else:
            assert torch.equal(p, before[name]), name


def test_wrapper_shares_groups_with_base():
    _, optimizer = make("sgd", "lars")
    assert optimizer.param_groups is optimizer.base.param_groups
    optimizer.param_groups[0]["lr"] = 0.123
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert optimizer.param_groups is optimizer.base.param_groups
    assert optimizer.base.param_groups[0]["lr"] == 0.123
    assert optimizer.state is optimizer.base.state


# ---------------------------------------------------------------- every optimizer x wrapper


@pytest.mark.parametrize(("name", "wrapper"), COMBOS)
def test_one_step_changes_every_weight_matrix(name, wrapper):
    model, optimizer = make(name, wrapper)
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, optimizer, toy_data())
    for p, old in zip(model.parameters(), before):
        if p.ndim >= 2:
            assert not torch.equal(p, old)


@pytest.mark.parametrize(("name", "wrapper"), COMBOS)
def test_loss_falls_on_toy_regression(name, wrapper):
    model, optimizer = make(name, wrapper)
    data = toy_data()
    losses = [train_step(model, optimizer, data) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(("name", "wrapper"), COMBOS)
def test_state_dict_round_trip_continues_identically(name, wrapper):
    data = toy_data()
    model, optimizer = make(name, wrapper)
    for _ in range(3):
        train_step(model, optimizer, data)
    saved_model, saved_optim = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    for _ in range(3):
        train_step(model, optimizer, data)

    resumed, resumed_optim = make(name, wrapper, seed=1)
    resumed.load_state_dict(saved_model)
    resumed_optim.load_state_dict(saved_optim)
    for _ in range(3):
        train_step(resumed, resumed_optim, data)
    assert torch.equal(flat_params(resumed), flat_params(model))


FIELD_CHANGES = [
    ("adamw", "none", {"beta1": 0.5}),
    ("adamw", "none", {"beta2": 0.5}),
    ("adamw", "none", {"eps": 1e-1}),
    ("adamw", "none", {"weight_decay": 0.5}),
    ("adam", "none", {"weight_decay": 0.5}),
    ("radam", "none", {"weight_decay": 0.5}),
    ("sgd", "none", {"beta1": 0.5}),
    ("sgd", "none", {"nesterov": False}),
    ("adafactor", "none", {"beta2": 0.5}),
    ("adafactor", "none", {"eps": 1e-1}),
    ("adafactor", "none", {"weight_decay": 0.5}),
    ("lion", "none", {"beta1": 0.5}),
    ("lion", "none", {"beta2": 0.5}),
    ("lion", "none", {"weight_decay": 0.5}),
    ("sgd", "lars", {"lars_trust": 1e-3}),
    ("adamw", "sam", {"sam_rho": 0.5}),
]


@pytest.mark.parametrize(("name", "wrapper", "change"), FIELD_CHANGES)
def test_each_field_changes_the_trajectory(name, wrapper, change):
    data = toy_data()
    runs = []
    for overrides in ({}, change):
        model, optimizer = make(name, wrapper, **overrides)
        for _ in range(5):
            train_step(model, optimizer, data)
        runs.append(flat_params(model))
    assert not torch.allclose(runs[0], runs[1], rtol=0, atol=1e-6)


def test_adafactor_beta2_mapping():
    assert adafactor_beta2_decay(0.0) == 0.0
    assert adafactor_beta2_decay(0.98) == pytest.approx(-0.849, abs=1e-3)
    assert 1 - 100 ** adafactor_beta2_decay(0.999) == pytest.approx(0.999)


def test_sgd_nesterov_without_momentum_is_rejected():
    with pytest.raises(ValueError, match="beta1"):
        build_optimizer(OptimConfig(name="sgd", beta1=0.0, nesterov=True), Toy(), fused=False)


# ---------------------------------------------------------------- hand-computed steps


def test_lion_matches_hand_computed_steps():
    layer = nn.Linear(3, 1)
    cfg = OptimConfig(name="lion", lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.5)
    optimizer = build_optimizer(cfg, layer, fused=False)
    w0, b0 = torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([0.5])
    with torch.no_grad():
        layer.weight.copy_(w0)
        layer.bias.copy_(b0)
    g1, g2 = torch.tensor([[0.5, -2.0, 0.0]]), torch.tensor([[-0.001, 1.0, 3.0]])

    layer.weight.grad, layer.bias.grad = g1.clone(), torch.tensor([1.0])
    optimizer.step()
    w1 = w0 * (1 - 0.1 * 0.5) - 0.1 * torch.tensor([[1.0, -1.0, 0.0]])  # sign of (1 - beta1) * g1
    torch.testing.assert_close(layer.weight.detach(), w1)
    torch.testing.assert_close(layer.bias.detach(), b0 - 0.1)  # no decay on the bias

    layer.weight.grad = g2.clone()
    optimizer.step()
    # beta1 * m1 + (1 - beta1) * g2 = [0.0044, 0.082, 0.3]: the momentum outvotes g2's first sign
    w2 = w1 * (1 - 0.1 * 0.5) - 0.1 * torch.tensor([[1.0, 1.0, 1.0]])
    torch.testing.assert_close(layer.weight.detach(), w2)
    m2 = 0.99 * (0.01 * g1) + 0.01 * g2
    torch.testing.assert_close(optimizer.state[layer.weight]["exp_avg"], m2)


def _one_sgd_step(wrapper: str, **cfg) -> nn.Linear:
    layer = nn.Linear(2, 1)
    optimizer = build_optimizer(OptimConfig(name="sgd", wrapper=wrapper, lr=0.5, beta1=0.0, nesterov=False,
                                            **cfg), layer, fused=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
        layer.bias.fill_(1.0)
    layer.weight.grad = torch.tensor([[0.6, 0.8]])  # ||g|| = 1
    layer.bias.grad = torch.tensor([1.0])
    optimizer.step()
    assert [g["weight_decay"] for g in optimizer.param_groups] == [cfg["weight_decay"], 0.0]  # restored
    return layer


def test_lars_scales_the_local_lr_by_the_trust_ratio_with_weight_decay_folded_in():
    """LARC scaling mode (apex clip=False). Before: clip mode, min(1, trust ||w|| / (lr ||g||)), a no-op here."""
    lars = _one_sgd_step("lars", weight_decay=0.2, lars_trust=0.02)
    # g + wd w = [1.2, 1.6]; ratio = 0.02 * 5 / (1 + 0.2 * 5) = 0.05; w - lr * ratio * (g + wd w)
    torch.testing.assert_close(lars.weight.detach(), torch.tensor([[3.0 - 0.5 * 0.06, 4.0 - 0.5 * 0.08]]))
    plain = _one_sgd_step("none", weight_decay=0.2, lars_trust=0.02)
    torch.testing.assert_close(plain.weight.detach(), torch.tensor([[3.0 - 0.5 * 1.2, 4.0 - 0.5 * 1.6]]))
    for layer in (lars, plain):  # the bias is in the no_decay group: plain SGD
        torch.testing.assert_close(layer.bias.detach(), torch.tensor([0.5]))


def _default_run(wrapper: str, **cfg) -> torch.Tensor:
    torch.manual_seed(0)
    model = Toy()
    optimizer = build_optimizer(OptimConfig(wrapper=wrapper, **cfg), model, fused=False)
    data = toy_data()
    for _ in range(3):
        train_step(model, optimizer, data)
    return flat_params(model)


def test_lars_changes_the_update_at_the_defaults():
    """Before: parameters after 3 steps were bit-identical with and without LARS at the defaults."""
    torch.manual_seed(0)
    start = flat_params(Toy())
    plain, lars = _default_run("none"), _default_run("lars")
    assert (lars - plain).abs().max() > 0.1 * (plain - start).abs().max()


def test_lars_off_is_the_plain_optimizer():
    torch.manual_seed(0)
    model = Toy()
    optimizer = build_optimizer(OptimConfig(lars_trust=0.5), model, fused=False)
    assert type(optimizer) is torch.optim.AdamW
    torch.testing.assert_close(_default_run("none", lars_trust=0.5), _default_run("none"), rtol=0, atol=0)


def test_sam_step_uses_gradient_at_the_perturbed_point():
    curvature, rho, lr = torch.tensor([[1.0, 4.0]]), 0.05, 0.1
    outcomes = {}
    for wrapper in ("none", "sam"):
        layer = nn.Linear(2, 1, bias=False)
        cfg = OptimConfig(name="sgd", wrapper=wrapper, lr=lr, beta1=0.0, nesterov=False, weight_decay=0.0,
                          sam_rho=rho)
        optimizer = build_optimizer(cfg, layer, fused=False)
        with torch.no_grad():
            layer.weight.fill_(1.0)
        calls = []

        def closure() -> torch.Tensor:
            calls.append(layer.weight.detach().clone())
            layer.zero_grad()
            loss = 0.5 * (curvature * layer.weight.square()).sum()
            loss.backward()
            return loss

        closure()
        if optimizer.needs_closure:
            optimizer.step(closure)
        else:
            optimizer.step()
        outcomes[wrapper] = (layer.weight.detach().clone(), len(calls) - 1, calls[-1])

    w0 = torch.ones(1, 2)
    g0 = curvature * w0
    perturbed = w0 + rho * g0 / g0.norm()
    sam_weight, sam_calls, seen_by_closure = outcomes["sam"]
    assert sam_calls == 1
    torch.testing.assert_close(seen_by_closure, perturbed)
    torch.testing.assert_close(sam_weight, w0 - lr * curvature * perturbed)
    torch.testing.assert_close(outcomes["none"][0], w0 - lr * g0)
    assert not torch.allclose(sam_weight, outcomes["none"][0])


def test_sam_requires_a_closure():
    model, optimizer = make("adamw", "sam")
    assert optimizer.needs_closure is True
    with pytest.raises(ValueError, match="closure"):
        optimizer.step()


# ---------------------------------------------------------------- clipping


def test_clip_grad_norm_clips_and_reports_the_norm_before():
    model = nn.Linear(3, 2)
    model.weight.grad = torch.full((2, 3), 2.0)
    model.bias.grad = torch.full((2,), 2.0)
    norm = clip_grad_norm(model, max_norm=0.0)  # off: report only
    assert isinstance(norm, torch.Tensor) and norm.item() == pytest.approx(2.0 * math.sqrt(8))
    assert (model.weight.grad == 2.0).all()
    norm = clip_grad_norm(model, max_norm=0.5)
    assert norm.item() == pytest.approx(2.0 * math.sqrt(8))
    clipped = torch.cat([model.weight.grad.flatten(), model.bias.grad]).norm()
    assert clipped.item() == pytest.approx(0.5, rel=1e-4)


def test_clip_grad_norm_without_gradients_is_zero():
    assert clip_grad_norm(nn.Linear(3, 2), max_norm=1.0).item() == 0.0
