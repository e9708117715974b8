"""``prepare``: sources -> filters -> tokenizer -> encode -> order -> pack, cached by a config hash.

A prepared dataset is a directory ``<cache root>/data/<key>/`` holding ``tokens.npy`` ([N, seq_len],
memory-mapped when loaded), ``tokenizer.json``, ``stats.json`` and ``config.json``. It is built in a
temporary sibling directory and renamed into place, so a directory under its final name is always
complete; a failed build removes its temporary directory. The key hashes every DataConfig field but
``cache_dir``, each input file's path, size and mtime, and ``CACHE_VERSION``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cram_core.config import DataConfig
from cram_core.data.errors import DataError
from cram_core.data.sources import Source, parse_sources

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Bump when the same config would now produce different prepared data.
CACHE_VERSION = 5


@dataclass(frozen=True, slots=True)
class PreparedData:
    path: Path
    "the cache directory of this dataset"
    tokens: np.ndarray
    "[N, seq_len] packed sequences, uint16 or int32, memory-mapped read-only"
    vocab_size: int
    "size of the trained vocabulary (at most data.vocab_size)"
    tokenizer_path: Path
    "tokenizer.json of the trained tokenizer"
    stats: dict[str, Any]
    "what the build read, filtered, kept and produced, and how long it took"
    cache_hit: bool
    "True when this call found the dataset already built"

    def tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.tokenizer_path))


def cache_root(cfg: DataConfig) -> Path:
    base = cfg.cache_dir or os.environ.get("CRAM_CACHE") or os.path.join("~", ".cache", "cram_core")
    return Path(base).expanduser() / "data"


def cache_key(cfg: DataConfig, sources: list[Source]) -> str:
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "cache_dir"}
    blob = json.dumps({"version": CACHE_VERSION, "config": fields, "sources": [s.fingerprint() for s in sources]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def prepare(cfg: DataConfig, *, progress: bool = True) -> PreparedData:
    """The packed dataset for ``cfg``, built on the first call and loaded from the cache afterwards."""
    sources = parse_sources(cfg.source)
    root = cache_root(cfg)
    final = root / cache_key(cfg, sources)
    clean_stale_builds(root)
    if final.is_dir():
        try:
            return _load(final, cache_hit=True)
        except (OSError, ValueError, KeyError) as e:  # truncated/edited by hand: rebuild, never train on it
            print(f"warning: data cache entry {final} is damaged ({type(e).__name__}: {e}); rebuilding it",
                  file=sys.stderr)
            _discard(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-{os.getpid()}@{socket.gethostname()}-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would make a shared cache unreadable to other users
        build(cfg, sources, tmp, progress=progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp)  # a concurrent build of the same key finished first; use it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _load(final, cache_hit=False)


STALE_BUILD_S = 24 * 3600.0
"a temporary build folder this old is debris whoever made it (another host's, or one named without its pid)"


def clean_stale_builds(root: Path) -> list[Path]:
    """Remove the temporary folders of builds that can no longer finish; returns what was removed.

    A build works in ``.tmp-<key>-<pid>@<host>-<random>`` and renames it into place; a build that was killed
    (SIGKILL, a lost node) leaves it behind. One is stale when its pid is gone on this host, or when it (or a
    ``.trash-`` folder of a discarded entry) is older than STALE_BUILD_S, which also covers other hosts sharing
    the cache. A live build's folder is never touched.
    """
    removed = []
    try:
        entries = [e for e in root.iterdir() if e.name.startswith((".tmp-", ".trash-")) and e.is_dir()]
    except OSError:  # no cache yet, or unreadable: nothing of ours to clean
        return removed
    now = time.time()
    for entry in entries:
        owner = _build_owner(entry.name)
        try:
            old = now - entry.stat().st_mtime > STALE_BUILD_S
        except OSError:
            continue
        dead = owner is not None and owner[1] == socket.gethostname() and not _pid_alive(owner[0])
        if old or dead:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _build_owner(name: str) -> tuple[int, str] | None:
    """(pid, host) from ``.tmp-<key>-<pid>@<host>-<random>`` (mkdtemp's random part has no '-')."""
    if not name.startswith(".tmp-"):
        return None
    _, _, rest = name[len(".tmp-"):].partition("-")
    owner = rest.rsplit("-", 1)[0]
    pid, at, host = owner.partition("@")
    return (int(pid), host) if at and pid.isdigit() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _discard(path: Path) -> None:
    """Move a damaged entry out of the way first, so a concurrent reader never sees it half-deleted."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _load(path: Path, *, cache_hit: bool) -> PreparedData:
    stats = json.loads((path / "stats.json").read_text())
    tokens = np.load(path / "tokens.npy", mmap_mode="r")
    expected = (int(stats["sequences"]), int(stats["seq_len"]))
    if tokens.shape != expected or not (path / "tokenizer.json").is_file():
        raise ValueError(f"tokens.npy has shape {tokens.shape}, stats.json says {expected}, or tokenizer.json is missing")
    return PreparedData(
        path=path,
        tokens=tokens,
        vocab_size=int(stats["vocab_size"]),
        tokenizer_path=path / "tokenizer.json",
        stats=stats,
        cache_hit=cache_hit,
    )


def build(cfg: DataConfig, sources: list[Source], out: Path, *, progress: bool) -> dict[str, Any]:
    """Run the whole pipeline for ``cfg`` into directory ``out``; returns (and writes) the statistics."""
    from cram_core.data.filters import apply_filters
    from cram_core.data.sources import read_documents

    clock = _PhaseClock(["read", "filter", "tokenizer", "encode", "pack"], progress=progress)
    # one bar for the whole build (the clock's): the tokenizer trainers, the encoders and Hugging Face
    # `datasets` would each draw their own (eight on a first build), so they are all told to stay quiet
    progress = False
    if any(s.kind == "hf" for s in sources):
        _quiet_hf_progress()
    docs, per_source = read_documents(sources, text_field=cfg.text_field, max_documents=cfg.max_documents,
                                      seed=cfg.seed)
    n_read = len(docs)
    if not docs:
        raise DataError(f"data.source: {cfg.source!r} yielded no documents")
    clock.lap("read")
    docs, filters = apply_filters(docs, cfg, progress=progress)
    if not docs:
        raise DataError(f"no documents left after filtering {n_read} (data.compressibility={cfg.compressibility}, "
                        f"data.dedup={cfg.dedup})")
    clock.lap("filter")
    docs, ragged, vocab_size = _tokenize(cfg, docs, out, clock, progress=progress)
    tokens, packed = _order_and_pack(cfg, docs, ragged, vocab_size)
    np.save(out / "tokens.npy", tokens)
    clock.lap("pack")
    clock.close()
    n_tokens = int(ragged.lengths.sum())
    stats = {
        "source": cfg.source, "sources": per_source, "documents_read": n_read, "filters": filters,
        "documents_kept": len(docs), "tokens": n_tokens, "sequences_packed": packed, "sequences": len(tokens),
        "seq_len": cfg.seq_len, "dtype": str(tokens.dtype), "vocab_size": vocab_size, "tokenizer": cfg.tokenizer,
        "ordering": cfg.ordering, "seconds": clock.laps, "build_seconds": round(clock.total, 3),
        "tokens_per_second": round(n_tokens / max(clock.total, 1e-9)),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    return stats


def _tokenize(cfg: DataConfig, docs: list[str], out: Path, clock: _PhaseClock, *, progress: bool):
    """Train and save the final tokenizer, encode every document; drops documents with no tokens."""
    from cram_core.data.tokenizer import check_vocab, encode_documents, train_tokenizer

    tok = train_tokenizer(docs, cfg, progress=progress)
    vocab_size = check_vocab(tok)
    tok.save(str(out / "tokenizer.json"))
    clock.lap("tokenizer")
    ragged = encode_documents(tok, docs, progress=progress, desc="encode")
    nonempty = ragged.lengths > 0
    if not nonempty.all():  # e.g. text that normalises away entirely
        docs = [d for d, k in zip(docs, nonempty) if k]
        ragged = ragged.select(nonempty)
    clock.lap("encode")
    return docs, ragged, vocab_size


def _order_and_pack(cfg: DataConfig, docs: list[str], ragged, vocab_size: int) -> tuple[np.ndarray, int]:
    """[N, seq_len] blocks in ``cfg.ordering``, cut to ``cfg.max_sequences``; and N before the cut."""
    from cram_core.data.ordering import order_documents
    from cram_core.data.packing import pack, token_dtype

    order = order_documents(docs, ragged, cfg)
    tokens = pack(ragged, order, seq_len=cfg.seq_len, add_sep=cfg.add_sep, add_cls=cfg.add_cls,
                  dtype=token_dtype(vocab_size))
    packed = len(tokens)
    if cfg.max_sequences is not None:
        tokens = tokens[: cfg.max_sequences]
    if len(tokens) == 0:
        raise DataError(f"corpus too small: {int(ragged.lengths.sum())} tokens make no sequence of "
                        f"data.seq_len={cfg.seq_len}")
    return tokens, packed


def _quiet_hf_progress() -> None:
    """No progress bars from `datasets` (loading, mapping) or the Hub client (downloads)."""
    try:
        import datasets
        import huggingface_hub.utils
    except ImportError:  # sources.py reports a missing `datasets` when it reads
        return
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()


class _PhaseClock:
    """Times each stage of a build and, with ``progress``, shows the build as one bar over its stages."""

    def __init__(self, stages: list[str], *, progress: bool) -> None:
        from tqdm import tqdm

        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}
        self.stages = stages
        self.bar = tqdm(total=len(stages), desc=f"preparing data: {stages[0]}", unit="stage", leave=False,
                        disable=not progress, bar_format="{desc:<32} {bar} {n_fmt}/{total_fmt} [{elapsed}]")

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = now
        self.bar.update(1)
        if self.bar.n < len(self.stages):
            self.bar.set_description_str(f"preparing data: {self.stages[self.bar.n]}")

    def close(self) -> None:
        self.bar.close()

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start
