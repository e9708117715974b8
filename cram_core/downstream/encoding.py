"""Token ids for fine-tuning: ``[CLS] a [SEP] (b [SEP])`` from the run's tokenizer, and padded batches."""

from __future__ import annotations

from typing import Sequence

import torch

from cram_core.downstream.errors import DownstreamError

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_LENGTH = 128


class PairEncoder:
    """``[CLS] a [SEP] (b [SEP])`` from the run's tokenizer, truncated longest-first to ``max_length``."""

    def __init__(self, tokenizer_path: str | Path, max_length: int = MAX_LENGTH):
        from tokenizers import Tokenizer

        if max_length < 3:
            raise DownstreamError(f"max_length must be >= 3, got {max_length}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # the pretraining tokenizer may carry its own template, truncation or padding; the layout is ours
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        for expected, token in enumerate(SPECIAL_TOKENS):
            found = self.tokenizer.token_to_id(token)
            if found is not None and found != expected:
                raise DownstreamError(f"{tokenizer_path}: {token} has id {found}, the model expects {expected}")
        self.max_length = max_length

    def encode(self, texts: Sequence[tuple[str, ...]]) -> list[list[int]]:
        if not texts:
            return []
        n_fields = len(texts[0])
        if n_fields + 1 > self.max_length or any(len(t) != n_fields for t in texts):
            raise DownstreamError(f"every example needs the same number of text fields (<= {self.max_length - 1})")
        columns = [self.tokenizer.encode_batch([t[k] for t in texts], add_special_tokens=False)
                   for k in range(n_fields)]
        return [self._join([col[i].ids for col in columns]) for i in range(len(texts))]

    def _join(self, pieces: list[list[int]]) -> list[int]:
        budget = self.max_length - 1 - len(pieces)
        lengths = [len(p) for p in pieces]
        if len(pieces) == 1:
            lengths = [min(lengths[0], budget)]
        else:
            # longest-first: shorten whichever piece is longer, one token at a time (ties: the later one)
            while sum(lengths) > budget:
                k = max(range(len(lengths)), key=lambda i: (lengths[i], i))
                lengths[k] -= 1
        ids = [CLS_ID]
        for piece, n in zip(pieces, lengths):
            ids.extend(piece[:n])
            ids.append(SEP_ID)
        return ids


def collate(sequences: Sequence[Sequence[int]], pad_to: int | None = None, *, multiple: int = 1,
            limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with [PAD] to the batch's longest sequence (or to ``pad_to``), rounded up to ``multiple`` but
    not beyond ``limit``; the mask is True at real tokens. Rounding bounds the number of distinct batch shapes
    (one CUDA graph each) at the cost of a few pad tokens, which the encoder masks."""
    longest = max([len(s) for s in sequences] + [pad_to or 0])
    width = -(-longest // multiple) * multiple
    width = max(longest, min(width, limit)) if limit is not None else width
    ids = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = True
    return ids, mask


def length_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator, *,
                   window_batches: int = 50, granularity: int = 8) -> list[list[int]]:
    """One epoch's batches of example indices, bucketed by length: a seeded shuffle, then each window of
    ``window_batches`` batches sorted by length in steps of ``granularity`` tokens and cut into batches, then the
    batch order shuffled.

    Batch-mates have similar lengths, so padding each batch to its longest wastes little, while every example is
    still seen once per epoch, in batches drawn from a random window. Sorting by exact length would make batches
    one-label where length tracks the label (a pair task's longer hypotheses, a keyword that adds a token);
    within a step of ``granularity`` the shuffled order stays. Only the last batch can be short.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * window_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i] // granularity)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
