"""The GPU preset search behind docs/results (issue: a preset that leaves the initial plateau within a budget
at which a 3-seed sweep fits in 20 minutes on one H200).

Every candidate trains for the same wall-clock seconds while four of them share the GPU (Ray packs 0.25 GPU
per trial), so each gets about a quarter of the GPU's time: the table compares candidates at roughly equal
GPU time, and its tokens/s column is what a trial sees when a sweep packs four per GPU.

    python -m sweeps run preset_search --sweeps-file docs/results/preset_search.py --preset crammed-bert-short \
        --seeds 1 --budget 100s --gpus-per-trial 0.25 --set "data.source=jsonl:$PWD/.devdata/corpus/*.jsonl.xz"
"""

from sweeps.definitions import Sweep


def shape(layers: int, hidden: int, batch: int, lr: float | None = None) -> dict:
    """A crammed-bert (pre-LN GLU) of this depth and width; heads of 64, FFN 4x, no batch ramp."""
    over = {"model.num_layers": layers, "model.hidden_size": hidden, "model.num_heads": hidden // 64,
            "model.ffn_size": 4 * hidden, "train.batch_size": batch, "train.micro_batch_size": batch}
    if lr is not None:
        over["optim.lr"] = lr
    return over


PRESET_SEARCH = Sweep(
    name="preset_search", section="training", axis="model size x batch for short GPU budgets", seeds=1,
    variants={
        "16x768 b128": shape(16, 768, 128),
        "8x768 b128": shape(8, 768, 128),
        "8x512 b256": shape(8, 512, 256),
        "8x512 b128": shape(8, 512, 128),
        "8x512 b128 lr 2e-3": shape(8, 512, 128, 2e-3),
        "4x512 b128": shape(4, 512, 128),
        "4x256 b64 lr 2e-3": shape(4, 256, 64, 2e-3),
    },
    note="baseline = crammed-bert-short (16x768, batch 512, ramp 0.3)",
)
