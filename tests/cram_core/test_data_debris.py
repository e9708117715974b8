"""A build killed mid-way leaves its temporary folder; the next prepare removes it (and only such debris)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cram_core.config import DataConfig
from cram_core.data import pipeline
from cram_core.data.sources import parse_sources

KEY = "0123456789abcdef0123"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _folder(root: Path, name: str, *, age_s: float = 0.0) -> Path:
    path = root / name
    (path / "part").mkdir(parents=True)
    (path / "part" / "tokens.npy").write_bytes(b"x" * 1000)
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def test_stale_builds_go_and_live_ones_stay(tmp_path: Path) -> None:
    host = socket.gethostname()
    dead = _folder(tmp_path, f".tmp-{KEY}-{_dead_pid()}@{host}-a1b2")
    live = _folder(tmp_path, f".tmp-{KEY}-{os.getpid()}@{host}-c3d4")  # a build running right now
    elsewhere = _folder(tmp_path, f".tmp-{KEY}-{_dead_pid()}@another-host-e5f6")  # can't tell: kept until old
    unnamed_old = _folder(tmp_path, f".tmp-{KEY}-g7h8", age_s=pipeline.STALE_BUILD_S + 60)
    unnamed_new = _folder(tmp_path, f".tmp-{KEY}-i9j0")
    trash_old = _folder(tmp_path, f".trash-{KEY}-123", age_s=pipeline.STALE_BUILD_S + 60)
    entry = _folder(tmp_path, KEY, age_s=pipeline.STALE_BUILD_S + 60)  # a finished cache entry, however old

    removed = pipeline.clean_stale_builds(tmp_path)

    assert sorted(removed) == sorted([dead, unnamed_old, trash_old])
    assert not dead.exists() and not unnamed_old.exists() and not trash_old.exists()
    assert live.exists() and elsewhere.exists() and unnamed_new.exists() and entry.exists()
    assert pipeline.clean_stale_builds(tmp_path / "no-cache-yet") == []


def test_prepare_names_its_build_by_pid_and_cleans_debris_first(tmp_path: Path, monkeypatch) -> None:
    cfg = DataConfig(cache_dir=str(tmp_path))
    root = pipeline.cache_root(cfg)
    key = pipeline.cache_key(cfg, parse_sources(cfg.source))
    debris = _folder(root, f".tmp-{key}-{_dead_pid()}@{socket.gethostname()}-zz99")
    seen = []

    def killed_build(cfg, sources, out, *, progress):
        seen.append(out.name)
        assert not debris.exists()  # cleaned before this build started
        raise KeyboardInterrupt  # as a kill would stop it; the folder name is what the next prepare reads

    monkeypatch.setattr(pipeline, "build", killed_build)
    with pytest.raises(KeyboardInterrupt):
        pipeline.prepare(cfg, progress=False)
    assert seen and seen[0].startswith(f".tmp-{key}-{os.getpid()}@{socket.gethostname()}-")
    assert pipeline._build_owner(seen[0]) == (os.getpid(), socket.gethostname())
    assert not any(root.glob(".tmp-*"))  # an interrupted build removes its own folder
