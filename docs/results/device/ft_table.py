"""One table from before_bench.py's JSON and ``cram_core.downstream bench --json``'s: per version and parallel
setting the wall time of the whole multi-seed job, examples/s (train examples x epochs x seeds / wall), the ratio
to the before row, the per-seed scores, median, mean ± sd, and Welch's t-test p of each row's scores against
the before row's. 'warm ex/s' (parallel 1 rows only): train examples x epochs / the median of one seed's own
seconds over seeds 1+, the figure docs/FINETUNE_SPEED.md reported (400 -> 1,215 ex/s on the H200).

    python docs/results/device/ft_table.py BEFORE.json AFTER.json [--out SUMMARY.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from scipy import stats


def warm_rate(records: list[dict]) -> float | None:
    warm = records[1:] or records
    return warm[0]["n_train"] * warm[0]["epochs"] / statistics.median(r["seconds"] for r in warm)


def rows_of(path: Path, version: str) -> list[dict]:
    data = json.loads(path.read_text())
    out = []
    for row, records in zip(data["rows"], data["records"]):
        out.append(dict(row, version=version,
                        warm_examples_per_second=warm_rate(records) if row["parallel"] == 1 else None,
                        n_train=records[0]["n_train"], n_dev=records[0]["n_dev"], epochs=records[0]["epochs"],
                        metric=records[0]["metric"]))
    return out


def welch_p(a: list[float], b: list[float]) -> float:
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def main() -> int:
    p = argparse.ArgumentParser(prog="table.py", description="before vs after fine-tuning speed and scores")
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args()
    for path in (args.before, args.after):
        if not path.is_file():
            p.error(f"{path}: no such file")
    before = rows_of(args.before, "before (a09da37^)")
    after = rows_of(args.after, "after (today)")
    base = before[0]
    for r in before + after:
        if r["seeds"] != base["seeds"] or (r["n_train"], r["n_dev"], r["epochs"]) != (base["n_train"], base["n_dev"], base["epochs"]):
            p.error(f"{r['version']} parallel {r['parallel']}: seeds/examples/epochs differ from the before row")
        r["x_vs_before"] = r["examples_per_second"] / base["examples_per_second"]
        r["welch_p_vs_before"] = welch_p(base["scores"], r["scores"])

    print(f"{base['n_train']} train x {base['epochs']} epochs x {len(base['seeds'])} seeds, {base['n_dev']} dev, "
          f"{base['metric']} (seeds {', '.join(map(str, base['seeds']))})")
    head = f"{'version':<18} {'par':>3} {'wall s':>7} {'ex/s':>7} {'x':>6} {'warm ex/s':>9}  " \
           f"{'per-seed ' + base['metric']:<44} {'median':>6}  {'mean ± sd':<15} {'Welch p':>7}"
    print(head)
    for r in before + after:
        warm = f"{r['warm_examples_per_second']:.0f}" if r["warm_examples_per_second"] else "-"
        print(f"{r['version']:<18} {r['parallel']:>3} {r['wall_s']:>7.1f} {r['examples_per_second']:>7.0f} "
              f"{r['x_vs_before']:>6.2f} {warm:>9}  {', '.join(f'{v:.4f}' for v in r['scores']):<44} "
              f"{r['median']:>6.4f}  {r['mean']:.4f} ± {r['sd']:.4f} "
              f"{'-' if r is base else format(r['welch_p_vs_before'], '.3f'):>7}")
    if args.out:
        args.out.write_text(json.dumps(before + after, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
