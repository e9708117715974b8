"""Checkpoints: weights as safetensors, config JSON, tokenizer, and the training state needed to resume.

A resumed run continues identically (same batches, masks, dropout draws and budget accounting): we save
the optimizer, weight averager, budget clock, loader position, masking generator and torch RNG.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied embeddings): store each tensor once, contiguous, on CPU
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel():
            continue
        seen[key] = name
        out[name] = tensor.detach().cpu().contiguous()
    return out


def save_model(out: Path, model: torch.nn.Module, cfg: Any, prepared: Any,
               averaged: dict[str, torch.Tensor] | None = None) -> None:
    """Final artefacts: model.safetensors (+ model-averaged.safetensors), config.json, tokenizer.json."""
    out.mkdir(parents=True, exist_ok=True)
    weights = _weights(model)
    save_file(weights, str(out / "model.safetensors"))
    if averaged is not None:  # same keys as the live weights: tied copies stored once
        save_file({k: v.detach().cpu().contiguous() for k, v in averaged.items() if k in weights},
                  str(out / "model-averaged.safetensors"))
    (out / "config.json").write_text(json.dumps({**cfg.to_dict(), "vocab_size": prepared.vocab_size}, indent=2))
    shutil.copyfile(prepared.tokenizer_path, out / "tokenizer.json")


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    live = model.state_dict()
    # a tied tensor was stored under one name only: its other names count as loaded
    stored = {live[k].data_ptr() for k in state if k in live}
    tied = {n for n, t in live.items() if t.data_ptr() in stored}
    really_missing = [m for m in missing if m not in tied]
    if really_missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {really_missing}, unexpected {unexpected}")


def save_training_state(path: Path, parts: Any, loader: Any, clock: Any, averager: Any, step: int,
                        losses: list[float], prepared: Any) -> None:
    """Write a resumable checkpoint atomically (temp dir + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    try:
        save_model(tmp, parts.model, parts.cfg, prepared)
        torch.save(
            {
                "step": step,
                "losses": losses,
                "optimizer": parts.optimizer.state_dict(),
                "averager": averager.state_dict(),
                "clock": clock.state_dict(),
                "loader": loader.state_dict(),
                "generator": parts.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            tmp / "state.pt",
        )
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_training_state(path: Path, parts: Any, loader: Any, clock: Any, averager: Any) -> tuple[int, list[float]]:
    saved_cfg = json.loads((path / "config.json").read_text())
    saved_cfg.pop("vocab_size", None)
    if saved_cfg != parts.cfg.to_dict():
        raise ValueError(f"checkpoint {path} was written with a different config; resume with the same flags")
    load_model_weights(parts.model, path / "model.safetensors")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    parts.optimizer.load_state_dict(state["optimizer"])
    averager.load_state_dict(state["averager"])
    clock.load_state_dict(state["clock"])
    loader.load_state_dict(state["loader"])
    parts.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], list(state["losses"])
