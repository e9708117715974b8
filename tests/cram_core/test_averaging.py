import dataclasses
import math

import pytest
import torch
from torch import nn

from cram_core.averaging import WeightAverager
from cram_core.config import TrainConfig


class Tiny(nn.Module):
    """Tied weights (embedding = decoder) and an integer buffer, like the real model."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(5, 3)
        self.decoder = nn.Linear(3, 5, bias=False)
        self.decoder.weight = self.embedding.weight
        self.norm = nn.BatchNorm1d(3)  # floating running stats + integer num_batches_tracked


class Wrapper(nn.Module):
    """Stands in for torch.compile's OptimizedModule: same tensors, every name prefixed."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


FLOAT_KEYS = ("embedding.weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var")


def random_weights(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A random state for ``model``; tied names share one value, num_batches_tracked = seed."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            state[name] = torch.randn(value.shape, generator=gen).to(value.dtype)
        else:
            state[name] = torch.tensor(seed, dtype=value.dtype)
    state["decoder.weight"] = state["embedding.weight"]
    return state


LATE = 1000  # a step past the decay warm-up for every decay these tests use: d_t = decay there


def averager(model: nn.Module, **fields) -> WeightAverager:
    return WeightAverager(TrainConfig(**fields), model)


def assert_state(actual: dict, expected: dict, model: nn.Module) -> None:
    """``actual`` loads into ``model`` strictly, with the model's dtypes, and holds ``expected``'s values."""
    reference = model.state_dict()
    assert list(actual) == list(reference)
    for name, value in actual.items():
        assert value.dtype == reference[name].dtype, name
        torch.testing.assert_close(value.float(), expected[name].float(), rtol=1e-6, atol=1e-6, msg=name)
    model.load_state_dict(actual)


def test_none_is_a_no_op():
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    avg = averager(model, averaging="none")
    avg.update(model, step=1, p=0.5)
    assert avg.averaged_state_dict() is None
    assert avg.state_dict() == {"averaging": "none"}
    avg.load_state_dict({"averaging": "none"})
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def test_ema_matches_hand_computed_average():
    model = Tiny()
    w = [random_weights(model, seed) for seed in range(4)]
    model.load_state_dict(w[0])
    avg = averager(model, averaging="ema", ema_decay=0.9)
    for step in (1, 2, 3):
        model.load_state_dict(w[step])
        avg.update(model, step=LATE + step, p=step / 10)
    # ema_3 = d^3 w0 + d^2 (1-d) w1 + d (1-d) w2 + (1-d) w3 with d = 0.9
    expected = {
        name: 0.729 * w[0][name].float() + 0.081 * w[1][name] + 0.09 * w[2][name] + 0.1 * w[3][name]
        for name in (*FLOAT_KEYS, "decoder.weight")
    }
    expected["norm.num_batches_tracked"] = w[3]["norm.num_batches_tracked"]  # integers: the live value
    assert_state(avg.averaged_state_dict(), expected, model)


@pytest.mark.parametrize("decay, num_steps", [(0.999, 7), (0.999, 60), (0.5, 20)])
def test_ema_decay_warm_up_matches_the_closed_form(decay, num_steps):
    """Init at 0, then weights 1 from step 1 on: ema_n = 1 - prod_t min(decay, (1+t)/(10+t)).

    While the warm-up binds the product is 10! (n+1)! / (n+10)!; (1+t)/(10+t) reaches 0.5 at t = 8, so for
    decay 0.5 it is 10! 8! / 17! (steps 1..7) times 0.5 per later step.
    """
    model = Tiny()
    zeros = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    ones = {k: torch.ones_like(v) if v.is_floating_point() else v for k, v in zeros.items()}
    model.load_state_dict(zeros)
    avg = averager(model, averaging="ema", ema_decay=decay)
    model.load_state_dict(ones)
    for step in range(1, num_steps + 1):
        avg.update(model, step=step, p=step / num_steps)
    f = math.factorial
    if decay == 0.5:
        init_weight = f(10) * f(8) / f(17) * 0.5 ** (num_steps - 7)
    else:
        init_weight = f(10) * f(num_steps + 1) / f(num_steps + 10)
    value = avg.averaged_state_dict()["embedding.weight"]
    torch.testing.assert_close(value, torch.full_like(value, 1.0 - init_weight), rtol=0, atol=1e-6)
    assert init_weight < 0.2  # a fixed 0.999 would keep 0.993 (7 steps) and 0.94 (60 steps) of the init


def test_ema_decay_limits():
    model = Tiny()
    w0, w1, w2 = (random_weights(model, seed) for seed in range(3))
    model.load_state_dict(w0)
    no_memory = averager(model, averaging="ema", ema_decay=0.0)
    all_memory = averager(model, averaging="ema", ema_decay=1.0 - 1e-9)
    for w in (w1, w2):
        model.load_state_dict(w)
        no_memory.update(model, step=10**12, p=0.1)  # (1+t)/(10+t) > 1 - 1e-9 from t ~ 1e10 on
        all_memory.update(model, step=10**12, p=0.1)
    assert_state(no_memory.averaged_state_dict(), w2, model)
    assert_state(all_memory.averaged_state_dict(), {**w0, "norm.num_batches_tracked": w2["norm.num_batches_tracked"]},
                 model)


def test_ema_keeps_float32_copies_of_low_precision_weights():
    model = Tiny().to(torch.bfloat16)
    w0, w1 = random_weights(model, 0), random_weights(model, 1)
    model.load_state_dict(w0)
    avg = averager(model, averaging="ema", ema_decay=0.5)
    assert all(t.dtype == torch.float32 for t in avg.state_dict()["weights"].values())
    model.load_state_dict(w1)
    avg.update(model, step=LATE, p=0.1)
    expected = {k: (0.5 * w0[k].float() + 0.5 * w1[k].float()).to(torch.bfloat16) if k != "norm.num_batches_tracked"
                else w1[k] for k in w1}
    assert_state(avg.averaged_state_dict(), expected, model)


def test_averaged_state_dict_is_a_copy():
    model = Tiny()
    avg = averager(model, averaging="ema", ema_decay=0.5)
    first = avg.averaged_state_dict()
    snapshot = {k: v.clone() for k, v in first.items()}
    model.load_state_dict(random_weights(model, 1))
    avg.update(model, step=1, p=0.1)
    for name, value in first.items():
        assert torch.equal(value, snapshot[name])


def test_lawa_averages_exactly_the_last_k_snapshots():
    model = Tiny()
    avg = averager(model, averaging="lawa", lawa_every=0.25, lawa_k=2)
    # before any snapshot: the current weights
    w_now = random_weights(model, 99)
    model.load_state_dict(w_now)
    assert_state(avg.averaged_state_dict(), w_now, model)

    stored = {}
    for seed, p in enumerate((0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.99, 1.0)):
        w = random_weights(model, seed)
        model.load_state_dict(w)
        avg.update(model, step=seed + 1, p=p)
        stored[p] = w
        if p == 0.5:
            # two snapshots so far: those at p = 0.25 and 0.5 (0.1 and 0.3 crossed no multiple)
            mean = {k: (stored[0.25][k].float() + stored[0.5][k]) / 2 for k in (*FLOAT_KEYS, "decoder.weight")}
            assert_state(avg.averaged_state_dict(), {**mean, "norm.num_batches_tracked": w["norm.num_batches_tracked"]},
                         model)
    mean = {k: (stored[0.75][k].float() + stored[1.0][k]) / 2 for k in (*FLOAT_KEYS, "decoder.weight")}
    expected = {**mean, "norm.num_batches_tracked": stored[1.0]["norm.num_batches_tracked"]}
    assert_state(avg.averaged_state_dict(), expected, model)


def test_lawa_stores_once_per_multiple_despite_rounding():
    model = Tiny()
    avg = averager(model, averaging="lawa", lawa_every=0.05, lawa_k=20)
    weights = []
    p = 0.0
    for i in range(1, 21):
        w = random_weights(model, i)
        weights.append(w)
        model.load_state_dict(w)
        p += 0.05  # accumulates to 0.39999999999999997 at i = 8: p / 0.05 reads 7.999999999999999
        avg.update(model, step=i, p=p)
        avg.update(model, step=i, p=p)  # a second update at the same p stores nothing
    assert len(avg.state_dict()["snapshots"]) == 20
    mean = {k: sum(w[k].float() for w in weights) / 20 for k in (*FLOAT_KEYS, "decoder.weight")}
    expected = {**mean, "norm.num_batches_tracked": weights[-1]["norm.num_batches_tracked"]}
    assert_state(avg.averaged_state_dict(), expected, model)


def test_lawa_jump_over_several_multiples_stores_one_snapshot():
    model = Tiny()
    avg = averager(model, averaging="lawa", lawa_every=0.1, lawa_k=6)
    avg.update(model, step=1, p=0.55)
    assert len(avg.state_dict()["snapshots"]) == 1
    avg.update(model, step=2, p=0.59)
    assert len(avg.state_dict()["snapshots"]) == 1
    avg.update(model, step=3, p=0.6)
    assert len(avg.state_dict()["snapshots"]) == 2


@pytest.mark.parametrize("fields", [dict(averaging="ema", ema_decay=0.8),
                                    dict(averaging="lawa", lawa_every=0.2, lawa_k=3)])
def test_state_round_trip(fields):
    model = Tiny()
    avg = averager(model, **fields)
    for step in range(1, 6):
        model.load_state_dict(random_weights(model, step))
        avg.update(model, step=step, p=step * 0.15)
    state = avg.state_dict()

    fresh_model = Tiny()
    fresh_model.load_state_dict(model.state_dict())
    resumed = averager(fresh_model, **fields)
    resumed.load_state_dict(state)
    assert_state(resumed.averaged_state_dict(), avg.averaged_state_dict(), fresh_model)

    for step in range(6, 8):  # both continue identically after the resume
        w = random_weights(model, step)
        model.load_state_dict(w)
        fresh_model.load_state_dict(w)
        avg.update(model, step=step, p=step * 0.15)
        resumed.update(fresh_model, step=step, p=step * 0.15)
    assert_state(resumed.averaged_state_dict(), avg.averaged_state_dict(), fresh_model)


def test_load_state_from_another_kind_is_an_error():
    model = Tiny()
    state = averager(model, averaging="ema").state_dict()
    with pytest.raises(ValueError, match="averaging='ema'"):
        averager(model, averaging="lawa").load_state_dict(state)


def test_update_through_a_wrapper_with_prefixed_names():
    model = Tiny()
    w0, w1 = random_weights(model, 0), random_weights(model, 1)
    model.load_state_dict(w0)
    avg = averager(model, averaging="ema", ema_decay=0.5)
    model.load_state_dict(w1)
    avg.update(Wrapper(model), step=LATE, p=0.1)
    expected = {k: (w0[k].float() + w1[k]) / 2 for k in (*FLOAT_KEYS, "decoder.weight")}
    assert_state(avg.averaged_state_dict(), {**expected, "norm.num_batches_tracked": w1["norm.num_batches_tracked"]},
                 model)


def test_update_with_a_different_model_is_an_error():
    avg = averager(Tiny(), averaging="ema")
    with pytest.raises(ValueError, match="state entries"):
        avg.update(nn.Linear(2, 2), step=1, p=0.1)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="unknown averaging 'swa'; valid: none, ema, lawa"):
        WeightAverager(dataclasses.replace(TrainConfig(), averaging="swa"), Tiny())
    with pytest.raises(ValueError, match="lawa_every must be > 0"):
        averager(Tiny(), averaging="lawa", lawa_every=0.0)
