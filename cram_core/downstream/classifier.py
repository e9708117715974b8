"""A finished pretraining run (weights, config, tokenizer) and the sequence classifier built on its encoder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cram_core.checkpoint import load_model_weights
from cram_core.config import ConfigError, RunConfig
from cram_core.downstream.encoding import MAX_LENGTH
from cram_core.downstream.errors import DownstreamError
from cram_core.model import build_model

WEIGHT_FILES = {"model": "model.safetensors", "averaged": "model-averaged.safetensors"}


@dataclass(frozen=True)
class PretrainedRun:
    path: Path
    config: RunConfig
    vocab_size: int
    tokenizer_path: Path
    weights_path: Path

    @property
    def max_length(self) -> int:
        # positions beyond what pretraining saw have no (trained) embedding
        return min(MAX_LENGTH, self.config.model.max_seq_len)

    @property
    def pad_to(self) -> int | None:
        # Fourier mixing cannot honour a mask, so a sequence's output would depend on its batch-mates'
        # lengths; a fixed length (as FNet does) keeps predictions independent of batching
        return self.max_length if self.config.model.attention == "fourier" else None


def load_run(run_dir: str | Path, *, weights: str = "auto") -> PretrainedRun:
    """Validate a run directory. ``weights``: model | averaged | auto (averaged when the run saved them,
    since that is the state the trainer's own held-out loss was measured on)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise DownstreamError(f"run directory {path} does not exist")
    if weights not in ("auto", *WEIGHT_FILES):
        raise DownstreamError(f"unknown weights choice {weights!r}; valid: auto, {', '.join(WEIGHT_FILES)}")
    if weights == "auto":
        weights = "averaged" if (path / WEIGHT_FILES["averaged"]).is_file() else "model"
    needed = ("config.json", "tokenizer.json", WEIGHT_FILES[weights])
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise DownstreamError(f"run directory {path} lacks {', '.join(missing)} (not a finished training run?)")
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        vocab_size = int(raw.pop("vocab_size"))
        config = RunConfig.from_dict(raw)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, ConfigError) as e:
        raise DownstreamError(f"{path / 'config.json'}: not a usable run config ({e})") from None
    return PretrainedRun(path, config, vocab_size, path / "tokenizer.json", path / WEIGHT_FILES[weights])


class SequenceClassifier(nn.Module):
    """Pretrained encoder + BERT pooler (first token -> dense -> tanh) -> dropout -> linear."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, *, dropout: float = 0.1,
                 init_std: float = 0.02, generator: torch.Generator | None = None):
        super().__init__()
        self.encoder = encoder
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels)
        with torch.no_grad():
            for layer in (self.pooler, self.head):
                layer.weight.normal_(0.0, init_std, generator=generator)
                layer.bias.zero_()

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder.encode(input_ids, attention_mask=attention_mask)
        return torch.tanh(self.pooler(hidden[:, 0]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pooled(input_ids, attention_mask)))


def build_classifier(run: PretrainedRun, num_labels: int, *, dropout: float = 0.1, seed: int = 0) -> SequenceClassifier:
    """Encoder with the pretrained weights; dropout is on for fine-tuning even though pretraining ran
    without it (protocol), and layer drop is off (it is a pretraining regulariser only)."""
    model_cfg = dataclasses.replace(run.config.model, dropout=dropout, attention_dropout=dropout, layer_drop=0.0)
    encoder = build_model(model_cfg, run.vocab_size)
    try:
        load_model_weights(encoder, run.weights_path)
    except (ValueError, RuntimeError) as e:
        raise DownstreamError(f"{run.weights_path}: weights do not fit the config ({str(e).splitlines()[0]})") from None
    generator = torch.Generator().manual_seed(seed)
    return SequenceClassifier(encoder, model_cfg.hidden_size, num_labels, dropout=dropout,
                              init_std=model_cfg.init_std, generator=generator)
