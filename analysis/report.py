"""One self-contained HTML report of a sweep: ``python -m analysis report NAME [--store URL] [--out FILE]``.

One file to mail or attach to an issue, opened by any browser with no network and no other file: the results
table(s), every figure inline (base64 PNG), each variant's config diff against the baseline, the trials, and
where the numbers come from (git SHA and dirty flag, hardware, library versions, preset, budget, seeds).
Everything shown comes from the store; the file is written atomically (a temporary file renamed into place),
so a failed build leaves no half-written report.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import select

from analysis import plots, tables
from analysis.load import SweepFrames, Store, load_sweep, using_store
from sweeps.store import SweepRow, TrialRow

# placement and bookkeeping, not the experiment: the same for every variant or meaningless to compare
CONFIG_DIFF_IGNORED = ("train.seed", "impl.threads")
TRIAL_COLUMNS = {"variant": "variant", "seed": "seed", "status": "status", "eval_loss": "held-out loss",
                 "final_loss": "train loss (last 10%)", "tokens": "tokens", "seconds": "seconds",
                 "tokens_per_second": "tokens/s", "reason": "reason"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
caption { caption-side: bottom; text-align: left; font-size: 0.85em; color: #555; padding-top: 0.4em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""
FIGURE_CAPTIONS = {
    "loss_vs_tokens": "Loss against tokens seen. Lines: train loss (smoothed), mean over seeds aligned on budget "
                      "progress, band = min–max over seeds. Diamonds: held-out loss at the end, mean and 95% CI.",
    "loss_vs_seconds": "Loss against training seconds (budget clock); as above.",
    "throughput": "Tokens per second per variant (mean over completed seeds, error bar = std), Δ% vs baseline.",
}


class ReportError(ValueError):
    """The report cannot be written where asked; the message is one line."""


def default_out(sweep_name: str) -> Path:
    return plots.default_out_dir(sweep_name) / "report.html"


# ------------------------------------------------------------------------------------------------ parts


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _frame_html(frame: pd.DataFrame, caption: str | None = None) -> str:
    body = frame.to_html(index=False, escape=True, na_rep="—", border=0)
    if caption:
        body = body.replace(">\n  <thead>", f">\n  <caption>{_e(caption)}</caption>\n  <thead>", 1)
    return body


def figure_html(stem: str, fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    caption = FIGURE_CAPTIONS.get(stem, stem)
    return (f'<figure id="fig-{_e(stem)}"><img alt="{_e(stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def config_diffs(trials: pd.DataFrame, baseline: str | None) -> dict[str, list[tuple[str, Any, Any]]]:
    """Per variant: (key, baseline value, variant value) for every config key that differs from the
    baseline's, seed and thread count left out; from each variant's first stored trial."""
    config_columns = [c for c in trials.columns if "." in c and c not in CONFIG_DIFF_IGNORED]
    firsts = trials.sort_values("trial_id").drop_duplicates("variant").set_index("variant")
    if baseline is None or baseline not in firsts.index:
        return {}
    base = firsts.loc[baseline]
    out = {}
    for variant, row in firsts.iterrows():
        if variant == baseline:
            continue
        out[str(variant)] = [(c, base[c], row[c]) for c in config_columns if not _same(base[c], row[c])]
    return out


def _same(a: Any, b: Any) -> bool:
    if pd.isna(a) is True and pd.isna(b) is True:
        return True
    return bool(a == b) if not isinstance(a, (list, dict)) else a == b


def provenance(store: Store, frames: SweepFrames) -> dict[str, str]:
    """Where the numbers come from, as label -> text; several values (a sweep run in parts) are all listed."""
    with using_store(store) as engine, engine.connect() as conn:
        sweep = conn.execute(select(SweepRow.id, SweepRow.created_at).where(SweepRow.name == frames.name)).one()
        rows = conn.execute(select(TrialRow.git_sha, TrialRow.git_dirty, TrialRow.host, TrialRow.versions)
                            .where(TrialRow.sweep_id == sweep.id, TrialRow.status != "planned")).all()
    definition = frames.definition
    trials = frames.trials
    shas = sorted({f"{r.git_sha[:12]}{' (dirty)' if r.git_dirty else ''}" for r in rows if r.git_sha})
    versions = sorted({json.dumps(r.versions, sort_keys=True) for r in rows if r.versions})
    budget = definition.get("budget") or {}
    budget_text = budget.get("text") or ", ".join(
        f"{kind} {amount:g}" for kind, amount in trials[["budget_kind", "budget_amount"]].dropna().drop_duplicates()
        .itertuples(index=False))
    seeds = definition.get("seeds") or sorted(trials["seed"].dropna().astype(int).unique().tolist())
    return {
        "sweep": f"{frames.name}" + (f" — {definition['axis']}" if definition.get("axis") else ""),
        "created": sweep.created_at.strftime("%Y-%m-%d %H:%M UTC") if sweep.created_at else "—",
        "preset": str(definition.get("preset") or "—"),
        "budget": budget_text or "—",
        "seeds": ", ".join(str(s) for s in seeds) or "—",
        "git": ", ".join(shas) or "not recorded",
        "hardware": ", ".join(sorted(trials["hardware"].dropna().unique())) or "not recorded",
        "hosts": ", ".join(sorted({r.host for r in rows if r.host})) or "not recorded",
        "versions": "; ".join(", ".join(f"{k} {v}" for k, v in json.loads(s).items() if v) for s in versions)
        or "not recorded",
        "report written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def trials_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """Every trial, its numbers formatted as in the tables; "—" where there is none."""
    formats = {"eval_loss": "{:.4f}".format, "final_loss": "{:.4f}".format, "seconds": "{:.1f}".format,
               "tokens": tables.fmt_count, "tokens_per_second": tables.fmt_count}
    out = trials[[c for c in TRIAL_COLUMNS if c in trials.columns]].astype(object)
    for column in out.columns:
        fmt = formats.get(column, str)
        out[column] = [fmt(v) if v is not None and not (isinstance(v, float) and pd.isna(v)) else "—"
                       for v in out[column]]
    return out.rename(columns=TRIAL_COLUMNS)


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>\n{body}\n</section>"


def render(store: Store, sweep_name: str) -> str:
    """The report's HTML; raises UnknownSweepError (a StoreError) for a sweep the store does not have."""
    frames = load_sweep(store, sweep_name)
    baseline = tables.baseline_variant(frames.trials)
    parts = [_section("Provenance", _frame_html(pd.DataFrame(list(provenance(store, frames).items()),
                                                             columns=["", "value"])))]
    message = tables.empty_message(frames)
    if message is None:
        body = "\n".join(_frame_html(t.display, t.caption) for t in tables.tables_for(frames, "md"))
    else:
        body = f"<p>{_e(message)}</p>"
    parts.append(_section("Results", body))
    try:
        figures = plots.sweep_figures(frames, "both")
        parts.append(_section("Figures", "\n".join(figure_html(stem, fig) for stem, fig in figures.items())))
    except plots.NothingToPlot as e:
        parts.append(_section("Figures", f"<p>{_e(e)}</p>"))
    diffs = config_diffs(frames.trials, baseline)
    diff_html = [f"<h3>{_e(v)}</h3>" + (_frame_html(pd.DataFrame(rows, columns=["key", "baseline", v]))
                                         if rows else "<p>same config as the baseline</p>")
                 for v, rows in diffs.items()]
    parts.append(_section("Config of each variant against the baseline", "\n".join(diff_html) or
                          "<p>no baseline trial to compare against</p>"))
    parts.append(_section("Trials", _frame_html(trials_frame(frames.trials))))
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sweep {_e(sweep_name)}: report</title><style>{STYLE}</style></head><body>",
        f"<h1>Sweep <code>{_e(sweep_name)}</code></h1>", *parts, "</body></html>", ""])


def write_report(store: Store, sweep_name: str, out: Path | str | None = None) -> Path:
    """Render and write atomically; returns the path. Nothing is written when rendering fails; an unusable
    path is a ``ReportError``, found before the (slow) rendering."""
    path = Path(out) if out is not None else default_out(sweep_name)
    if path.is_dir():
        raise ReportError(f"--out {path} is a folder; give a file name, e.g. {path / 'report.html'}")
    text = render(store, sweep_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = staged_file(path.parent, path.name, lambda f: f.write(text.encode("utf-8")))
    except OSError as e:
        raise ReportError(f"cannot write the report to {path}: {e.strerror or e}") from None
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def staged_file(folder: Path, file_name: str, write: Any) -> Path:
    """A temporary file in ``folder``, filled by ``write(binary file)``, to be renamed onto ``file_name``: the
    rename is what makes a write atomic. Readable like any new file (mkstemp's 0600 would make a file meant
    for sharing unreadable to others); removed again when ``write`` fails."""
    fd, tmp = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)
