"""Rebuilding one data config gives byte-identical token arrays, for every tokenizer kind (issue 11, item 7).

The ``tokenizers`` trainers order by hash map, whose keys are random per process (and per map), so
the builds compared here run in separate processes with different PYTHONHASHSEED values.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cram_core.config import DataConfig
from cram_core.data import SPECIAL_TOKENS, tokenizer
from cram_core.data.tokenizer import initial_symbols, train_tokenizer


def _build(cache: Path, hash_seed: int, kind: str) -> subprocess.Popen:
    env = os.environ | {"CRAM_CACHE": str(cache), "PYTHONHASHSEED": str(hash_seed)}
    args = ["prepare", "--no-progress", f"data.tokenizer={kind}", "data.vocab_size=32768",
            "data.compressibility=none", "data.ordering=none"]
    return subprocess.Popen([sys.executable, "-m", "cram_core.data", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _tokens(cache: Path) -> np.ndarray:
    (entry,) = (cache / "data").iterdir()
    return np.load(entry / "tokens.npy")


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_two_builds_in_separate_processes_give_identical_arrays(tmp_path, kind):
    """Before: 3 WordPiece builds of the sample at 32768 shared only 3,536-5,400 (token, id) pairs."""
    caches = [tmp_path / "a", tmp_path / "b"]
    builds = [_build(cache, seed, kind) for cache, seed in zip(caches, (1, 2))]  # both at once: 2 cores
    for build in builds:
        _, err = build.communicate(timeout=300)
        assert build.returncode == 0, err
    first, second = (_tokens(c) for c in caches)
    assert first.shape == second.shape and first.tobytes() == second.tobytes()
    vocabs = [(next((c / "data").iterdir()) / "tokenizer.json").read_bytes() for c in caches]
    assert vocabs[0] == vocabs[1]


def _many_char_docs() -> list[str]:
    """Words over 60 letters whose frequencies tie in groups, so an alphabet limit cuts through a tie."""
    letters = [chr(0x3B1 + i) for i in range(20)] + [chr(0x430 + i) for i in range(30)] + list("abcdefghij")
    rng = np.random.default_rng(0)
    docs = []
    for d in range(40):
        words = ["".join(rng.choice(letters[: 10 + (i % 6) * 10], size=rng.integers(2, 7))) for i in range(60)]
        docs.append(" ".join(words))
    return docs


def test_alphabet_cut_is_by_count_then_code_point(monkeypatch):
    docs = _many_char_docs()
    monkeypatch.setattr(tokenizer, "ALPHABET_LIMIT", 25)
    cfg = DataConfig(vocab_size=400, lowercase=False, strip_accents=False)
    symbols = initial_symbols(docs, cfg)
    counts = {}
    for c in "".join(docs).replace(" ", ""):
        counts[c] = counts.get(c, 0) + 1
    expected = sorted(sorted(counts, key=lambda c: (-counts[c], c))[:25])
    assert symbols.alphabet == expected
    assert symbols.continuations == ["##" + c for c in expected]  # every letter occurs inside some word
    vocab = train_tokenizer(docs, cfg, progress=False).get_vocab()
    assert set(expected) <= set(vocab) and not {c for c in counts if c not in expected} & set(vocab)


def test_pinned_continuations_are_not_matched_in_text():
    """The '##x' symbols pinned for training stay vocabulary entries, not added tokens matched whole."""
    tok = train_tokenizer(["the theme of these themes is there " * 20], DataConfig(vocab_size=80), progress=False)
    assert [a.content for a in tok.get_added_tokens_decoder().values()] == list(SPECIAL_TOKENS)
    assert "##e" in tok.get_vocab()
    assert tok.encode("##e", add_special_tokens=False).tokens == ["[UNK]", "[UNK]", "e"]
