"""Corpus filters, applied before the final tokenizer is trained (Cramming, section 4.3).

Order: exact-duplicate removal (``dedup=exact`` or ``substring``), the compressibility filter, then
exact-substring deduplication (``dedup=substring``). The last two count tokens with a *filter
tokenizer*: same settings as the final one but always FILTER_VOCAB_SIZE entries, trained on the documents as read (after exact dedup, if
on) before any other filter, as the paper does.
Only for corpora beyond ``FILTER_TOKENIZER_CHARS`` characters is that tokenizer trained on a seeded
random subset of that size (a cheaper equivalent); the offline corpus (115 M characters) is below the
cap and so is filtered exactly as in the paper. The cap is generous on purpose: measured on the offline
corpus with WordPiece 32768 and t=0.25, a filter tokenizer trained on a 10% subset removed 2066
documents instead of 1796 (a less fitted vocabulary needs more tokens per character), a 25% subset 1919.

Substring dedup marks every token inside a window of ``dedup_min_tokens`` tokens that already occurred
earlier in the corpus (windows never span two documents) and cuts those tokens' characters out of the
text, so the first occurrence of a repeated span stays and later copies go, as in Lee et al. 2021
("Deduplicating training data makes language models better"). Lee et al. find the repeats with a
suffix array; since only windows of one fixed length matter, we group windows by a rolling-hash
fingerprint instead (built by doubling in log2(k) numpy passes, then one sort) and confirm every
candidate repeat token by token, so the result is exact (no pip package needed, ~10x faster than a
numpy prefix-doubling suffix sort).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cram_core.config import DataConfig
from cram_core.data.tokenizer import Ragged, encode_documents, train_tokenizer

FILTER_TOKENIZER_CHARS = 150_000_000
# The filter tokenizer always has the paper's vocabulary size, whatever data.vocab_size is: tokens per
# character grow as the vocabulary shrinks (the bundled sample's median is 0.22 at 32768 but 0.28 at
# 2048), so a threshold t only means the same thing across presets and vocabulary sweeps if it is
# measured with one reference vocabulary.
FILTER_VOCAB_SIZE = 32768


def apply_filters(docs: list[str], cfg: DataConfig, *, progress: bool) -> tuple[list[str], dict]:
    """The documents that pass ``cfg``'s filters (some shortened by substring dedup) and per-filter counts."""
    stats: dict[str, dict] = {}
    if cfg.dedup != "none":
        unique = list(dict.fromkeys(docs))  # keeps the first copy, in order
        stats["exact_dedup"] = _counts(len(docs), len(unique))
        docs = unique
    if cfg.compressibility is None and cfg.dedup != "substring":
        return docs, stats
    reference = dataclasses.replace(cfg, vocab_size=FILTER_VOCAB_SIZE)
    tok = train_tokenizer(filter_tokenizer_docs(docs, cfg.seed), reference, progress=progress)
    ragged = encode_documents(tok, docs, progress=progress, desc="encode for filters")
    if cfg.compressibility is not None:
        chars = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        keep = ragged.lengths < cfg.compressibility * chars
        stats["compressibility"] = _counts(len(docs), int(keep.sum())) | {"threshold": cfg.compressibility}
        docs = [d for d, k in zip(docs, keep) if k]
        ragged = ragged.select(keep)
    if cfg.dedup == "substring":
        docs, stats["substring_dedup"] = substring_dedup(docs, ragged, tok, cfg.dedup_min_tokens)
    return docs, stats


def _counts(before: int, kept: int) -> dict:
    return {"before": before, "kept": kept, "removed": before - kept}


def filter_tokenizer_docs(docs: list[str], seed: int) -> list[str]:
    """A seeded random subset of ``docs`` (in corpus order) of about FILTER_TOKENIZER_CHARS characters."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    if lengths.sum() <= FILTER_TOKENIZER_CHARS:
        return docs
    perm = np.random.default_rng(seed).permutation(len(docs))
    n = int(np.searchsorted(np.cumsum(lengths[perm]), FILTER_TOKENIZER_CHARS)) + 1
    return [docs[i] for i in np.sort(perm[:n])]


def substring_dedup(docs: list[str], ragged: Ragged, tok, min_tokens: int) -> tuple[list[str], dict]:
    """Cut later copies of every span of >= ``min_tokens`` tokens out of ``docs``; drop emptied docs."""
    drop = repeated_span_mask(ragged, min_tokens)
    doc_of = np.repeat(np.arange(len(ragged)), ragged.lengths)
    changed = np.flatnonzero(np.bincount(doc_of[drop], minlength=len(ragged)))
    # the id pass skipped character offsets; only the changed documents need them
    encodings = tok.encode_batch([docs[i] for i in changed], add_special_tokens=False)
    out = list(docs)
    for i, enc in zip(changed, encodings):
        doc_drop = drop[ragged.offsets[i] : ragged.offsets[i + 1]]
        assert len(enc.offsets) == len(doc_drop)  # same tokenizer, same text
        out[i] = _cut(docs[i], enc.offsets, doc_drop)
    kept = [d for d in out if d.strip()]
    stats = _counts(len(docs), len(kept)) | {
        "min_tokens": min_tokens, "documents_changed": len(changed), "tokens_removed": int(drop.sum()),
    }
    return kept, stats


def _cut(text: str, offsets: list[tuple[int, int]], drop: np.ndarray) -> str:
    """``text`` without the characters of each run of dropped tokens."""
    edges = np.diff(np.concatenate([[0], drop.astype(np.int8), [0]]))
    pieces, pos = [], 0
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        pieces.append(text[pos : offsets[a][0]])
        pos = offsets[b - 1][1]
    pieces.append(text[pos:])
    return "".join(pieces)


def repeated_span_mask(ragged: Ragged, k: int) -> np.ndarray:
    """Bool per token: inside a k-token window (within one document) that occurred earlier in the corpus."""
    flat, n = ragged.flat, len(ragged.flat)
    if n < k:
        return np.zeros(n, dtype=bool)
    doc_of = np.repeat(np.arange(len(ragged)), ragged.lengths)
    starts = np.flatnonzero(doc_of[: n - k + 1] == doc_of[k - 1 :])
    later, first = _later_occurrences(window_fingerprints(flat, k)[starts])
    same = np.ones(len(later), dtype=bool)
    for j in range(k):  # exact check, so a fingerprint collision can only keep text, never cut it
        same &= flat[starts[later] + j] == flat[starts[first] + j]
    dup = starts[later[same]]
    # +1 where a repeated window starts, -1 where it ends: positive running sum = covered token
    cover = np.bincount(dup, minlength=n + 1) - np.bincount(dup + k, minlength=n + 1)
    return np.cumsum(cover[:n]) > 0


def _later_occurrences(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices i whose key occurred at a smaller index, and for each the smallest index with that key."""
    order = np.argsort(keys)
    sorted_keys = keys[order]
    group_start = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    group_first = np.minimum.reduceat(order, group_start)
    first = np.repeat(group_first, np.diff(np.append(group_start, len(order))))
    later = order != first
    return order[later], first[later]


# Two primes below 2**31, so a residue times a residue fits in uint64; a pair of independent
# polynomial hashes has no systematic collisions (unlike one hash mod 2**64, which Thue-Morse
# sequences defeat), and the exact check above covers the chance ones.
_HASHES = ((2_147_483_629, 1_000_003), (2_147_483_587, 911_382_323))


def window_fingerprints(tokens: np.ndarray, k: int) -> np.ndarray:
    """uint64 fingerprint of each k-token window ``tokens[i:i+k]`` (i <= n-k); equal windows, equal keys."""
    high, low = (_window_hash(tokens, k, p, b) for p, b in _HASHES)
    return (high << np.uint64(31)) | low


def _window_hash(tokens: np.ndarray, k: int, p: int, b: int) -> np.ndarray:
    """sum_j tokens[i+j] * b**(k-1-j) mod p for every window, from hashes of power-of-two-length pieces:
    log2(k) vectorised passes instead of k."""
    n = len(tokens)
    assert 1 <= k <= n
    piece = tokens.astype(np.uint64) % np.uint64(p)  # hash of the 1-token window at every position
    width, acc, acc_len = 1, None, 0
    while True:
        if k & width:  # append this piece after the acc_len tokens hashed so far
            part = piece[acc_len : acc_len + n - k + 1]
            acc = part if acc is None else (acc * np.uint64(pow(b, width, p)) + part) % np.uint64(p)
            acc_len += width
        if 2 * width > k:
            return acc
        piece = (piece[:-width] * np.uint64(pow(b, width, p)) + piece[width:]) % np.uint64(p)
        width *= 2
