"""Sweeps a researcher defines without editing the package.

Two ways, both giving an ordinary `Sweep` that `list`, `show`, `run`, `status`, the dashboard and the
analysis treat like a built-in one:

* a grid from the command line: ``--name my_lr --vary optim.lr=5e-4,1e-3 --vary train.schedule=triangle,one-cycle``
  (every combination is a variant; the baseline is the preset itself);
* a Python file of ``Sweep(...)`` definitions: ``--sweeps-file my_sweeps.py``.

The store keeps each grid sweep's variants with the sweep (`ResolvedSweep.definition`'s ``spec``), so a
resumed or analysed ad-hoc sweep needs neither the command line nor the file again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import re
import sys
from pathlib import Path
from typing import Any

from cram_core.cli import unknown_name
from cram_core.config import ConfigError
from sweeps.definitions import SWEEPS, Sweep

AD_HOC_SECTION = "ad hoc"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# sweep names become Optuna study names and folder names (--keep-models)


def check_new_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name):
        raise ConfigError(f"{what} {name!r}: use letters, digits, '_', '-' and '.' (starting with a letter or digit)")
    if name in SWEEPS:
        raise ConfigError(f"{what} {name!r} is a built-in sweep; pick another name (python -m sweeps list shows them)")


# ---------------------------------------------------------------- --name / --vary


def parse_vary(items: list[str]) -> dict[str, list[str]]:
    """``["optim.lr=5e-4,1e-3", ...]`` -> ``{"optim.lr": ["5e-4", "1e-3"]}``. Values that contain commas
    themselves (a curriculum, a data mix) are separated by ``;`` instead."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise ConfigError(f"bad --vary {item!r}; expected group.field=value1,value2,... (see --list-flags)")
        values = [v.strip() for v in raw.split(";" if ";" in raw else ",")]
        if not all(values):
            raise ConfigError(f"bad --vary {item!r}: an empty value; separate values with ',' (or ';')")
        if key in out:
            raise ConfigError(f"--vary {key} given twice; put all its values in one --vary")
        if len(set(values)) != len(values):
            raise ConfigError(f"--vary {item!r} repeats a value")
        out[key] = values
    return out


def grid_sweep(name: str, vary: list[str], *, seeds: int | None = None) -> Sweep:
    """The cartesian product of the --vary values, each combination one variant against the preset."""
    check_new_name(name, "--name")
    axes = parse_vary(vary)
    if not axes:
        raise ConfigError("--name needs at least one --vary group.field=value1,value2,...")
    short = [k.split(".", 1)[1] for k in axes]
    labels = short if len(set(short)) == len(short) else list(axes)  # model.dropout vs ... : keep the group
    variants = {}
    for combo in itertools.product(*axes.values()):
        variants[", ".join(f"{label}={v}" for label, v in zip(labels, combo))] = dict(zip(axes, combo))
    command = " ".join(f"--vary {k}={','.join(v)}" for k, v in axes.items())
    return Sweep(name=name, section=AD_HOC_SECTION, axis=" x ".join(axes), variants=variants,
                 **({"seeds": seeds} if seeds else {}), note=f"ad-hoc grid: {command}")


# ---------------------------------------------------------------- --sweeps-file


def load_sweeps_file(path: str) -> dict[str, Sweep]:
    """Every `Sweep` defined at the top level of the file (or in a top-level list/tuple), by name.

    Anything wrong with the file (missing, a syntax error, an exception, no sweeps, a duplicate or built-in
    name) is one ConfigError line naming the file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--sweeps-file {path}: no such file")
    # a stable module name per file: Tune pickles a search sweep's space by reference to it
    module_name = "cram_user_sweeps_" + hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--sweeps-file {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any error is theirs to fix, reported in one line
        sys.modules.pop(module_name, None)
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        raise ConfigError(f"--sweeps-file {path}{where}: {type(e).__name__}: {' '.join(str(e).split())}") from None
    found: list[Sweep] = []
    for value in vars(module).values():
        if isinstance(value, Sweep):
            found.append(value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Sweep) for v in value):
            found.extend(value)
    sweeps: dict[str, Sweep] = {}
    for s in found:
        if sweeps.get(s.name, s) is not s:
            raise ConfigError(f"--sweeps-file {path}: two sweeps named {s.name!r}")
        check_new_name(s.name, f"--sweeps-file {path}: sweep")
        sweeps[s.name] = s
    if not sweeps:
        raise ConfigError(f"--sweeps-file {path}: defines no Sweep(...); e.g. "
                          "MY = Sweep(name='my_idea', section='training', axis='my knob', "
                          "variants={'on': {'optim.wrapper': 'sam'}})")
    return sweeps


# ---------------------------------------------------------------- from the store


def sweep_from_definition(name: str, definition: dict[str, Any]) -> Sweep | None:
    """The grid sweep a store row describes (its ``spec``), or None when it holds none (a TPE search from a
    file, or a sweep stored before specs were kept)."""
    spec = definition.get("spec")
    if not spec:
        return None
    return Sweep(name=name, section=spec["section"], axis=spec["axis"], variants=spec["variants"],
                 seeds=max(1, len(definition.get("seeds") or [0])), note=spec.get("note", ""))


def stored_definitions(store: str | None) -> dict[str, dict[str, Any]]:
    """Sweep definitions in the store, by name; empty when there is no store (nothing is created)."""
    if not store:
        return {}
    from sweeps.ledger import Ledger
    from sweeps.store import StoreError

    try:
        ledger = Ledger(store, create=False)
    except StoreError:
        return {}
    try:
        return ledger.definitions()
    finally:
        ledger.close()


def find_sweep(name: str, *, file_sweeps: dict[str, Sweep], store: str | None
               ) -> tuple[Sweep, dict[str, Any] | None]:
    """The sweep called ``name``: from the --sweeps-file, the built-ins, or the store (with its stored
    definition, so the caller can default preset, budget and seeds to what it was run with)."""
    if name in file_sweeps:
        return file_sweeps[name], None
    if name in SWEEPS:
        return SWEEPS[name], None
    stored = stored_definitions(store)
    if name in stored:
        sweep = sweep_from_definition(name, stored[name])
        if sweep is None:
            raise ConfigError(f"sweep {name!r} in the store is a TPE search (or predates stored definitions); "
                              "pass the --sweeps-file that defines it")
        return sweep, stored[name]
    valid = [*SWEEPS, *file_sweeps, *(n for n in stored if n not in SWEEPS)]
    raise ConfigError(unknown_name("sweep", name, valid, listed="python -m sweeps list"))
