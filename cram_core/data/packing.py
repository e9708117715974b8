"""Packing: documents back to back, [SEP] between them, optional [CLS] before each, cut into blocks."""

from __future__ import annotations

import numpy as np

from cram_core.data.tokenizer import Ragged, SpecialIds


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (ids < 2**16), else int32: half the disk and page cache."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def pack(ragged: Ragged, order: np.ndarray, *, seq_len: int, add_sep: bool, add_cls: bool,
         dtype: np.dtype) -> np.ndarray:
    """[N, seq_len] blocks of the documents in ``order``; the ragged tail is dropped, nothing is padded."""
    cls = np.array([SpecialIds.CLS], dtype=np.int32)
    sep = np.array([SpecialIds.SEP], dtype=np.int32)
    parts = []
    for position, i in enumerate(order):
        if add_sep and position > 0:
            parts.append(sep)
        if add_cls:
            parts.append(cls)
        parts.append(ragged.doc(i))
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len).astype(dtype)
