"""Checkpoints are plain data: state.pt loads with weights_only=True for every optimizer, wrapper and averager,
a crafted state.pt that would run code is refused before anything runs, and every bad --resume is one line
and exit 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cram_core import checkpoint as ckpt
from cram_core.averaging import WeightAverager
from cram_core.budget import BudgetClock
from cram_core.config import ConfigError, apply_overrides
from cram_core.data import TrainLoader
from cram_core.optim import OPTIMIZERS, WRAPPERS
from cram_core.presets import get_preset
from cram_core.train import build_parts, optimizer_step, train

REPO = Path(__file__).resolve().parents[2]
VOCAB = 96
TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=64", "model.max_seq_len=16",
        "data.seq_len=16", "train.micro_batch_size=4", "train.batch_size=4", "impl.compile=off", "impl.threads=1"]
# the trainer CLI run behind the checkpoint of the CLI tests (short: the tests only need a checkpoint)
RUN = ["data.max_documents=200", "budget.tokens=8192", "impl.threads=1", "train.log_every=2",
       "train.eval_sequences=16", "train.checkpoint_every=0.5"]


def _run_state(tmp_path: Path, overrides: list[str]) -> tuple[SimpleNamespace, Path]:
    cfg = apply_overrides(get_preset("tiny"), TINY + overrides)
    parts = build_parts(cfg, VOCAB)
    tokens = np.random.default_rng(0).integers(5, VOCAB, size=(16, 16)).astype(np.int32)
    loader = TrainLoader(tokens, np.arange(16), 4, parts.device)
    clock, averager = BudgetClock(cfg.budget), WeightAverager(cfg.train, parts.model)
    batch = torch.from_numpy(tokens[:4].astype(np.int64))
    for step in (1, 2):
        optimizer_step(parts, [batch], 1e-3)
        averager.update(parts.model, step, step / 2)
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    prepared = SimpleNamespace(vocab_size=VOCAB, tokenizer_path=tok)
    path = tmp_path / "ckpt"
    ckpt.save_training_state(path, parts, loader, clock, averager, 2, [7.0, 6.5], prepared)
    return SimpleNamespace(cfg=cfg, parts=parts, loader=loader, clock=clock, averager=averager), path


CASES = [[f"optim.name={n}"] for n in OPTIMIZERS] + [[f"optim.wrapper={w}"] for w in WRAPPERS if w != "none"] + [
    ["train.averaging=ema"], ["train.averaging=lawa"]]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: o[0])
def test_state_is_plain_data_and_resumes(tmp_path: Path, overrides: list[str]) -> None:
    run, path = _run_state(tmp_path, overrides)
    torch.load(path / "state.pt", weights_only=True)  # would raise on anything that needs pickle
    fresh = build_parts(run.cfg, VOCAB)
    loader = TrainLoader(np.zeros((16, 16), np.int32), np.arange(16), 4, fresh.device)
    averager = WeightAverager(run.cfg.train, fresh.model)
    step, losses = ckpt.load_training_state(path, fresh, loader, BudgetClock(run.cfg.budget), averager)
    assert (step, losses) == (2, [7.0, 6.5])
    for a, b in zip(run.parts.model.parameters(), fresh.model.parameters()):
        assert torch.equal(a, b)
    saved, loaded = run.parts.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys() and saved
    for k in saved:
        for name, value in saved[k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded[k][name])), (k, name)


class _Payload:
    """Unpickling this writes a file: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _craft(path: Path, marker: Path) -> None:
    state = torch.load(path / "state.pt", weights_only=True)
    state["losses"] = _Payload(marker)
    torch.save(state, path / "state.pt")


def test_crafted_state_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    run, path = _run_state(tmp_path, [])
    marker = tmp_path / "pwned"
    _craft(path, marker)
    before = [p.detach().clone() for p in run.parts.model.parameters()]
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        ckpt.load_training_state(path, run.parts, run.loader, run.clock, run.averager)
    assert not marker.exists()
    assert all(torch.equal(a, b) for a, b in zip(before, run.parts.model.parameters()))
    assert issubclass(ckpt.CheckpointError, ConfigError)  # the CLIs print it in one line, exit 2


def test_damaged_state_and_other_flags_are_checkpoint_errors(tmp_path: Path) -> None:
    run, path = _run_state(tmp_path, [])
    other = apply_overrides(run.cfg, ["optim.lr=0.0042"])
    with pytest.raises(ckpt.CheckpointError, match=rf"optim\.lr={run.cfg.optim.lr!r} there, 0\.0042 here"):
        ckpt.check_resumable(path, other)
    (path / "state.pt").write_bytes(os.urandom(4096))
    with pytest.raises(ckpt.CheckpointError, match="damaged"):
        ckpt.check_resumable(path, run.cfg)
    (path / "state.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="damaged"):
        ckpt.check_resumable(path, run.cfg)


# ---------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt-run") / "run"
    train(apply_overrides(get_preset("tiny"), RUN), out_dir=out, progress=False)
    return sorted((out / "checkpoints").iterdir())[0]


def _resume(resume: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "cram_core.train", "--preset", "tiny", "--quiet", "--out", str(out),
                           "--resume", str(resume), *RUN, *overrides], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


def _one_line_exit_2(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("case", ["other-flags", "random-bytes", "crafted"])
def test_cli_bad_resume_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, checkpoint_dir: Path,
                                                              case: str) -> None:
    resume = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir, resume)
    marker, overrides, needle = tmp_path / "pwned", [], "damaged"
    if case == "other-flags":
        overrides, needle = ["optim.lr=0.0042"], "other flags"
    elif case == "random-bytes":
        (resume / "state.pt").write_bytes(os.urandom(65536))
    else:
        _craft(resume, marker)
        needle = "refused"
    out = tmp_path / "out"
    _one_line_exit_2(_resume(resume, out, *overrides), needle)
    assert not out.exists() and not marker.exists()
