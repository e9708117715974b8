"""``python -m sweeps list | show NAME | run NAME | status [NAME] | dashboard``.

Every user mistake (unknown sweep, bad override or budget, missing store) is one line on stderr
(``python -m sweeps: error: ...``) and exit code 2, found before the store is opened or created.

Besides the built-in sweeps (sweeps.definitions), `show` and `run` take an ad-hoc grid
(``--name NAME --vary group.field=v1,v2 ...``) and every command takes ``--sweeps-file FILE`` of
``Sweep(...)`` definitions (sweeps.adhoc); the store keeps each grid's definition, so resuming one needs
neither again.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from cram_core.cli import OneLineParser, positive_int, unknown_name
from cram_core.config import ConfigError
from sweeps.adhoc import (check_new_name, find_sweep, grid_sweep, load_sweeps_file, stored_definitions,
                          sweep_from_definition)
from sweeps.definitions import SWEEPS, ResolvedSweep, Sweep, resolve, stored_budget_text, trials_per_gpu
from sweeps.gpu_monitor import GpuBusy
from sweeps.store import DEFAULT_STORE, StoreError, store_url

PROG = "python -m sweeps"


def _console() -> Console:
    # rich wraps at 80 columns when stdout is not a terminal (logs, pipes); variant tables read better wider
    return Console(soft_wrap=True) if sys.stdout.isatty() else Console(soft_wrap=True, width=160)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Fixed-budget ablation sweeps (Ray Tune + Optuna).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,show,run,status,dashboard}")
    store_help = "SQLAlchemy URL or SQLite file"
    file_help = "also read the Sweep(...) definitions in this Python file (default: none)"

    ls = sub.add_parser("list", help="every sweep: axis, variant count, trial count")
    ls.add_argument("--sweeps-file", metavar="FILE", help=file_help)
    ls.add_argument("--store", default=DEFAULT_STORE, help=f"{store_help}, for the ad-hoc sweeps stored there")
    ls.set_defaults(func=cmd_list)

    def add_resolution_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument("name", nargs="?", help="sweep name (see list); or give --name with --vary")
        q.add_argument("--name", dest="new_name", metavar="NAME",
                       help="name of an ad-hoc grid sweep made of the --vary axes (default: none)")
        q.add_argument("--as", dest="store_as", metavar="NAME",
                       help="store this run of the named sweep under NAME, e.g. the same sweep at another budget or "
                            "preset in one store; `run NAME` then resumes it as it was run (default: the sweep's "
                            "own name)")
        q.add_argument("--vary", action="append", default=[], metavar="GROUP.FIELD=V1,V2,...",
                       help="one axis of the ad-hoc grid, repeatable; the grid is every combination, against "
                            "the preset as baseline (values containing ',' are separated by ';')")
        q.add_argument("--sweeps-file", metavar="FILE", help=file_help)
        q.add_argument("--preset", help="baseline preset (default: tiny without CUDA, crammed-bert-short with; "
                                        "a stored ad-hoc sweep: the one it was run with)")
        q.add_argument("--budget", help="per-trial budget: 90s, 10m, 1h, 50Mtok, 2e17flop, or DURATION@GPU as FLOPs, "
                                        "e.g. 1day@2080ti (default: the sweep's for this preset, else the preset's)")
        q.add_argument("--budgets", metavar="B1,B2,...",
                       help="run every variant x seed at each of these budgets, one kind, stored as one sweep "
                            "(e.g. 60s,120s,240s or 1Mtok,2Mtok,4Mtok); see python -m analysis scaling (default: none)")
        q.add_argument("--seeds", type=int, help="seeds per variant, grid sweeps (default: the sweep's)")
        q.add_argument("--trials", type=int, help="number of TPE samples, search sweeps (default: the sweep's)")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                       help="override the baseline of every variant, repeatable (default: none)")
        # downstream flags default to None so that one given without --downstream can be told apart (an error)
        q.add_argument("--downstream", metavar="TASKS",
                       help="fine-tune every completed trial on these eval tasks (comma list, e.g. rt-polarity,sva), "
                            "after training and outside the budget; the table gets a column per task "
                            "(default: none)")
        q.add_argument("--downstream-seeds", type=positive_int, metavar="N",
                       help="fine-tuning seeds per task (default 1; the protocol reports the median of 5)")
        q.add_argument("--downstream-epochs", type=positive_int, metavar="E", help="fine-tuning epochs (default 5)")
        q.add_argument("--downstream-max-train", type=positive_int, metavar="N",
                       help="cap train examples per task (seeded subset; default: all)")
        q.add_argument("--downstream-max-dev", type=positive_int, metavar="N",
                       help="cap dev examples per task (seeded subset; default: all)")
        q.add_argument("--downstream-data", metavar="DIR",
                       help="folder of <task>/task.json (default $CRAM_EVAL_DATA, else ../shared/data/eval)")

    show = sub.add_parser("show", help="baseline preset, variants with overrides, budget, seeds")
    add_resolution_flags(show)
    show.add_argument("--store", default=DEFAULT_STORE, help=f"{store_help}, for the ad-hoc sweeps stored there")
    show.set_defaults(func=cmd_show)

    run = sub.add_parser("run", help="run (or resume) a sweep")
    add_resolution_flags(run)
    run.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    run.add_argument("--address", help="address of an existing Ray cluster (default: start Ray locally)")
    run.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (default 1 with GPUs, else 0)")
    run.add_argument("--max-concurrent", type=int, help="at most this many trials at a time (default: as many "
                                                        "as the GPUs, or the CPU cores, hold)")
    run.add_argument("--retry-failed", action="store_true", help="rerun trials recorded as failed (crashed)")
    run.add_argument("--rerun", action="store_true",
                     help="train trials that another sweep in the store already completed (default: reuse them)")
    run.add_argument("--storage-path", metavar="PATH_OR_URI",
                     help="Tune's run folder, on storage every Ray node shares (NFS path, s3://...); "
                          "default a local temp folder, enough on one machine")
    run.add_argument("--max-failures", type=int, metavar="N",
                     help="retries of a trial whose worker or node died, e.g. a lost node (default 2)")
    run.add_argument("--keep-models", metavar="DIR",
                     help="keep each trial's trained model in DIR/<sweep>/<variant>-seed<k>/ (default: not kept)")
    run.add_argument("--dry-run", action="store_true", help="resolve every variant, print the plan, touch nothing")
    run.add_argument("--no-warm-compile", dest="warm_compile", action="store_false",
                     help="don't compile the trials' graphs in background processes while the data is prepared "
                          "(default: they are, when trials run on CUDA with compile on)")
    run.add_argument("--backend", default="cram_core", help=argparse.SUPPRESS)  # tests: sweeps.testing
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="progress of running / finished sweeps")
    status.add_argument("name", nargs="?", help="one sweep in detail (default: all sweeps in the store)")
    status.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    status.set_defaults(func=cmd_status)

    dash = sub.add_parser("dashboard", help="optuna-dashboard on the store, bound to 127.0.0.1")
    dash.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1")
    dash.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    dash.set_defaults(func=cmd_dashboard)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # what `sweeps run` stores with the sweep, so its page can say how it was run (python -m analysis results)
    args.command_line = shlex.join([*PROG.split(), *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ConfigError, StoreError) as e:
        return parser.fail(e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


# ---------------------------------------------------------------- list / show


def _file_sweeps(args: argparse.Namespace) -> dict[str, Sweep]:
    return load_sweeps_file(args.sweeps_file) if args.sweeps_file else {}


def cmd_list(args: argparse.Namespace) -> int:
    file_sweeps = _file_sweeps(args)
    stored = {name: (s, d) for name, d in stored_definitions(store_url(args.store)).items()
              if name not in SWEEPS and name not in file_sweeps and (s := sweep_from_definition(name, d))}
    rows = [("sweep", "section", "variants", "trials", "default budget", "axis")]
    for s in [*SWEEPS.values(), *file_sweeps.values()]:
        variants = f"TPE {s.num_trials}" if s.is_search else str(s.num_variants())
        trials = f"{s.num_trials}" if s.is_search else f"{s.trial_count()} ({s.seeds} seeds)"
        budget = s.default_budget_text()
        rows.append((s.name, s.section, variants, trials, budget, s.axis))
    for name, (s, d) in stored.items():  # as they were run: the preset and budget are the stored ones
        budget = f"{(d.get('budget') or {}).get('text', '?')} on {d.get('preset', '?')} (stored)"
        rows.append((name, s.section, str(s.num_variants()), f"{s.trial_count()} ({s.seeds} seeds)", budget, s.axis))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:  # plain aligned text: greppable, and never wrapped into a narrow table
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    print(f"\n{PROG} show NAME: baseline, variants and their overrides, budget, seeds")
    print(f"{PROG} run --name NAME --vary group.field=v1,v2 ...: your own grid; --sweeps-file FILE: your own Sweep(...)s")
    return 0


def _resolve(args: argparse.Namespace) -> ResolvedSweep:
    """The sweep the command names, resolved on its preset; every mistake is a ConfigError (one line)."""
    if args.new_name and args.name:
        raise ConfigError(f"give a sweep name ({args.name!r}) or --name NAME with --vary, not both")
    if args.vary and not args.new_name:
        raise ConfigError("--vary needs --name NAME (the ad-hoc sweep's name)")
    if not args.new_name and not args.name:
        raise ConfigError("which sweep? give its name (python -m sweeps list), or --name NAME --vary ...")
    preset, budget, seeds, overrides = args.preset, args.budget, args.seeds, list(args.overrides)
    file_sweeps, stored = _file_sweeps(args), None
    if args.new_name:
        if args.new_name in file_sweeps:
            raise ConfigError(f"--name {args.new_name!r} is also a sweep in {args.sweeps_file}; pick another name")
        sweep = grid_sweep(args.new_name, args.vary)
    else:
        sweep, stored = find_sweep(args.name, file_sweeps=file_sweeps, store=store_url(args.store))
    if args.store_as:
        if args.new_name:
            raise ConfigError(f"--as renames a named sweep; the --name sweep {args.new_name!r} is already named")
        check_new_name(args.store_as, "--as")
        if args.store_as in file_sweeps:
            raise ConfigError(f"--as {args.store_as!r} is also a sweep in {args.sweeps_file}; pick another name")
        sweep, stored = dataclasses.replace(sweep, name=args.store_as), None
    budgets = args.budgets.split(",") if args.budgets else None
    if stored is not None and preset is None and budget is None and not overrides and not budgets:
        # a stored ad-hoc sweep resumes as it was run: same preset, budget(s) and --set overrides (the budget
        # as one override from the stored amount: a list naming two budget kinds would be refused)
        preset = stored.get("preset")
        overrides = [o for o in stored.get("base_overrides") or [] if not o.startswith("budget.")]
        if stored.get("budgets"):
            budgets = [stored_budget_text(b) for b in stored["budgets"]]
        elif stored.get("budget"):
            overrides.append(f"budget.{stored['budget']['kind']}={stored['budget']['amount']!r}")
    resolved = resolve(sweep, preset=preset, budget=budget, seeds=seeds, num_trials=args.trials,
                       overrides=overrides, budgets=budgets)
    if stored is not None and resolved.base.hash() == stored.get("base_config_hash"):
        resolved = dataclasses.replace(resolved, budget_text=(stored.get("budget") or {}).get("text",
                                                                                             resolved.budget_text))
    return resolved


DOWNSTREAM_FLAGS = ("downstream_seeds", "downstream_epochs", "downstream_max_train", "downstream_max_dev",
                    "downstream_data")


def _downstream(args: argparse.Namespace) -> Any:
    """The validated DownstreamSpec, or None; a bad task name is a ConfigError listing the tasks found."""
    if not args.downstream:
        given = [f"--{f.replace('_', '-')}" for f in DOWNSTREAM_FLAGS if getattr(args, f) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} given without --downstream TASKS")
        return None
    from sweeps.runner import downstream_spec

    return downstream_spec(args.downstream, seeds=args.downstream_seeds or 1, epochs=args.downstream_epochs or 5,
                           max_train=args.downstream_max_train, max_dev=args.downstream_max_dev,
                           data_root=args.downstream_data)


def cmd_show(args: argparse.Namespace) -> int:
    resolved = _resolve(args)
    _print_plan(resolved, _console(), placement=None, store=None, downstream=_downstream(args))
    return 0


def _print_plan(resolved: ResolvedSweep, console: Console, *, placement: Any, store: str | None,
                downstream: Any = None) -> None:
    from sweeps.runner import estimate_wall_s, local_resources, place

    s = resolved.sweep
    console.print(f"[bold]{s.name}[/] ({s.section}): {s.axis}")
    if s.note:
        console.print(f"  {s.note}")
    extra = [o for o in resolved.base_overrides if not o.startswith("budget.")]
    console.print(f"  baseline preset  {resolved.preset}" + (f"  with {' '.join(extra)}" if extra else ""))
    console.print(f"  budget           {resolved.budget_text} per trial")
    for point in resolved.budgets[1:]:
        console.print(f"                   {point.label} per trial")
    if s.is_search:
        console.print(f"  search           TPE, {resolved.num_trials} trials (the baseline point first), seed 0")
    else:
        console.print(f"  seeds            {len(resolved.seeds)} (train.seed = {', '.join(map(str, resolved.seeds))})")
    if placement is None:
        cpus, gpus = local_resources()
        placement = place(resolved.num_trials, cpus=cpus, gpus=gpus, gpus_per_trial=None, max_concurrent=None,
                          trials_per_gpu=trials_per_gpu(resolved.preset))
    est = estimate_wall_s(resolved, placement)
    console.print(f"  trials           {resolved.num_trials}; here: {placement.describe()}"
                  + (f"; about {est / 60:.0f} min" if est else ""))
    if downstream is not None:
        from sweeps.trial import describe_downstream

        console.print(f"  downstream       {describe_downstream(downstream.to_dict())}; after each completed "
                      f"trial, outside the budget{' and the estimate' if est else ''}")
    if store:
        console.print(f"  store            {store}")
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    table.add_column("variant")
    table.add_column("config")
    table.add_column("overrides")
    for v in resolved.variants:
        overrides = " ".join(f"{k}={val}" for k, val in v.shown.items()) or "-"
        if v.same_as:
            overrides += f"  [dim](same config as {v.same_as!r} on this preset: not run)[/]"
        table.add_row(v.name, v.config_hash[:8], overrides)
    if s.is_search:
        table.add_row("(TPE samples)", "", "search space: " + (s.note or "see definitions.py"))
    console.print(table)
    data = {v.config.data for v in resolved.runnable_variants()}
    console.print(f"  data configs     {len(data)} to prepare before trials start")


# ---------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from sweeps.runner import RunOptions, load_backend, local_resources, place, run_sweep

    resolved = _resolve(args)
    downstream = _downstream(args)  # like every other mistake: before the store is opened
    url = store_url(args.store)
    console = _console()
    if args.address is None:
        cpus, gpus = local_resources()
        placement = place(resolved.num_trials, cpus=cpus, gpus=gpus, gpus_per_trial=args.gpus_per_trial,
                          max_concurrent=args.max_concurrent, trials_per_gpu=trials_per_gpu(resolved.preset))
    else:
        placement = None
    if args.backend == "cram_core":
        _check_sources(resolved)
        if placement is not None:  # on a cluster the trials' nodes check it
            _check_precisions(resolved, placement.gpus_per_trial > 0)
    if args.max_failures is not None and args.max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures}")
    if args.address is not None and not args.dry_run:
        from sweeps.runner import check_address

        check_address(args.address)  # before the store is opened: a wrong address writes nothing
    if args.dry_run:
        if placement is None:
            placement = place(resolved.num_trials, cpus=1, gpus=0, gpus_per_trial=0, max_concurrent=1)
            console.print("  (placement is decided by the Ray cluster at run time)")
        _print_plan(resolved, console, placement=placement, store=url, downstream=downstream)
        console.print("dry run: nothing was written, Ray was not started")
        return 0
    try:
        load_backend(args.backend)
    except ImportError as e:
        raise ConfigError(f"trainer backend {args.backend!r} cannot be imported: {e}") from None
    opts = RunOptions(store_url=url, address=args.address, gpus_per_trial=args.gpus_per_trial,
                      max_concurrent=args.max_concurrent, backend=args.backend, retry_failed=args.retry_failed,
                      downstream=downstream, keep_models=args.keep_models, rerun=args.rerun,
                      storage_path=args.storage_path, command=args.command_line, warm_compile=args.warm_compile,
                      **({} if args.max_failures is None else {"max_failures": args.max_failures}))
    result = run_sweep(resolved, opts, console=console)
    counts = result.counts
    console.print(
        f"\n[bold]{result.name}[/] {'finished' if result.complete else 'stopped'} after {result.wall_s / 60:.1f} min: "
        f"{counts['completed']} completed, "
        f"{counts['diverged']} diverged, {counts['failed']} failed"
        + (f" ({result.reused} reused from other sweeps)" if result.reused else "")
        + (f", {counts['planned'] + counts['cancelled']} not run" if counts["planned"] + counts["cancelled"] else "")
    )
    if result.best:
        console.print(f"best (mean over seeds, 95% CI): {result.best.describe()}")
    if result.gpu_busy:
        console.print(f"GPU busy {result.gpu_busy.describe()}, Ray start and data preparation included")
    if result.warm:
        console.print(f"compile cache warmed: {result.warm.describe()}; data preparation and Ray start took "
                      f"{result.prepare_s or 0:.0f} s")
    if resolved.budgets:  # one table per budget would be read as more seeds: the scaling view instead
        _print_scaling(url, result.name, console)
    else:
        _print_table(url, result.name, console)
    store_arg = "" if url == store_url(DEFAULT_STORE) else f" --store {url}"
    console.print(f"results: store {url} (sweep {result.name!r}, Optuna study {result.name!r})")
    for command, what in ((f"{PROG} status {result.name}", "every trial, with status and reason"),
                          (f"{PROG} dashboard", "the Optuna dashboard on this store"),
                          (f"python -m analysis table {result.name}", "this table as md, csv or latex"),
                          (f"python -m analysis plot {result.name}", "loss curves and throughput, PNG + SVG"),
                          (f"python -m analysis report {result.name}", "one shareable HTML file: table, figures, "
                                                                       "config diffs, provenance")):
        console.print(f"  {command}{store_arg}  [dim]# {what}[/]", highlight=False)
    if not result.complete:
        console.print("[yellow]sweep incomplete: run the same command again to resume[/]")
        return 1
    if counts["failed"]:  # recorded and the sweep went on, but a script should notice
        console.print(f"[yellow]{counts['failed']} trial(s) failed: `{PROG} status {result.name}` "
                      "shows why; add --retry-failed to rerun them[/]")
        return 1
    return 0


def _check_sources(resolved: ResolvedSweep) -> None:
    """A data source that names no file fails here, in one line, not as N failed trials in the store."""
    from cram_core.data.sources import parse_sources

    specs = {resolved.base.data.source} | {v.config.data.source for v in resolved.runnable_variants()}
    for spec in sorted(specs):
        parse_sources(spec)  # DataError is a ConfigError


def _check_precisions(resolved: ResolvedSweep, on_gpu: bool) -> None:
    """The trainer's device-dependent checks (impl.precision, impl.residual_dtype: hardware.check_precision) on
    the device type the trials get: a config every trial would refuse fails here, in one line, not as N failed
    trials in the store."""
    import torch

    from cram_core import hardware

    impls = {resolved.base.impl} | {v.config.impl for v in resolved.runnable_variants()}
    for impl in impls:
        hardware.check_precision(impl, torch.device("cuda" if on_gpu else "cpu"))


def _print_scaling(url: str, name: str, console: Console) -> None:
    from analysis.scaling import scaling_text

    try:
        console.print(scaling_text(url, name), highlight=False, markup=False)
    except Exception as e:  # the sweep's results are stored either way; the table is a view of them
        console.print(f"[red](scaling table failed: {type(e).__name__}: {e})[/]")
    console.print(f"  python -m analysis scaling {name} --store {url}  [dim]# fitted curves and log-log plots[/]",
                  highlight=False)


def _print_table(url: str, name: str, console: Console) -> None:
    """The what-worked table (analysis.tables) as a rich table, its caption under it."""
    try:
        from analysis.load import load_sweep
        from analysis.tables import empty_message, tables_for
    except ImportError as e:
        console.print(f"(no what-worked table: analysis is not available here: {e})")
        return
    try:
        frames = load_sweep(url, name)
        message = empty_message(frames)
        if message is not None:
            console.print(message)
            return
        for t in tables_for(frames, "md"):
            console.print(rich_table(t.display, t.caption))
    except Exception as e:  # the sweep's results are stored either way; the table is a view of them
        console.print(f"[red](what-worked table failed: {type(e).__name__}: {e})[/]")


TEXT_COLUMNS = ("variant", "verdict", "group", "runs ok/div/fail", "reason", "status")
"left-aligned; every other column holds numbers and is right-aligned, as in the markdown table"


def rich_table(display: Any, caption: str | None = None) -> Table:
    """A formatted DataFrame (strings) as a rich table: the variant column bold, verdicts coloured."""
    table = Table(caption=caption, caption_justify="left", header_style="bold", box=None, padding=(0, 1),
                  pad_edge=False, show_edge=False)
    for col in display.columns:
        table.add_column(str(col), justify="left" if col in TEXT_COLUMNS else "right",
                         style="bold" if col == "variant" else None, overflow="fold")
    colours = {"helped": "green", "hurt": "red", "diverged": "yellow"}
    for row in display.itertuples(index=False):
        cells = [str(c) for c in row]
        if "verdict" in display.columns:
            i = list(display.columns).index("verdict")
            colour = next((c for word, c in colours.items() if cells[i].startswith(word)), None)
            if colour:
                cells[i] = f"[{colour}]{cells[i]}[/]"
        table.add_row(*cells)
    return table


# ---------------------------------------------------------------- status / dashboard


def cmd_status(args: argparse.Namespace) -> int:
    from sweeps.ledger import Ledger
    from sweeps.live import format_loss, format_seconds

    ledger = Ledger(store_url(args.store), create=False)
    try:
        names = ledger.sweep_names()
        if args.name and args.name not in names:
            raise ConfigError(f"no sweep {args.name!r} in {ledger.url}; sweeps there: none" if not names else
                              f"{unknown_name('sweep', args.name, names)} (in {ledger.url})")
        console = _console()
        for name in [args.name] if args.name else names:
            p = ledger.progress(name)
            assert p is not None
            concurrency = (p.definition.get("placement") or {}).get("concurrency", 1)
            c = p.counts
            best = p.best.describe() if p.best else "-"
            if c["running"]:
                eta = format_seconds(p.eta_seconds(concurrency))
            elif c["planned"]:  # nothing running: the sweep was stopped; this is what a rerun needs
                eta = f"{format_seconds(p.eta_seconds(concurrency))} once resumed"
            else:
                eta = "done"
            console.print(
                f"[bold]{name}[/]: {c['completed']} completed, {c['running']} running, {c['planned']} planned, "
                f"{c['failed']} failed, {c['diverged']} diverged"
                + (f", {c['cancelled']} cancelled" if c["cancelled"] else "")
                + f" | best {best} | ETA {eta}"
            )
            if p.definition.get("downstream"):
                from sweeps.trial import describe_downstream

                console.print(f"  downstream {describe_downstream(p.definition['downstream'])}")
            busy = ledger.gpu_busy(name)
            if busy:
                console.print(f"  GPU busy {busy[-1].describe()}"
                              + (f" in the last of {len(busy)} runs; all runs: {GpuBusy.combine(busy).describe()}"
                                 if len(busy) > 1 else ""))
            if args.name:
                _print_trials(ledger, name, console)
        if not names:
            console.print(f"no sweeps in {ledger.url} yet")
    finally:
        ledger.close()
    return 0


def _print_trials(ledger: Any, name: str, console: Console) -> None:
    from sqlalchemy import select

    from sweeps.ledger import objective
    from sweeps.live import format_count, format_loss
    from sweeps.store import SweepRow, TrialRow
    from sweeps.trial import downstream_scores

    def op(s: Any) -> tuple[list[Any], bool]:
        sweep = s.scalars(select(SweepRow).where(SweepRow.name == name)).one()
        order = {v: i for i, v in enumerate(sweep.definition.get("variants", {}))}  # the sweep's own order
        rows = s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep.id).order_by(TrialRow.id))
        return sorted(rows, key=lambda r: (order.get(r.variant, len(order)), r.seed)), \
            bool(sweep.definition.get("downstream"))

    rows, with_downstream = ledger._read(op)
    table = Table(box=None, padding=(0, 2), header_style="bold")
    columns = ["variant", "seed", "status", "loss", "tokens", "tokens/s"]  # the names and numbers of the tables
    columns += ["downstream"] if with_downstream else []
    for col in columns + ["reason"]:
        table.add_column(col)
    for r in rows:
        value = objective({"eval_loss": r.eval_loss, "final_loss": r.final_loss})
        cells = [r.variant, str(r.seed), r.status, format_loss(value), format_count(r.tokens),
                 format_count(r.tokens_per_second)]
        if with_downstream:
            # the mean over tasks of the median over fine-tuning seeds, as the dashboard's downstream_avg
            scores = downstream_scores((r.summary or {}).get("evals") or [])
            cells.append(f"{sum(scores.values()) / len(scores):.3f}" if scores else "-")
        table.add_row(*cells, r.reason or "")
    console.print(table)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from sweeps.ledger import Ledger

    url = store_url(args.store)
    Ledger(url, create=False).close()  # a missing store is a one-line error, not an empty dashboard
    import optuna_dashboard

    from sweeps.mirror import artifact_store, make_storage

    print(f"optuna-dashboard for {url} on http://127.0.0.1:{args.port} (Ctrl-C to stop)", flush=True)
    # the artifact folder `analysis plot` uploads figures and tables to, so they show on the study page
    optuna_dashboard.run_server(make_storage(url), host="127.0.0.1", port=args.port,
                                artifact_store=artifact_store(url))
    return 0
