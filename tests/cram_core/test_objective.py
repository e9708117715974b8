import math
import typing
from dataclasses import replace

import pytest
import torch

from cram_core.config import ObjectiveConfig
from cram_core.objective import LOSSES, MASK_ID, NUM_SPECIAL_TOKENS, MLMObjective

VOCAB = 1000


def make_tokens(batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    # ordinary tokens only, so a [MASK] in the input can only come from masking
    g = torch.Generator().manual_seed(seed)
    return torch.randint(NUM_SPECIAL_TOKENS, VOCAB, (batch_size, seq_len), generator=g)


def run_mask(cfg: ObjectiveConfig, tokens: torch.Tensor, seed: int = 1):
    return MLMObjective(cfg, VOCAB).mask(tokens, torch.Generator().manual_seed(seed))


def selected_mask(positions: torch.Tensor, seq_len: int) -> torch.Tensor:
    return torch.zeros(positions.shape[0], seq_len, dtype=torch.bool).scatter_(1, positions, True)


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize(
    ("rate", "seq_len", "expected"), [(0.25, 128, 32), (0.15, 128, 19), (0.15, 4, 1), (0.01, 8, 1)]
)
def test_num_predictions(rate, seq_len, expected):
    assert MLMObjective(ObjectiveConfig(mask_rate=rate), VOCAB).num_predictions(seq_len) == expected


@pytest.mark.parametrize("split", [True, False])
def test_exact_count_per_sequence_and_unselected_unchanged(split):
    cfg = ObjectiveConfig(mask_rate=0.25, split_80_10_10=split)
    tokens = make_tokens(64, 128)
    out = run_mask(cfg, tokens)
    assert out.position_ids is None and out.input_ids.shape == tokens.shape
    assert out.positions.shape == (64, 32) and out.targets.shape == (64, 32)
    assert (out.positions.diff(dim=1) > 0).all(), "positions must be distinct and increasing"
    assert torch.equal(out.targets, tokens.gather(1, out.positions))
    chosen = selected_mask(out.positions, 128)
    assert (chosen.sum(dim=1) == 32).all()
    assert torch.equal(out.input_ids[~chosen], tokens[~chosen])


def test_split_off_masks_every_selected_token():
    out = run_mask(ObjectiveConfig(split_80_10_10=False), make_tokens(32, 128))
    assert (out.input_ids.gather(1, out.positions) == MASK_ID).all()
    assert (out.input_ids != MASK_ID).sum() == 32 * (128 - 32)


def test_80_10_10_proportions():
    tokens = make_tokens(512, 128)
    out = run_mask(ObjectiveConfig(mask_rate=0.25, split_80_10_10=True), tokens)
    seen = out.input_ids.gather(1, out.positions)
    is_mask = seen == MASK_ID
    unchanged = seen == out.targets
    replaced = ~is_mask & ~unchanged
    n = seen.numel()  # 16384 predictions: std of each fraction is ~0.003
    assert abs(is_mask.sum().item() / n - 0.8) < 0.015
    assert abs(replaced.sum().item() / n - 0.1) < 0.015
    assert abs(unchanged.sum().item() / n - 0.1) < 0.015
    assert (seen[replaced] >= NUM_SPECIAL_TOKENS).all() and (seen[replaced] < VOCAB).all()


def test_positions_cover_the_sequence_uniformly():
    out = run_mask(ObjectiveConfig(mask_rate=0.25), make_tokens(2048, 16))
    counts = torch.bincount(out.positions.flatten(), minlength=16).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.1


def test_seeded_generator_is_deterministic():
    cfg = ObjectiveConfig(token_drop=0.3)
    tokens = make_tokens(8, 64)
    a, b, c = run_mask(cfg, tokens, seed=5), run_mask(cfg, tokens, seed=5), run_mask(cfg, tokens, seed=6)
    for field in ("input_ids", "position_ids", "positions", "targets"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.positions, c.positions)


@pytest.mark.parametrize("drop", [0.1, 0.5, 0.9])
def test_token_drop_keeps_predictions_aligned(drop):
    seq_len, num_pred = 128, 32
    cfg = ObjectiveConfig(mask_rate=0.25, token_drop=drop)
    objective = MLMObjective(cfg, VOCAB)
    tokens = make_tokens(16, seq_len)
    out = run_mask(cfg, tokens)
    base = run_mask(replace(cfg, token_drop=0.0), tokens)
    expected_len = seq_len - round(drop * (seq_len - num_pred))
    assert objective.input_length(seq_len) == expected_len
    assert out.input_ids.shape == out.position_ids.shape == (16, expected_len)
    assert (out.position_ids.diff(dim=1) > 0).all() and out.position_ids.min() >= 0
    assert out.position_ids.max() < seq_len
    # the same tokens, corrupted the same way, just fewer of them
    assert torch.equal(out.input_ids, base.input_ids.gather(1, out.position_ids))
    assert torch.equal(out.targets, base.targets)
    original_positions = out.position_ids.gather(1, out.positions)
    assert torch.equal(original_positions, base.positions)
    assert torch.equal(tokens.gather(1, original_positions), out.targets)
    # only unselected tokens were dropped
    assert torch.equal(selected_mask(original_positions, seq_len).sum(dim=1), torch.full((16,), num_pred))


def test_token_drop_zero_is_baseline():
    tokens = make_tokens(8, 64)
    out = run_mask(ObjectiveConfig(token_drop=0.0), tokens)
    assert out.position_ids is None and out.input_ids.shape == (8, 64)
    # a rate too small to drop a single token leaves the batch exactly as without dropping
    tiny = run_mask(ObjectiveConfig(token_drop=0.001), tokens)
    assert tiny.position_ids is None and torch.equal(tiny.input_ids, out.input_ids)


def test_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        MLMObjective(ObjectiveConfig(), 5)
    with pytest.raises(ValueError, match="batch, seq_len"):
        run_mask(ObjectiveConfig(), make_tokens(2, 8)[0])


# ---------------------------------------------------------------- losses

LOGITS = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
TARGETS = [0, 2]


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def hand_loss(kind: str, gamma: float = 2.0, scale: float | None = None) -> float:
    per_prediction = []
    for row, t in zip(LOGITS, TARGETS):
        p, v = softmax(row), len(row)
        onehot = [1.0 if j == t else 0.0 for j in range(v)]
        s_mse, s_l1 = (math.sqrt(v), float(v)) if scale is None else (scale, scale)
        per_prediction.append({
            "cross-entropy": -math.log(p[t]),
            # the paper's: logits regressed onto a scaled one-hot
            "mse": sum((z - s_mse * y) ** 2 for z, y in zip(row, onehot)) / (2 * s_mse * v),
            "l1": sum(abs(z - s_l1 * y) for z, y in zip(row, onehot)) / math.sqrt(v),
            "mse-prob": sum((pj - yj) ** 2 for pj, yj in zip(p, onehot)),
            "l1-prob": sum(abs(pj - yj) for pj, yj in zip(p, onehot)),
            "focal": -((1 - p[t]) ** gamma) * math.log(p[t]),
        }[kind])
    return sum(per_prediction) / len(per_prediction)


def compute_loss(cfg: ObjectiveConfig, logits=None, targets=None) -> torch.Tensor:
    logits = torch.tensor([LOGITS]) if logits is None else logits  # [1, 2, 3]
    targets = torch.tensor([TARGETS]) if targets is None else targets
    return MLMObjective(cfg, VOCAB).loss(logits, targets)


def test_loss_registry_matches_config_choices():
    assert set(LOSSES) == set(typing.get_args(typing.get_type_hints(ObjectiveConfig)["loss"]))


@pytest.mark.parametrize("kind", list(LOSSES))
def test_loss_matches_hand_computation(kind):
    value = compute_loss(ObjectiveConfig(loss=kind, focal_gamma=2.0))
    assert value.dtype == torch.float32 and value.ndim == 0
    assert value.item() == pytest.approx(hand_loss(kind), rel=1e-5)


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_target_scale_sets_the_one_hot_height(kind):
    value = compute_loss(ObjectiveConfig(loss=kind, target_scale=10.0)).item()
    assert value == pytest.approx(hand_loss(kind, scale=10.0), rel=1e-5)
    assert value != pytest.approx(compute_loss(ObjectiveConfig(loss=kind)).item(), rel=1e-3)


def test_logit_losses_are_not_the_probability_ones():
    """Before: mse and l1 compared softmax probabilities with the one-hot (now mse-prob and l1-prob)."""
    logits, targets = torch.randn(3, 5, 50), torch.randint(0, 50, (3, 5))
    values = {k: compute_loss(ObjectiveConfig(loss=k), logits, targets).item() for k in LOSSES}
    assert len({round(v, 6) for v in values.values()}) == len(LOSSES), values
    # regression onto the target: raising the target logit to the target height zeroes its error term
    hit = logits.clone()
    hit.view(-1, 50)[torch.arange(15), targets.view(-1)] = math.sqrt(50)
    assert compute_loss(ObjectiveConfig(loss="mse"), hit, targets) < values["mse"]


@pytest.mark.parametrize("kind", list(LOSSES))
def test_loss_is_float32_with_finite_gradient(kind):
    logits = (torch.randn(4, 8, 64) * 30).to(torch.bfloat16).requires_grad_()
    value = compute_loss(ObjectiveConfig(loss=kind, focal_gamma=0.5), logits, torch.randint(0, 64, (4, 8)))
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(logits.grad.float()).all()


def test_focal_gamma_changes_loss_and_zero_is_cross_entropy():
    logits, targets = torch.randn(3, 5, 50), torch.randint(0, 50, (3, 5))
    ce = compute_loss(ObjectiveConfig(loss="cross-entropy"), logits, targets)
    focal0 = compute_loss(ObjectiveConfig(loss="focal", focal_gamma=0.0), logits, targets)
    focal2 = compute_loss(ObjectiveConfig(loss="focal", focal_gamma=2.0), logits, targets)
    assert torch.allclose(focal0, ce, rtol=1e-6, atol=0)
    assert focal2 < ce


def test_z_loss_adds_weighted_squared_log_partition():
    base = compute_loss(ObjectiveConfig(z_loss=0.0)).item()
    assert base == pytest.approx(hand_loss("cross-entropy"), rel=1e-6)
    lse_sq = sum(math.log(sum(math.exp(x) for x in row)) ** 2 for row in LOGITS) / len(LOGITS)
    for kind in ("cross-entropy", "mse"):
        with_z = compute_loss(ObjectiveConfig(loss=kind, z_loss=1e-2)).item()
        assert with_z - compute_loss(ObjectiveConfig(loss=kind)).item() == pytest.approx(1e-2 * lse_sq, rel=1e-4)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="cross-entropy, mse, l1, mse-prob, l1-prob, focal"):
        MLMObjective(ObjectiveConfig(loss="hinge"), VOCAB)  # type: ignore[arg-type]
