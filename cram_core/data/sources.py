"""Corpus sources: parse ``data.source``, fingerprint the inputs for the cache key, read documents.

A spec is one or more comma-separated parts, each ``KIND:ARG`` with an optional ``@WEIGHT`` suffix:

    sample            the public-domain sample shipped in cram_core/data/sample/ (a jsonl source)
    hf:NAME[:CONFIG]  a directory written by ``Dataset.save_to_disk`` (a DatasetDict gives its 'train'
                      split), otherwise a Hugging Face Hub dataset, split 'train'
    text:GLOB         plain-text files; documents are separated by blank lines, so a file without a
                      blank line is one document (a single newline stays inside a document, as a
                      paragraph break, which is how the offline corpus marks paragraphs)
    jsonl:GLOB        JSON Lines, one document per line, the text in field ``data.text_field``
    parquet:GLOB      Parquet files, the text in column ``data.text_field``

text and jsonl files ending in .xz, .gz or .zst are decompressed on the fly; relative globs resolve
against the current directory, ``**`` recurses. Without weights the parts are concatenated in the order
given. With weights (then every part needs one, e.g. ``jsonl:a/*.xz@0.7,text:b/*.txt@0.3``) the
documents are sampled in exactly those proportions, as many as the sources allow without repeating a
document, and interleaved in an order seeded by ``data.seed``.

Only ``parse_sources`` and ``Source.fingerprint`` run on a cache hit, so this module imports nothing
heavy at the top: ``datasets`` and ``pyarrow`` are imported when such a source is actually read.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import lzma
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from cram_core.data.errors import DataError

SAMPLE_PATH = Path(__file__).resolve().parent / "sample" / "sample-en.jsonl.xz"
KINDS_HELP = "sample, hf:NAME[:CONFIG], text:GLOB, jsonl:GLOB, parquet:GLOB"
_BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n")


@dataclass(frozen=True, slots=True)
class Source:
    spec: str
    "the part of data.source this came from, for messages and statistics"
    kind: str
    "text, jsonl, parquet or hf"
    arg: str
    "the glob, or for hf the dataset name / directory"
    weight: float | None
    "sampling proportion, none = concatenate"
    files: tuple[str, ...]
    "resolved absolute paths, sorted (for a Hub dataset: empty)"

    def fingerprint(self) -> list:
        """What the cache key sees: kind, argument, weight, and every file's path, size and mtime."""
        stamps = []
        for path in self.files:
            st = os.stat(path)
            stamps.append([path, st.st_size, st.st_mtime_ns])
        return [self.kind, self.arg, self.weight, stamps]


def parse_sources(spec: str) -> list[Source]:
    """Parse and resolve ``data.source``; DataError for an unknown kind, a bad weight or an empty glob."""
    parts = [p.strip() for p in spec.split(",")]
    if not all(parts):
        raise DataError(f"data.source: empty part in {spec!r}; valid kinds: {KINDS_HELP}")
    sources = [_parse_part(p) for p in parts]
    weighted = [s.weight is not None for s in sources]
    if len(sources) > 1 and any(weighted) and not all(weighted):
        raise DataError(f"data.source: give every part a weight (@W) or none, got {spec!r}")
    return sources


def _parse_part(part: str) -> Source:
    body, weight = _split_weight(part)
    if body == "sample":
        return Source(part, "jsonl", str(SAMPLE_PATH), weight, (str(SAMPLE_PATH),))
    kind, colon, arg = body.partition(":")
    if not colon or kind not in READERS:
        raise DataError(f"data.source: unknown source kind {kind!r} in {part!r}; valid: {KINDS_HELP}")
    if not arg:
        raise DataError(f"data.source: {part!r} names no {'dataset' if kind == 'hf' else 'files'}")
    files = _hf_files(arg) if kind == "hf" else _glob_files(kind, arg)
    return Source(part, kind, arg, weight, files)


def _split_weight(part: str) -> tuple[str, float | None]:
    body, at, tail = part.rpartition("@")
    if not at:
        return part, None
    try:
        weight = float(tail)
    except ValueError:
        return part, None  # an '@' inside a path, not a weight
    if not (math.isfinite(weight) and weight > 0):
        raise DataError(f"data.source: weight must be a positive number, got {tail!r} in {part!r}")
    return body, weight


def _glob_files(kind: str, pattern: str) -> tuple[str, ...]:
    matches = glob.glob(os.path.expanduser(pattern), recursive=True)
    files = sorted(os.path.abspath(m) for m in matches if os.path.isfile(m))
    if not files:
        raise DataError(f"data.source: {kind}:{pattern} matches no file (relative to {os.getcwd()})")
    return tuple(files)


def _hf_files(arg: str) -> tuple[str, ...]:
    """Files of a save_to_disk directory (so edits invalidate the cache); a Hub name has none to stat."""
    if not os.path.isdir(arg):
        return ()
    found = [os.path.join(d, f) for d, _, names in os.walk(os.path.abspath(arg)) for f in names]
    return tuple(sorted(found))


# ---------------------------------------------------------------------------------------- reading


def read_documents(
    sources: list[Source], *, text_field: str, max_documents: int | None, seed: int
) -> tuple[list[str], list[dict]]:
    """All documents (non-blank) of the spec, mixed as the weights say; plus per-source counts."""
    if len(sources) > 1 and sources[0].weight is not None:
        return _mix(sources, text_field, max_documents, seed)
    docs: list[str] = []
    counts = []
    for src in sources:
        left = None if max_documents is None else max_documents - len(docs)
        got = list(islice(iter_documents(src, text_field), left))
        docs.extend(got)
        counts.append({"source": src.spec, "documents_read": len(got), "documents_used": len(got)})
    return docs, counts


def _mix(sources: list[Source], text_field: str, limit: int | None, seed: int) -> tuple[list[str], list[dict]]:
    weights = np.array([s.weight for s in sources], dtype=np.float64)
    weights /= weights.sum()
    caps = [None if limit is None else math.ceil(w * limit) for w in weights]
    pools = [list(islice(iter_documents(s, text_field), cap)) for s, cap in zip(sources, caps)]
    for src, pool in zip(sources, pools):
        if not pool:
            raise DataError(f"data.source: {src.spec} has no documents")
    sizes = np.array([len(p) for p in pools])
    # the largest mix with these proportions that repeats no document
    total = int(np.floor(np.min(sizes / weights) + 1e-9))  # 1e-9: 300 / 0.3 must not floor to 999
    total = total if limit is None else min(total, limit)
    take = np.minimum(np.round(weights * total).astype(np.int64), sizes)
    rng = np.random.default_rng(seed)
    chosen = [[pool[i] for i in np.sort(rng.choice(len(pool), n, replace=False))] for pool, n in zip(pools, take)]
    labels = np.repeat(np.arange(len(sources)), take)
    rng.shuffle(labels)
    streams = [iter(c) for c in chosen]
    docs = [next(streams[k]) for k in labels]
    counts = [{"source": s.spec, "documents_read": len(p), "documents_used": int(n)}
              for s, p, n in zip(sources, pools, take)]
    return docs, counts


def iter_documents(src: Source, text_field: str) -> Iterator[str]:
    """The source's non-blank documents in file order."""
    for doc in READERS[src.kind](src, text_field):
        if doc.strip():
            yield doc


def _read_text(src: Source, text_field: str) -> Iterator[str]:
    for path in src.files:
        raw = _read_all(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 (byte {e.start} of the decompressed text)") from None
        text = text.replace("\r\n", "\n")
        yield from (doc.strip() for doc in _BLANK_LINE.split(text))


def _read_jsonl(src: Source, text_field: str) -> Iterator[str]:
    for path in src.files:
        for lineno, raw in _binary_lines(path):
            if raw.strip():
                yield _json_text(raw, text_field, f"{path}:{lineno}")


def _json_text(raw: bytes, text_field: str, where: str) -> str:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{where}: not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or text_field not in obj:
        fields = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{where}: no field {text_field!r} (data.text_field); found: {fields}")
    return _as_text(obj[text_field], text_field, where)


def _as_text(value: object, text_field: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field {text_field!r} is {type(value).__name__}, not a string")
    return value


def _read_parquet(src: Source, text_field: str) -> Iterator[str]:
    pq = _optional_import("pyarrow.parquet", "parquet")

    for path in src.files:
        try:
            pf = pq.ParquetFile(path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid / ArrowIOError derive from these
            raise DataError(f"{path}: not a readable Parquet file ({_one_line(e)})") from None
        if text_field not in pf.schema_arrow.names:
            raise DataError(f"{path}: no column {text_field!r} (data.text_field); found: {', '.join(pf.schema_arrow.names)}")
        batches = pf.iter_batches(columns=[text_field])
        while True:
            try:  # the footer can be intact while a page is not: decompression and decoding fail here
                values = next(batches).column(0).to_pylist()
            except StopIteration:
                break
            except (OSError, ValueError) as e:  # e.g. "Corrupt snappy compressed data", invalid UTF-8
                raise DataError(f"{path}: corrupt Parquet data ({_one_line(e)})") from None
            for value in values:
                yield _as_text(value, text_field, path)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_hf(src: Source, text_field: str) -> Iterator[str]:
    ds = _load_hf(src.arg)
    if text_field not in ds.column_names:
        raise DataError(f"hf:{src.arg}: no column {text_field!r} (data.text_field); found: {', '.join(ds.column_names)}")
    for batch in ds.select_columns([text_field]).iter(batch_size=1024):
        for value in batch[text_field]:
            yield _as_text(value, text_field, f"hf:{src.arg}")


def _load_hf(arg: str):
    datasets = _optional_import("datasets", "hf")

    if os.path.isdir(arg):
        try:
            ds = datasets.load_from_disk(arg)
        except FileNotFoundError as e:
            raise DataError(f"hf:{arg}: not a directory written by save_to_disk ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"hf:{arg}: no 'train' split; found: {', '.join(ds)}")
            ds = ds["train"]
        return ds
    name, _, config = arg.partition(":")
    try:
        return datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # hub, network and builder errors share no base; keep the reason
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"hf:{arg}: cannot load ({reason})") from e


def _optional_import(module: str, kind: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{kind}: sources need the {module.split('.')[0]!r} package (pip install it)") from None


READERS = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet, "hf": _read_hf}


# ---------------------------------------------------------------------------------------- files


def _open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _stream_errors(path: str) -> tuple[type[BaseException], ...]:
    """What a truncated or corrupt (compressed) file raises while being read."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError)
    if path.endswith(".zst"):
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


def _binary_lines(path: str) -> Iterator[tuple[int, bytes]]:
    try:
        with _open_binary(path) as fh:
            yield from enumerate(fh, 1)
    except _stream_errors(path) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def _read_all(path: str) -> bytes:
    try:
        with _open_binary(path) as fh:
            return fh.read()
    except _stream_errors(path) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
