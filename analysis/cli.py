"""``python -m analysis``: results tables and figures from the store.

    python -m analysis table NAME [--store URL] [--format md|csv|latex] [--kind auto|variants|groups]
    python -m analysis plot NAME [--store URL] [--x tokens|seconds|both] [--out DIR] [--no-dashboard]
    python -m analysis summary [--store URL] [--out DIR]
    python -m analysis report NAME [--store URL] [--out FILE]
    python -m analysis results NAME [--store URL] [--out DIR] [--as FILE_NAME] [--command LINE ...] [--note TEXT]
    python -m analysis scaling NAME [--store URL] [--out DIR]

User mistakes (missing store, unknown sweep) are one line on stderr (``python -m analysis: error: ...``) and
exit status 2, like argparse's own usage errors. An empty sweep is not a mistake: status 0, and one line
saying so (on stdout; for ``--format csv`` on stderr, with a header-only CSV on stdout so a script reading
the CSV still gets its columns).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from cram_core.cli import EXIT_USAGE, OneLineParser, error_line
from sweeps.store import DEFAULT_STORE, StoreError

from analysis import tables
from analysis.load import SweepFrames, load_sweep, normalize_url

# matplotlib and optuna are imported by the commands that need them: `table` stays quick to start, which
# matters when a script calls it per sweep



def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m analysis", description="Tables and plots from a results store.")
    sub = parser.add_subparsers(dest="command", required=True)
    store_help = f"SQLAlchemy URL or SQLite file path (default {DEFAULT_STORE})"

    table = sub.add_parser("table", help="one sweep's variants against its baseline")
    table.add_argument("sweep", metavar="NAME", help="sweep name (python -m sweeps status lists the stored ones)")
    table.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    table.add_argument("--format", choices=tables.FORMATS, default="md", help="markdown, CSV (raw numbers) or LaTeX")
    table.add_argument("--ci", choices=tables.CI_METHODS, default="t",
                       help="Δ loss intervals: t (default) or a percentile bootstrap of the per-seed differences")
    table.add_argument("--budget", metavar="B",
                       help="a sweep run at several budgets (--budgets): the table at this one, e.g. 60s (default: "
                            "required for such a sweep, else the sweep's only budget)")
    table.add_argument("--kind", choices=tables.KINDS, default="auto",
                       help="auto: per-variant table, plus the Table 5 form for group_ablation; groups: Table 5 form")

    plot = sub.add_parser("plot", help="loss curves (with LR / batch panel) and throughput, PNG + SVG")
    plot.add_argument("sweep", metavar="NAME", help="sweep name (python -m sweeps status lists the stored ones)")
    plot.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    plot.add_argument("--x", choices=("tokens", "seconds", "both"), default="tokens",
                      help="x axis of the loss curves: tokens seen or training seconds")
    plot.add_argument("--out", type=Path, default=None, help="output folder (default ./plots/NAME/)")
    plot.add_argument("--no-dashboard", action="store_true", help="do not attach a note to the Optuna study")

    report = sub.add_parser("report", help="one self-contained HTML file: table, figures, config diffs, provenance")
    report.add_argument("sweep", metavar="NAME", help="sweep name (python -m sweeps status lists the stored ones)")
    report.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    report.add_argument("--out", type=Path, default=None, help="output file (default ./plots/NAME/report.html)")

    results = sub.add_parser("results", help="one Markdown page to commit: provenance, command, table, loss "
                                             "figures (PNG beside it), variants; the same bytes from the same store")
    results.add_argument("sweep", metavar="NAME", help="sweep name (python -m sweeps status lists the stored ones)")
    results.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    results.add_argument("--out", type=Path, default=Path("docs/results"), help="output folder")
    results.add_argument("--as", dest="file_name", metavar="FILE_NAME",
                         help="write FILE_NAME.md and FILE_NAME-loss-*.png (default: the sweep name)")
    results.add_argument("--command", dest="commands", action="append", default=[], metavar="LINE",
                         help="a line of the page's command block, repeatable; replaces the command(s) sweeps run "
                              "recorded (default: those; a store from before they were recorded has none)")
    results.add_argument("--code-commit", metavar="SHA",
                         help="the commit whose code ran, shown beside the git SHA the trials recorded (e.g. when "
                              "they ran from an older checkout plus its working tree; default: none)")
    results.add_argument("--note", help="Markdown paragraph(s) for a Notes section at the end (default: none)")
    results.add_argument("--budget", metavar="B", help="a sweep run at several budgets: the page at this one "
                                                       "(default: such a sweep's scaling page)")

    scaling = sub.add_parser("scaling", help="a sweep run at several budgets (--budgets): fitted loss-compute "
                                             "curves, grow/hold/shrink verdicts, log-log plot (PNG + SVG)")
    scaling.add_argument("sweep", metavar="NAME", help="sweep name (python -m sweeps status lists the stored ones)")
    scaling.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    scaling.add_argument("--out", type=Path, default=None, help="plot folder (default ./plots/NAME/)")

    summary = sub.add_parser("summary", help="Δ loss with CIs of every variant of every sweep")
    summary.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    summary.add_argument("--out", type=Path, default=Path("plots"), help="output folder (default ./plots/)")
    return parser


def _table(args: argparse.Namespace) -> None:
    from analysis import scaling

    frames = load_sweep(args.store, args.sweep)
    if args.budget is not None or len(scaling.stored_budgets(frames)) > 1:  # else the budgets read as extra seeds
        frames = scaling.at_budget(frames, args.budget)
        print("\n\n".join(tables.render(t, args.format) for t in
                           tables.tables_for(frames, args.format, kind=args.kind, ci=args.ci)))
        return
    if args.format == "csv":
        frames = load_sweep(args.store, args.sweep)
        message = tables.empty_message(frames)
        if message is not None:
            print(message, file=sys.stderr)
            print(_csv_header(frames), end="")
            return
    print(tables.sweep_table(args.store, args.sweep, fmt=args.format, kind=args.kind, ci=args.ci))


def _csv_header(frames: SweepFrames) -> str:
    """The header line the CSV of this sweep has once it has results: the columns of its summary. A sweep
    with no trial rows at all is summarised as if it had one planned baseline trial, to get them."""
    if frames.trials.empty:
        frames = dataclasses.replace(frames, trials=frames.trials.reindex([0]).assign(variant="baseline",
                                                                                     status="planned"))
    table = tables.tables_for(frames, "csv")[0]
    return tables.to_csv(dataclasses.replace(table, raw=table.raw.iloc[:0]))


def _plot(args: argparse.Namespace) -> None:
    from analysis import dashboard, plots

    frames = load_sweep(args.store, args.sweep)
    try:
        written = plots.plot_sweep(args.store, args.sweep, x=args.x, out_dir=args.out, frames=frames)
    except plots.NothingToPlot as e:
        print(e)
        return
    for path in written:
        print(path)
    if args.no_dashboard:
        return
    if dashboard.attach(args.store, args.sweep, written):
        print(f"dashboard: figures and table as artifacts, and a note, saved on Optuna study {args.sweep!r}")
    else:
        print(f"no Optuna study named {args.sweep!r}; skipped dashboard note")


def _summary(args: argparse.Namespace) -> None:
    from analysis import plots

    try:
        written = plots.plot_summary(args.store, out_dir=args.out)
    except plots.NothingToPlot as e:
        print(e)
        return
    for path in written:
        print(path)


def _report(args: argparse.Namespace) -> None:
    from analysis import report

    try:
        print(report.write_report(args.store, args.sweep, args.out))
    except report.ReportError as e:
        print(error_line("python -m analysis", e), file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _results(args: argparse.Namespace) -> None:
    from analysis import report, results_md

    try:
        paths = results_md.write_results(args.store, args.sweep, out_dir=args.out, name=args.file_name,
                                         commands=args.commands, code_commit=args.code_commit, note=args.note,
                                         budget=args.budget)
    except report.ReportError as e:
        print(error_line("python -m analysis", e), file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    for path in paths:
        print(path)


def _scaling(args: argparse.Namespace) -> None:
    from analysis import plots, scaling

    view = scaling.scaling_view(load_sweep(args.store, args.sweep))  # ScalingError: one line, exit 2
    print(scaling.view_text(view))
    try:
        written = scaling.plot_scaling(view, args.out or plots.default_out_dir(args.sweep))
    except plots.NothingToPlot as e:
        print(e)
        return
    for path in written:
        print(path)


COMMANDS = {"table": _table, "plot": _plot, "summary": _summary, "report": _report, "results": _results,
            "scaling": _scaling}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.store = normalize_url(args.store)
    try:
        COMMANDS[args.command](args)
    except StoreError as e:  # includes UnknownSweepError, whose message names the valid names
        return parser.fail(e)
    return 0
