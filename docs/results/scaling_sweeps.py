"""The scaling sweep behind docs/results (issue 14: one real scaling sweep on the H200, 3 budgets x 3 seeds).

`mlp_scaling` is the `mlp` sweep's baseline (GLU with GELU) and its plain GELU MLP, which spends fewer FLOPs
per token: under a FLOP budget it sees more tokens for the same compute. The paper reads most changes as a
trade of speed against tokens that leaves loss per unit of compute alone; several budgets tell a variant
that is behind at one budget from one that falls further behind (or catches up) as compute grows.

The overrides are the `mlp` sweep's own dicts, looked up rather than copied, so both variants hash like the
`mlp` sweep's trials and `sweeps run` reuses those it already finished (at the middle budget, 80M tokens of
the baseline, which is `mlp`'s default on gpu-sweep). The data source must be the --set string `mlp` ran
with, character for character: it is part of every config hash.

    python -m sweeps run mlp_scaling --sweeps-file docs/results/scaling_sweeps.py --preset gpu-sweep --seeds 3 \
        --budgets 5.475e15flop,7.3e15flop,1.46e16flop --gpus-per-trial 0.25 --set "data.source=$CORPUS" \
        --store .devdata/results.db
    python -m analysis scaling mlp_scaling --store .devdata/results.db --out docs/results
"""

from sweeps.definitions import Sweep, get_sweep

PLAIN_GELU = "plain MLP (GELU)"

MLP_SCALING = Sweep(
    name="mlp_scaling", section="architecture", axis="MLP gating, across FLOP budgets",
    variants={PLAIN_GELU: get_sweep("mlp").variants[PLAIN_GELU]},
    note="baseline = GLU with GELU; paper: most changes trade speed against tokens, not loss per FLOP",
)
