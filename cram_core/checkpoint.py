"""Checkpoints: weights as safetensors, config JSON, tokenizer, and the training state needed to resume.

A resumed run continues identically (same batches, masks, dropout draws and budget accounting): we save
the optimizer, weight averager, budget clock, loader position, masking generator and torch RNG.

``state.pt`` holds only tensors, numbers, strings and containers of them, and is read with
``torch.load(weights_only=True)``: unpickling arbitrary objects would let a crafted checkpoint handed to
``--resume`` run code. Anything that is not plain data belongs in JSON (config.json) or safetensors.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cram_core.config import ConfigError

STATE_KEYS = ("step", "losses", "optimizer", "averager", "clock", "loader", "generator", "torch_rng",
              "cuda_rng")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed from (other flags, missing or damaged files); one line."""


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
                        losses: list[float], prepared: Any, dropout_states: list[dict[str, Any]] | None = None) -> None:
    """Write a resumable checkpoint atomically (temp dir + rename); ``dropout_states``: one per
    data-parallel rank (`Ranks.dropout_states`), else this process's."""
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
                "scaler": parts.scaler.state_dict(),  # fp16 loss scale (plain numbers); {} otherwise
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "dropout_states": dropout_states or parts.ranks.dropout_states(),
            },
            tmp / "state.pt",
        )
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for group in sorted(set(saved) | set(current)):
        old, new = saved.get(group), current.get(group)
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{group}.{k}={old.get(k)!r} there, {new.get(k)!r} here" for k in sorted(set(old) | set(new))
                    if old.get(k) != new.get(k)]
        elif old != new:
            out.append(f"{group}={old!r} there, {new!r} here")
    return out


def check_resumable(path: Path, cfg: Any) -> None:
    """Raise CheckpointError unless ``path`` is a checkpoint folder written with exactly ``cfg``.

    Cheap (config.json, and state.pt memory-mapped, so its tensors are not read), so the CLI calls it before
    preparing data or creating ``--out``.
    """
    for name in ("state.pt", "config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise CheckpointError(f"--resume {path}: not a checkpoint folder (no {name}; expected "
                                  "OUT/checkpoints/step-NNNNNNN)")
    try:
        saved = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"--resume {path}: config.json cannot be read ({_one_line(e)})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"--resume {path}: config.json is not a config object")
    saved.pop("vocab_size", None)
    diffs = _config_differences(saved, cfg.to_dict())
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise CheckpointError(f"--resume {path} was written with other flags: {'; '.join(diffs[:3])}{more}; "
                              "resume with the checkpoint's flags")
    _read_state(path / "state.pt", mmap=True)


def _read_state(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:  # a pickle of something other than plain data: never run it
        raise CheckpointError(f"--resume: {path} holds objects other than tensors and plain data, refused "
                              f"({_one_line(e)})") from None
    except Exception as e:  # truncated, not a torch file, wrong magic number, ...
        raise CheckpointError(f"--resume: {path} is damaged or not a training state ({_one_line(e)})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"--resume: {path} is not a training state (missing {', '.join(missing)})")
    return state


def load_training_state(path: Path, parts: Any, loader: Any, clock: Any, averager: Any) -> tuple[int, list[float]]:
    """Restore a checkpoint into the run's parts; every problem with the folder is a CheckpointError.

    state.pt is read and checked before the model or optimizer is touched.
    """
    check_resumable(path, parts.cfg)
    state = _read_state(path / "state.pt")
    try:
        load_model_weights(parts.model, path / "model.safetensors")
        parts.optimizer.load_state_dict(state["optimizer"])
        averager.load_state_dict(state["averager"])
        clock.load_state_dict(state["clock"])
        loader.load_state_dict(state["loader"])
        parts.generator.set_state(state["generator"])
        parts.scaler.load_state_dict(state.get("scaler", {}))  # a no-op unless fp16
        torch.set_rng_state(state["torch_rng"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"--resume {path}: the checkpoint does not fit this run ({_one_line(e)})") from None
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if state.get("dropout_states"):  # per data-parallel rank; absent in checkpoints of earlier versions
        parts.ranks.restore_dropout(state["dropout_states"], parts.cfg.train.seed, state["step"])
    return state["step"], list(state["losses"])
