"""``python -m cram_core.data prepare [--preset NAME] [--no-progress] [data.FIELD=VALUE ...]``

Builds (or finds in the cache) the prepared dataset and prints its statistics. A bad flag or bad
input is one ``python -m cram_core.data: error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import time

from cram_core.config import ConfigError, RunConfig, apply_overrides
from cram_core.cli import OneLineParser, run_main
from cram_core.data.pipeline import PreparedData, prepare


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m cram_core.data", description="data pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build or load the prepared dataset and print its statistics")
    prep.add_argument("--preset", help="start from this preset's data group (cram_core.presets; default: the "
                      "crammed-bert recipe's)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bars")
    prep.add_argument("overrides", nargs="*", metavar="data.FIELD=VALUE")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        cfg = _config(args.preset, args.overrides)
        prepared = prepare(cfg.data, progress=not args.no_progress)
    except ConfigError as e:
        return parser.fail(e)
    print(report(prepared, time.perf_counter() - start))
    return 0


def _config(preset: str | None, overrides: list[str]) -> RunConfig:
    others = [o for o in overrides if not o.startswith("data.")]
    if others:
        raise ConfigError(f"prepare takes only data.* overrides, got {others[0]!r}")
    if preset:
        from cram_core.presets import get_preset

        base = get_preset(preset)
    else:
        base = RunConfig()
    return apply_overrides(base, overrides)


def report(prepared: PreparedData, seconds: float) -> str:
    """Human-readable statistics of a prepared dataset."""
    s = prepared.stats
    lines = [f"prepared data      {prepared.path}" + ("  (cache hit)" if prepared.cache_hit else "")]
    for src in s["sources"]:
        lines.append(f"  source           {src['source']}: {src['documents_read']:,} read, {src['documents_used']:,} used")
    lines.append(f"documents read     {s['documents_read']:,}")
    for name, f in s["filters"].items():
        extra = "".join(f", {k} {v:,}" if isinstance(v, int) else f", {k} {v}"
                        for k, v in f.items() if k not in ("before", "kept", "removed"))
        lines.append(f"  {name:<16} removed {f['removed']:,}, kept {f['kept']:,}{extra}")
    lines += [
        f"documents kept     {s['documents_kept']:,}",
        f"tokens             {s['tokens']:,} ({s['tokenizer']}, vocab {s['vocab_size']:,})",
        f"sequences          {s['sequences']:,} x {s['seq_len']} ({s['dtype']}, ordering {s['ordering']})",
        f"build time         {s['build_seconds']:.1f} s, {s['tokens_per_second']:,.0f} tokens/s  "
        + " ".join(f"{k} {v:.1f}s" for k, v in s["seconds"].items()),
    ]
    if prepared.cache_hit:
        lines.append(f"this call          {seconds:.3f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
