"""One sweep as a Markdown page to commit: ``python -m analysis results NAME [--out DIR]``.

Writes ``DIR/NAME.md`` with ``DIR/NAME-loss-tokens.png`` and ``DIR/NAME-loss-seconds.png`` beside it (PNG only:
the page is meant for the repository, where SVG copies would only add weight). The page holds, in order: the
provenance (as `analysis report` reads it, plus trial counts, GPU busy, dates), the command(s) that ran the
sweep, the results table exactly as `analysis table --format md` prints it, the two loss figures, each
variant's overrides and an optional note. A sweep run at several budgets (``sweeps run --budgets``) gets its
scaling page instead (analysis.scaling: the loss, fit and grow/hold/shrink tables, log-log figures
``NAME-scaling.png`` and ``NAME-scaling-seconds.png``), unless ``--budget`` picks one budget's page.

Everything on the page comes from the store (or the options), and nothing from the moment it is written, so
regenerating it from the same store gives the same bytes. The command is the one `sweeps run` recorded in the
sweep's definition (``commands``, one entry per distinct command line that ran or resumed it); a store from
before that records none, and ``--command`` supplies it. Every file is written to a temporary name first and
renamed into place once all three are rendered, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from analysis import plots, report, scaling, tables
from analysis.load import SweepFrames, load_sweep, using_store
from sweeps.store import SweepRow, TrialRow

DEFAULT_OUT = Path("docs/results")
FIGURE_SUFFIXES = {"tokens": "loss-tokens", "seconds": "loss-seconds"}
FIGURE_DPI = 110
"enough to read every label at the page's width; with the palette (_write_png) each PNG stays near 100 KB"
DATE_FORMAT = "%Y-%m-%d %H:%M UTC"


def _trial_dates(engine: Engine, name: str) -> str:
    """First start and last finish among the sweep's trials that ran."""
    query = (select(func.min(TrialRow.started_at), func.max(TrialRow.finished_at))
             .join(SweepRow, TrialRow.sweep_id == SweepRow.id)
             .where(SweepRow.name == name, TrialRow.started_at.is_not(None)))
    with engine.connect() as conn:
        first, last = conn.execute(query).one()
    if first is None:
        return "no trial has run"
    return f"first started {first.strftime(DATE_FORMAT)}, last finished " + (
        last.strftime(DATE_FORMAT) if last is not None else "—")


def _gpu_busy(store_url: str, name: str) -> str:
    from sweeps.ledger import Ledger

    ledger = Ledger(store_url, create=False)  # read-only; a store from before the busy table reads as none
    try:
        runs = ledger.gpu_busy(name)
    finally:
        ledger.close()
    if not runs:
        return "not recorded"
    from sweeps.gpu_monitor import GpuBusy

    total = f"; all runs: {GpuBusy.combine(runs).describe()}" if len(runs) > 1 else ""
    return "; ".join(f"run {i}: {r.describe()}" for i, r in enumerate(runs, 1)) + total + \
        " (Ray start and data preparation included)"


def _placement(definition: dict[str, Any]) -> str:
    from sweeps.runner import Placement

    stored = definition.get("placement")
    if not stored:
        return "not recorded"
    try:
        return Placement(**stored).describe()
    except TypeError:  # a placement stored by another version: show it as it is
        return ", ".join(f"{k} {v}" for k, v in stored.items())


def _trial_counts(frames: SweepFrames) -> str:
    counts = tables.summarize(frames).status_counts
    text = f"{counts['completed']} completed, {counts['diverged']} diverged, {counts['failed']} failed"
    if counts["other"]:
        text += f", {counts['other']} planned/running/cancelled"
    return f"{text} (of {sum(counts.values())})"


def provenance(store_url: str, engine: Engine, frames: SweepFrames, code_commit: str | None) -> list[tuple[str, str]]:
    definition = frames.definition
    shared = report.provenance(engine, frames)  # minus its "report written", which would change every time
    git = f"recorded by the trials: {shared['git']}"
    if code_commit:
        git += f"; code that ran: {code_commit}"
    return [("sweep", frames.name), ("section", str(definition.get("section") or "—")),
            ("axis", str(definition.get("axis") or "—")), ("preset", shared["preset"]),
            ("budget", shared["budget"]), ("seeds", shared["seeds"]), ("trials", _trial_counts(frames)),
            ("placement", _placement(definition)), ("hardware", shared["hardware"]), ("hosts", shared["hosts"]),
            ("GPU busy", _gpu_busy(store_url, frames.name)), ("git", git), ("versions", shared["versions"]),
            ("sweep stored", shared["created"]), ("trials ran", _trial_dates(engine, frames.name))]


def _overrides(frames: SweepFrames) -> list[str]:
    """Each variant's overrides as the sweep declared them (else its config diff against the baseline)."""
    definition = frames.definition
    lines = []
    base = [o for o in definition.get("base_overrides") or [] if not o.startswith("budget.")]
    if base:
        lines += ["Every variant, the baseline included: " + " ".join(f"`{o}`" for o in base), ""]
    declared = definition.get("variants")
    if declared:
        rows = [(name, " ".join(f"`{k}={v}`" for k, v in overrides.items()) or "— (the preset as is)")
                for name, overrides in declared.items()]
    else:
        diffs = report.config_diffs(frames.trials, tables.baseline_variant(frames.trials))
        rows = [(name, " ".join(f"`{k}={v}`" for k, _, v in diff) or "same config as the baseline")
                for name, diff in diffs.items()]
    if not rows:
        return lines + ["not recorded"]
    return lines + ["| variant | overrides |", "|---|---|",
                    *(f"| {name} | {text.replace('|', chr(92) + '|')} |" for name, text in rows)]


def _table(frames: SweepFrames) -> str:
    message = tables.empty_message(frames)
    return message or "\n\n".join(tables.render(t, "md") for t in tables.tables_for(frames, "md"))


def render(store_url: str, sweep_name: str, *, stem: str, commands: Sequence[str] = (),
           code_commit: str | None = None, note: str | None = None,
           budget: str | None = None) -> tuple[str, dict[str, Any]]:
    """The page's Markdown and its figures by file name; raises UnknownSweepError for a sweep the store lacks."""
    with using_store(store_url) as engine:
        frames = load_sweep(engine, sweep_name)
        several = budget is None and len(scaling.stored_budgets(frames)) > 1
        if budget is not None:  # one budget of a sweep run at several (else the budgets read as extra seeds)
            frames = scaling.at_budget(frames, budget)
        facts = provenance(store_url, engine, frames, code_commit)
    recorded = list(commands) or list(frames.definition.get("commands") or [])
    command = "\n".join(recorded) or "# not recorded: this store predates recorded commands (give --command)"
    figures: dict[str, Any] = {}
    if several:  # the scaling view: fitted curves across the budgets, not a table that pools them
        budgets, table, figures, figure_lines = scaling.page_parts(frames, stem)
        facts = [(k, budgets if k == "budget" else v) for k, v in facts]
        title, curves = f"# Scaling sweep `{sweep_name}`", "## Loss against compute"
    else:
        table, title, curves = _table(frames), f"# Sweep `{sweep_name}`", "## Loss curves"
        try:
            figures = {f"{stem}-{suffix}.png": plots.loss_figure(frames, x) for x, suffix in FIGURE_SUFFIXES.items()}
            figure_lines = []
            for (x, _), file_name in zip(FIGURE_SUFFIXES.items(), figures, strict=True):
                figure_lines += [f"![{sweep_name}: loss vs {x}]({file_name})", "",
                                 f"*{report.FIGURE_CAPTIONS[f'loss_vs_{x}']}*", ""]
        except plots.NothingToPlot as e:
            figure_lines = [str(e), ""]
    lines = [title, "", "## Provenance", "",
             *(f"- **{key}**: {value}" for key, value in facts), "",
             "## Command", "", "```bash", command, "```", "",
             "## Results", "", table, "",
             curves, "", *figure_lines,
             "## Variants", "", *_overrides(frames), ""]
    if note:
        lines += ["## Notes", "", note.strip(), ""]
    return "\n".join(lines), figures


def _write_png(f: Any, fig: Any) -> None:
    """The figure as a 256-colour PNG: it looks the same (flat colours, light bands) at a third of the bytes,
    which matters for files committed with every sweep."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(f, format="png", optimize=True)


def _check_out_dir(out_dir: Path) -> None:
    blocker = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "" if blocker == out_dir else f": {blocker}"
        raise report.ReportError(f"--out {out_dir}{where} is a file, not a folder")


def write_results(store_url: str, sweep_name: str, *, out_dir: Path | str = DEFAULT_OUT, name: str | None = None,
                  commands: Sequence[str] = (), code_commit: str | None = None, note: str | None = None,
                  budget: str | None = None) -> list[Path]:
    """Render, then write the page and its figures (each atomically); returns the paths, the page first."""
    out_dir, stem = Path(out_dir), name or sweep_name
    if not stem or "/" in stem or stem.startswith("."):
        raise report.ReportError(f"--as {stem!r}: give a plain file name (letters, digits, '_', '-'), no folder")
    _check_out_dir(out_dir)
    text, figures = render(store_url, sweep_name, stem=stem, commands=commands, code_commit=code_commit, note=note,
                           budget=budget)
    writers = {f"{stem}.md": lambda f: f.write(text.encode("utf-8"))}
    writers |= {file_name: lambda f, fig=fig: _write_png(f, fig) for file_name, fig in figures.items()}
    staged: dict[str, Path] = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for file_name, write in writers.items():
            staged[file_name] = report.staged_file(out_dir, file_name, write)
        for file_name, tmp in staged.items():  # only once every file rendered: no page without its figures
            os.replace(tmp, out_dir / file_name)
    except OSError as e:
        raise report.ReportError(f"cannot write to {out_dir}: {e.strerror or e}") from None
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return [out_dir / file_name for file_name in writers]
