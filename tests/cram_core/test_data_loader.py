"""TrainLoader: order, wrap-around, epochs, determinism, exact resume (CPU path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cram_core.data import TrainLoader


@pytest.fixture
def tokens():
    # row r holds the values r * 10 + [0, 8): a batch's rows are readable from its first column
    return (np.arange(20, dtype=np.uint16)[:, None] * 10 + np.arange(8, dtype=np.uint16)).astype(np.uint16)


def rows(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0] // 10).tolist()


def test_batches_follow_indices_and_wrap_counting_epochs(tokens):
    indices = np.array([5, 3, 9, 1, 7])
    loader = TrainLoader(tokens, indices, micro_batch_size=2, device="cpu")
    first = loader.next()
    assert first.dtype == torch.long and first.shape == (2, 8) and first.device.type == "cpu"
    np.testing.assert_array_equal(first.numpy(), tokens[[5, 3]].astype(np.int64))
    assert [rows(loader.next()) for _ in range(3)] == [[9, 1], [7, 5], [3, 9]]
    assert loader.epoch == 1 and loader.position == 8
    loader.close()


def test_loader_is_deterministic_and_start_skips_ahead(tokens):
    indices = np.random.default_rng(0).permutation(20)
    a = TrainLoader(tokens, indices, 3, "cpu")
    b = TrainLoader(tokens, indices, 3, "cpu")
    seq_a = [rows(a.next()) for _ in range(15)]
    assert seq_a == [rows(b.next()) for _ in range(15)]
    late = TrainLoader(tokens, indices, 3, "cpu", start=9)
    assert [rows(late.next()) for _ in range(12)] == seq_a[3:]


def test_resume_from_state_dict_continues_identically(tokens):
    indices = np.arange(3, 17)
    loader = TrainLoader(tokens, indices, 4, "cpu")
    for _ in range(5):
        loader.next()
    state = loader.state_dict()
    expected = [rows(loader.next()) for _ in range(6)]
    fresh = TrainLoader(tokens, indices, 4, "cpu")
    fresh.next()  # its prefetched batch is for the wrong position and must be ignored
    fresh.load_state_dict(state)
    assert [rows(fresh.next()) for _ in range(6)] == expected
    rewound = loader
    rewound.load_state_dict(state)
    assert [rows(rewound.next()) for _ in range(6)] == expected
    with pytest.raises(ValueError, match="14 sequences"):
        TrainLoader(tokens, np.arange(5), 4, "cpu").load_state_dict(state)


def test_works_on_a_memmap_and_rejects_bad_indices(tmp_path, tokens):
    np.save(tmp_path / "t.npy", tokens)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    assert rows(TrainLoader(mm, np.array([2, 4]), 2, "cpu").next()) == [2, 4]
    with pytest.raises(ValueError):
        TrainLoader(mm, np.array([20]), 2, "cpu")
    with pytest.raises(ValueError):
        TrainLoader(mm, np.array([], dtype=np.int64), 2, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_match_cpu(tokens):
    indices = np.random.default_rng(1).permutation(20)
    cpu = TrainLoader(tokens, indices, 4, "cpu")
    gpu = TrainLoader(tokens, indices, 4, "cuda")
    for _ in range(12):
        batch = gpu.next()
        assert batch.is_cuda
        torch.testing.assert_close(batch.cpu(), cpu.next())
