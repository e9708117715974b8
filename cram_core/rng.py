"""Random-number streams of one run, one per purpose, all derived from ``train.seed``.

Trials of a sweep that share a seed should share everything random that is not the variant (common random
numbers), so that a variant is compared with the baseline on the same draws. One global stream would not do
that: a variant that draws more numbers in one place (an extra layer's weights) shifts every later draw
(the head's weights, the first dropout mask). So each purpose has its own stream, and each parameter its
own generator, seeded from (train.seed, purpose):

- ``init:<parameter name>``: that parameter's initial values. Same name and shape => same values,
  whatever else the architecture adds or removes.
- ``masks``: which tokens are masked and how they are corrupted (the objective's generator).
- ``dropout``: torch's global generator during training (dropout, attention dropout, layer drop; torch
  offers no per-call generator for these).

Data order is no stream: the loader reads the packed sequences in the order the data config fixes
(``data.ordering``, ``data.seed``), so every variant of a data-unchanged sweep sees the same batches.
"""

from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose``'s stream; distinct purposes give unrelated streams."""
    digest = hashlib.blake2b(f"{seed}\x00{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(seed: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stream_seed(seed, purpose))
