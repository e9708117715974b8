"""Masked-language-model objective: which tokens are predicted, what the model sees, and the loss.

Masking draws one uniform random permutation of each sequence's positions. Its first M entries are the
predicted positions (an exact count per sequence, so every batch has static shapes and the sparse MLM head
always sees [B, M]); with token dropping, the next D entries are the unselected tokens removed from the
input. Because both decisions come from the same permutation, a run with token dropping masks exactly the
same positions as the run without it, given the same generator state.

The 80/10/10 rule is applied per predicted position with an independent draw (classic BERT), not as an
exact count per sequence: exact counts would round to "all [MASK]" for short sequences (M < 5, e.g. under a
sequence-length curriculum) and so bias the rule by sequence length.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from cram_core.config import ObjectiveConfig

# Fixed for every tokenizer we train (docs/INTERFACES.md); the random-replacement range starts after them.
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
NUM_SPECIAL_TOKENS = 5

MASK_PROBABILITY = 0.8
"of the predicted positions: probability of showing [MASK]"
RANDOM_PROBABILITY = 0.1
"of the predicted positions: probability of showing a random non-special token (the rest stay unchanged)"

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"(logits float32 [N, V], targets long [N]) -> scalar mean over the N predictions"


@dataclass(slots=True)
class MaskedBatch:
    input_ids: torch.Tensor
    "[B, L'] token ids the model sees; L' = L minus the dropped tokens"
    position_ids: torch.Tensor | None
    "[B, L'] original position of each kept token (increasing); None when nothing is dropped"
    positions: torch.Tensor
    "[B, M] predicted positions as indices into input_ids (increasing within a row)"
    targets: torch.Tensor
    "[B, M] original tokens at the predicted positions"


# ---------------------------------------------------------------- losses (float32 logits [N, V], targets [N])


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets)


def _target_log_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(dim=-1).gather(1, targets[:, None]).squeeze(1)


def logit_mse_loss(logits: torch.Tensor, targets: torch.Tensor, *, scale: float | None) -> torch.Tensor:
    """The paper's MSE: the logits regressed onto ``scale`` x one-hot (Hui & Belkin 2021 with k = 1).

    Per prediction sum_j (z_j - s y_j)^2 / (2 s V), mean over predictions; s = sqrt(V) when ``scale`` is
    None, as in the paper's code. Expanded as sum_j z_j^2 - 2 s z_t + s^2 so no [N, V] one-hot is built
    (that would be 1 GB in int64 at N=4096, V=32768).
    """
    vocab = logits.shape[-1]
    s = math.sqrt(vocab) if scale is None else scale
    z_target = logits.gather(1, targets[:, None]).squeeze(1)
    return ((logits.square().sum(dim=-1) - 2.0 * s * z_target + s * s) / (2.0 * s * vocab)).mean()


def logit_l1_loss(logits: torch.Tensor, targets: torch.Tensor, *, scale: float | None) -> torch.Tensor:
    """The paper's L1: absolute error of the logits against ``scale`` x one-hot.

    Per prediction sum_j |z_j - s y_j| / sqrt(V), mean over predictions; s = V when ``scale`` is None, as in
    the paper's code. Expanded as sum_j |z_j| - |z_t| + |z_t - s| (no [N, V] one-hot).
    """
    vocab = logits.shape[-1]
    s = float(vocab) if scale is None else scale
    z_target = logits.gather(1, targets[:, None]).squeeze(1)
    per_prediction = logits.abs().sum(dim=-1) - z_target.abs() + (z_target - s).abs()
    return (per_prediction / math.sqrt(vocab)).mean()


def brier_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error of the softmax vs the one-hot target (Brier score), summed over the vocabulary, mean over
    predictions.

    Uses sum_j (p_j - y_j)^2 = sum_j p_j^2 - 2 p_t + 1 so no [N, V] one-hot is built. Summing over V keeps
    the loss O(1) like cross-entropy.
    """
    probs = logits.softmax(dim=-1)
    p_target = probs.gather(1, targets[:, None]).squeeze(1)
    return (probs.square().sum(dim=-1) - 2.0 * p_target + 1.0).mean()


def l1_prob_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Absolute error of the softmax vs the one-hot target, summed over the vocabulary, mean over predictions.

    Probabilities are non-negative and sum to one, so sum_j |p_j - y_j| = (1 - p_t) + (1 - p_t) exactly.
    """
    p_target = _target_log_prob(logits, targets).exp()
    return (2.0 * (1.0 - p_target)).mean()


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, *, gamma: float) -> torch.Tensor:
    """-(1 - p_t)^gamma log p_t (Lin et al. 2017), mean over predictions; gamma = 0 is cross-entropy."""
    log_p = _target_log_prob(logits, targets)
    # 1 - p_t can round to exactly 0 for a confident prediction, where x^gamma has an infinite slope for
    # gamma < 1; the clamp keeps the backward pass finite and moves the value by < 1e-38.
    one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)
    return -(one_minus_p.pow(gamma) * log_p).mean()


LOSSES: dict[str, Callable[[ObjectiveConfig], LossFn]] = {
    "cross-entropy": lambda cfg: cross_entropy_loss,
    "mse": lambda cfg: functools.partial(logit_mse_loss, scale=cfg.target_scale),
    "l1": lambda cfg: functools.partial(logit_l1_loss, scale=cfg.target_scale),
    "mse-prob": lambda cfg: brier_loss,
    "l1-prob": lambda cfg: l1_prob_loss,
    "focal": lambda cfg: functools.partial(focal_loss, gamma=cfg.focal_gamma),
}


# ---------------------------------------------------------------- the objective


class MLMObjective:
    def __init__(self, cfg: ObjectiveConfig, vocab_size: int) -> None:
        if cfg.loss not in LOSSES:
            raise ValueError(f"objective.loss: unknown loss {cfg.loss!r}; valid: {', '.join(LOSSES)}")
        if vocab_size <= NUM_SPECIAL_TOKENS:
            raise ValueError(f"vocab_size must exceed the {NUM_SPECIAL_TOKENS} special tokens, got {vocab_size}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self._loss_fn = LOSSES[cfg.loss](cfg)

    def num_predictions(self, seq_len: int) -> int:
        """M: exact number of predicted positions per sequence of length ``seq_len``."""
        return max(1, round(self.cfg.mask_rate * seq_len))

    def num_dropped(self, seq_len: int) -> int:
        """D: unselected tokens removed from each input sequence (token dropping)."""
        return round(self.cfg.token_drop * (seq_len - self.num_predictions(seq_len)))

    def input_length(self, seq_len: int) -> int:
        """L': length of the sequences the model sees, for FLOP and token accounting."""
        return seq_len - self.num_dropped(seq_len)

    def mask(self, tokens: torch.Tensor, generator: torch.Generator) -> MaskedBatch:
        """Select, corrupt and (optionally) drop tokens of ``tokens`` [B, L]; ``generator`` on tokens' device."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq_len], got shape {tuple(tokens.shape)}")
        batch_size, seq_len = tokens.shape
        num_pred, num_drop = self.num_predictions(seq_len), self.num_dropped(seq_len)
        scores = torch.rand(batch_size, seq_len, generator=generator, device=tokens.device)
        # stable: ties between equal floats resolve the same way on every run and device
        order = scores.argsort(dim=1, stable=True)  # [B, L] a uniform random permutation per row
        # increasing positions keep the model's gather of the M hidden states memory-ordered
        positions = order[:, :num_pred].sort(dim=1).values  # [B, M]
        targets = tokens.gather(1, positions)
        corrupted = tokens.scatter(1, positions, self._corrupt(targets, generator))
        if num_drop == 0:
            return MaskedBatch(input_ids=corrupted, position_ids=None, positions=positions, targets=targets)

        kept = torch.cat([positions, order[:, num_pred + num_drop :]], dim=1).sort(dim=1).values  # [B, L']
        is_kept = torch.zeros_like(tokens, dtype=torch.bool).scatter_(1, kept, True)
        new_index = is_kept.cumsum(dim=1) - 1  # [B, L] index in the shortened row, for the kept positions
        return MaskedBatch(
            input_ids=corrupted.gather(1, kept),
            position_ids=kept,
            positions=new_index.gather(1, positions),
            targets=targets,
        )

    def _corrupt(self, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What the model sees at the predicted positions."""
        if not self.cfg.split_80_10_10:
            return torch.full_like(targets, MASK_ID)
        draw = torch.rand(targets.shape, generator=generator, device=targets.device)
        random_ids = torch.randint(
            NUM_SPECIAL_TOKENS, self.vocab_size, targets.shape,
            generator=generator, device=targets.device, dtype=targets.dtype,
        )
        keep_or_random = torch.where(draw < MASK_PROBABILITY + RANDOM_PROBABILITY, random_ids, targets)
        return torch.where(draw < MASK_PROBABILITY, torch.full_like(targets, MASK_ID), keep_or_random)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over all B*M predictions of ``logits`` [B, M, V] (any float dtype), as float32."""
        flat = logits.float().reshape(-1, logits.shape[-1])
        flat_targets = targets.reshape(-1)
        value = self._loss_fn(flat, flat_targets)
        if self.cfg.z_loss > 0:
            # PaLM's z-loss: keeps the log-partition near 0 so bf16 logits don't drift
            value = value + self.cfg.z_loss * flat.logsumexp(dim=-1).square().mean()
        return value
