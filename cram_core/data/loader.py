"""Training loader: micro-batches of packed sequences in a fixed order, resumable exactly.

The batch at position p (sequences handed out so far, over all epochs) is a pure function of p:
``tokens[indices[(p + arange(B)) % len(indices)]]``. So the loader never shuffles, repeats itself
bit for bit, and resuming needs only p. A single background thread gathers (and on CUDA pins) the
next batch while the caller trains on the current one; the host-to-device copy is issued from the
caller's thread, on its current stream, so stream ordering is the usual single-threaded one.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch


class TrainLoader:
    def __init__(self, tokens: np.ndarray, indices: np.ndarray, micro_batch_size: int,
                 device: torch.device | str, start: int = 0):
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or len(indices) == 0:
            raise ValueError(f"indices must be a non-empty 1-D array, got shape {indices.shape}")
        if indices.min() < 0 or indices.max() >= len(tokens):
            raise ValueError(f"indices must lie in [0, {len(tokens)})")
        if micro_batch_size < 1 or start < 0:
            raise ValueError(f"micro_batch_size must be >= 1 and start >= 0, got {micro_batch_size}, {start}")
        self.tokens = tokens
        self.indices = indices
        self.micro_batch_size = micro_batch_size
        self.device = torch.device(device)
        self.position = start
        "sequences handed out so far, over all epochs"
        self._offsets = np.arange(micro_batch_size, dtype=np.int64)
        self._pin = self.device.type == "cuda"
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cram-loader")
        self._prefetched: tuple[int, Future] | None = None

    @property
    def epoch(self) -> int:
        """Completed passes over ``indices``."""
        return self.position // len(self.indices)

    def _gather(self, position: int) -> torch.Tensor:
        rows = self.indices[(position + self._offsets) % len(self.indices)]
        batch = torch.from_numpy(np.asarray(self.tokens[rows], dtype=np.int64))
        return batch.pin_memory() if self._pin else batch

    def next(self) -> torch.Tensor:
        """The next micro-batch, Long[B, seq_len] on ``device``."""
        if self._prefetched is not None and self._prefetched[0] == self.position:
            batch = self._prefetched[1].result()
        else:
            batch = self._gather(self.position)
        self.position += self.micro_batch_size
        self._prefetched = (self.position, self._worker.submit(self._gather, self.position))
        return batch.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "num_indices": len(self.indices),
                "micro_batch_size": self.micro_batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_indices"] != len(self.indices):
            raise ValueError(f"loader state is for {state['num_indices']} sequences, this loader has {len(self.indices)}")
        self.position = int(state["position"])  # a prefetched batch for another position is ignored

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._prefetched = None
