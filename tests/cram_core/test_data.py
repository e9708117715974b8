"""Data pipeline: sources, filters, tokenizer, orderings, packing, cache, errors, CLI (CPU, small data)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cram_core.config import ConfigError, DataConfig
from cram_core.data import SPECIAL_TOKENS, DataError, SpecialIds, pipeline, prepare
from cram_core.data.filters import apply_filters, repeated_span_mask, window_fingerprints
from cram_core.data.ordering import ORDERINGS, count_sentences, fragment_counts, order_documents
from cram_core.data.packing import token_dtype
from cram_core.data.sources import parse_sources, read_documents
from cram_core.data.tokenizer import Ragged, encode_documents, train_tokenizer

# ------------------------------------------------------------------------------------- made-up data


def lexicon(n: int = 300, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "pe", "ba", "go", "fi", "zu", "ra", "el"]
    words = {"".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(4 * n)}
    return sorted(words)[:n]


def prose(n_docs: int, seed: int = 0, sentences: tuple[int, int] = (2, 12)) -> list[str]:
    """Documents of Zipf-distributed pseudo-words in sentences, paragraphs split by newlines."""
    rng = np.random.default_rng(seed)
    words = lexicon()
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    docs = []
    for _ in range(n_docs):
        out = []
        for s in range(rng.integers(*sentences)):
            sentence = " ".join(rng.choice(words, size=rng.integers(4, 14), p=p))
            out.append(sentence.capitalize() + "." + ("\n" if s % 4 == 3 else " "))
        docs.append("".join(out).strip())
    return docs


def junk(seed: int = 0, words: int = 120) -> str:
    """High-entropy text: random strings of letters, digits and symbols, separated by spaces."""
    rng = np.random.default_rng(seed)
    alphabet = list("qxzjwk0123456789#%&$@+=^~")
    return " ".join("".join(rng.choice(alphabet, size=rng.integers(3, 10))) for _ in range(words))


def write_jsonl(path, docs, field="text", opener=open):
    with opener(path, "wt", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({field: d, "source": "test"}) + "\n")
    return path


def config(tmp_path, source, **kw) -> DataConfig:
    base = {"source": source, "vocab_size": 300, "seq_len": 32, "compressibility": None, "ordering": "none",
            "cache_dir": str(tmp_path / "cache")}
    return DataConfig(**(base | kw))


def cache_entries(tmp_path) -> list[str]:
    root = tmp_path / "cache" / "data"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture
def corpus(tmp_path):
    docs = prose(60)
    return docs, write_jsonl(tmp_path / "corpus.jsonl", docs)


# ------------------------------------------------------------------------------------------ packing


def test_packing_is_documents_joined_by_sep_without_padding(tmp_path, corpus):
    docs, path = corpus
    data = prepare(config(tmp_path, f"jsonl:{path}"), progress=False)
    tok = data.tokenizer()
    expected = []
    for i, enc in enumerate(tok.encode_batch(docs, add_special_tokens=False)):
        expected += ([SpecialIds.SEP] if i else []) + enc.ids
    n, seq_len = data.tokens.shape
    assert seq_len == 32 and n == len(expected) // 32  # ragged tail dropped
    assert data.tokens.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(data.tokens).ravel(), expected[: n * 32])
    assert not (np.asarray(data.tokens) == SpecialIds.PAD).any()
    assert data.stats["tokens"] == len(expected) - (len(docs) - 1)


def test_cls_before_each_document_and_sep_flag(tmp_path, corpus):
    _, path = corpus
    with_cls = np.asarray(prepare(config(tmp_path, f"jsonl:{path}", add_cls=True, seq_len=8), progress=False).tokens)
    stream = with_cls.ravel()
    assert stream[0] == SpecialIds.CLS
    after_sep = stream[1:][stream[:-1] == SpecialIds.SEP]
    assert (after_sep == SpecialIds.CLS).all() and len(after_sep) > 10
    no_sep = np.asarray(prepare(config(tmp_path, f"jsonl:{path}", add_sep=False), progress=False).tokens)
    assert not (no_sep == SpecialIds.SEP).any() and not (no_sep == SpecialIds.CLS).any()


def test_token_dtype_widens_past_16_bits():
    assert token_dtype(32768) == np.uint16 and token_dtype(2**16) == np.uint16
    assert token_dtype(2**16 + 1) == np.int32


def test_max_sequences_truncates_after_ordering(tmp_path, corpus):
    _, path = corpus
    full = prepare(config(tmp_path, f"jsonl:{path}", ordering="sentence-count"), progress=False)
    cut = prepare(config(tmp_path, f"jsonl:{path}", ordering="sentence-count", max_sequences=5), progress=False)
    np.testing.assert_array_equal(cut.tokens, full.tokens[:5])
    assert cut.stats["sequences_packed"] == len(full.tokens)


# ------------------------------------------------------------------------------------------ tokenizer


@pytest.mark.parametrize("model", ["wordpiece", "bpe", "unigram"])
def test_special_tokens_have_fixed_ids(model):
    tok = train_tokenizer(prose(40), DataConfig(tokenizer=model, vocab_size=200), progress=False)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4] == list(SpecialIds)
    assert 5 < tok.get_vocab_size() <= 200
    assert tok.encode("kalo", "mine").ids[0] == SpecialIds.CLS  # BERT template for downstream users


def test_normalisation_flags():
    docs = prose(20) + ["Café CAFÉ café ﬁ fi"]
    plain = train_tokenizer(docs, DataConfig(vocab_size=200), progress=False)
    assert plain.encode("CAFÉ").ids == plain.encode("cafe").ids  # lowercase + strip accents by default
    cased = train_tokenizer(docs, DataConfig(vocab_size=200, lowercase=False, strip_accents=False), progress=False)
    assert cased.encode("CAFÉ").ids != cased.encode("cafe").ids
    assert cased.encode("café").ids != cased.encode("cafe").ids
    nfkc = train_tokenizer(docs, DataConfig(vocab_size=200, nfkc=True), progress=False)
    assert nfkc.encode("ﬁ").ids == nfkc.encode("fi").ids
    assert plain.encode("ﬁ").ids != plain.encode("fi").ids


def test_tokenizer_json_saved_next_to_tokens(tmp_path, corpus):
    _, path = corpus
    data = prepare(config(tmp_path, f"jsonl:{path}", tokenizer="bpe"), progress=False)
    assert data.tokenizer_path == data.path / "tokenizer.json" and (data.path / "tokens.npy").exists()
    assert data.vocab_size == data.tokenizer().get_vocab_size() <= 300
    assert int(np.asarray(data.tokens).max()) < data.vocab_size


# ------------------------------------------------------------------------------------------ filters


def test_compressibility_filter_drops_junk_keeps_prose():
    docs = prose(40)
    mixed = docs[:20] + [junk(1)] + docs[20:] + [junk(2)]
    kept, stats = apply_filters(mixed, DataConfig(vocab_size=300, compressibility=0.5), progress=False)
    assert kept == docs
    assert stats["compressibility"] == {"before": 42, "kept": 40, "removed": 2, "threshold": 0.5}


def test_exact_dedup_drops_copies_keeps_first():
    docs = prose(10)
    dup = [docs[0], docs[1], docs[0], docs[2], docs[0], docs[1]]
    kept, stats = apply_filters(dup, DataConfig(compressibility=None, dedup="exact"), progress=False)
    assert kept == docs[:3] and stats["exact_dedup"]["removed"] == 3
    same, _ = apply_filters(dup, DataConfig(compressibility=None, dedup="none"), progress=False)
    assert same == dup


def test_substring_dedup_removes_later_copies_of_a_long_span():
    docs = prose(30, seed=3)
    span = prose(1, seed=99, sentences=(8, 9))[0]  # well over 20 tokens
    first = docs[0] + " " + span
    second = "Opening words here, " + span + " Closing words there."
    corpus = [first] + docs[1:15] + [second] + docs[15:]
    kept, stats = apply_filters(corpus, DataConfig(vocab_size=300, compressibility=None, dedup="substring",
                                                   dedup_min_tokens=20), progress=False)
    assert kept[0] == first  # first occurrence stays
    changed = kept[15]
    assert span not in changed and "Opening words here," in changed and "Closing words there." in changed
    assert stats["substring_dedup"]["documents_changed"] == 1 and stats["substring_dedup"]["removed"] == 0
    assert kept[1:15] + kept[16:] == docs[1:]  # shorter shared phrases are untouched


def test_substring_dedup_drops_a_document_that_is_only_a_repeat():
    docs = prose(20, seed=4)
    long_doc = max(docs, key=len)
    kept, stats = apply_filters(docs + ["  " + long_doc], DataConfig(vocab_size=300, compressibility=None,
                                                                      dedup="substring", dedup_min_tokens=10),
                                progress=False)
    assert stats["exact_dedup"]["removed"] == 0 and stats["substring_dedup"]["removed"] == 1
    assert kept == docs


def brute_force_repeats(flat: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    doc_of = np.repeat(np.arange(len(lengths)), lengths)
    seen, drop = set(), np.zeros(len(flat), dtype=bool)
    for i in range(len(flat) - k + 1):
        if doc_of[i] != doc_of[i + k - 1]:
            continue
        window = tuple(flat[i : i + k])
        if window in seen:
            drop[i : i + k] = True
        seen.add(window)
    return drop


@pytest.mark.parametrize("k", [2, 3, 5, 8, 13])
def test_repeated_span_mask_matches_brute_force(k):
    rng = np.random.default_rng(k)
    lengths = rng.integers(0, 40, size=30)
    flat = rng.integers(5, 9, size=int(lengths.sum())).astype(np.int32)  # tiny alphabet: many repeats
    ragged = Ragged(flat, np.concatenate([[0], np.cumsum(lengths)]))
    np.testing.assert_array_equal(repeated_span_mask(ragged, k), brute_force_repeats(flat, lengths, k))


def test_window_fingerprints_equal_iff_windows_equal():
    flat = np.random.default_rng(0).integers(0, 3, size=300)
    for k in (1, 4, 7, 50):
        keys = window_fingerprints(flat, k)
        assert len(keys) == len(flat) - k + 1
        windows = [tuple(flat[i : i + k]) for i in range(len(keys))]
        for i in range(0, len(windows), 7):
            for j in range(len(windows)):
                assert (keys[i] == keys[j]) == (windows[i] == windows[j])


def test_fingerprint_collisions_cannot_cut_text(monkeypatch):
    from cram_core.data import filters

    flat = np.arange(100, dtype=np.int32)  # no repeats at all
    ragged = Ragged(flat, np.array([0, 50, 100]))
    monkeypatch.setattr(filters, "window_fingerprints", lambda t, k: np.zeros(len(t) - k + 1, np.uint64))
    assert not repeated_span_mask(ragged, 5).any()


# ------------------------------------------------------------------------------------------ orderings


def test_count_sentences():
    assert count_sentences("") == 0 and count_sentences("one line without a stop") == 1
    assert count_sentences("A b. C d! E f? G") == 4
    assert count_sentences('He said "go." Then left.\nNew paragraph\n\nAnother one.') == 4


@pytest.fixture(scope="module")
def encoded():
    docs = prose(80, seed=5, sentences=(1, 20))
    tok = train_tokenizer(docs, DataConfig(vocab_size=300), progress=False)
    return docs, encode_documents(tok, docs, progress=False, desc="")


def test_every_ordering_is_a_permutation(encoded):
    docs, ragged = encoded
    for name in ORDERINGS:
        order = order_documents(docs, ragged, DataConfig(ordering=name))
        assert sorted(order.tolist()) == list(range(len(docs))), name


def test_sentence_count_order_is_non_increasing(encoded):
    docs, ragged = encoded
    order = order_documents(docs, ragged, DataConfig(ordering="sentence-count"))
    counts = [count_sentences(docs[i]) for i in order]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_fragment_count_order_is_non_increasing(encoded):
    docs, ragged = encoded
    cfg = DataConfig(ordering="fragment-count", seq_len=16)
    frags = fragment_counts(ragged, cfg)[order_documents(docs, ragged, cfg)]
    assert (np.diff(frags) <= 0).all() and frags[0] > frags[-1]
    assert fragment_counts(Ragged(np.zeros(62), np.array([0, 15, 31, 62])), cfg).tolist() == [1, 2, 2]


def test_unigram_orders_put_likely_documents_first_or_last():
    common, rare = "ka lo mi " * 20, "zu fi pe de ra el go " * 3
    docs = [rare, common, "ka lo zu fi " * 5] + prose(30, seed=6)
    tok = train_tokenizer(docs, DataConfig(vocab_size=300), progress=False)
    ragged = encode_documents(tok, docs, progress=False, desc="")
    first = order_documents(docs, ragged, DataConfig(ordering="unigram-likely-first"))
    last = order_documents(docs, ragged, DataConfig(ordering="unigram-likely-last"))
    counts = np.bincount(ragged.flat)
    logp = np.log(np.maximum(counts, 1) / counts.sum())
    scores = np.array([logp[ragged.doc(i)].mean() for i in range(len(docs))])
    assert (np.diff(scores[first]) <= 1e-12).all() and (np.diff(scores[last]) >= -1e-12).all()
    assert first.tolist().index(1) < first.tolist().index(0)  # the common-word doc before the rare one


def test_random_order_is_seeded(encoded):
    docs, ragged = encoded
    a = order_documents(docs, ragged, DataConfig(ordering="random", seed=1))
    b = order_documents(docs, ragged, DataConfig(ordering="random", seed=1))
    c = order_documents(docs, ragged, DataConfig(ordering="random", seed=2))
    assert (a == b).all() and (a != c).any() and (a != np.arange(len(docs))).any()
    assert (order_documents(docs, ragged, DataConfig(ordering="none")) == np.arange(len(docs))).all()


def test_ordering_changes_the_packed_stream(tmp_path, corpus):
    _, path = corpus
    none = prepare(config(tmp_path, f"jsonl:{path}"), progress=False)
    by_sentences = prepare(config(tmp_path, f"jsonl:{path}", ordering="sentence-count"), progress=False)
    assert none.path != by_sentences.path and not np.array_equal(none.tokens, by_sentences.tokens)
    assert by_sentences.stats["tokens"] == none.stats["tokens"]


# ------------------------------------------------------------------------------------------ sources


def test_compressed_jsonl_and_text_sources_read_the_same_documents(tmp_path):
    import zstandard

    docs = prose(12)
    write_jsonl(tmp_path / "a.jsonl.xz", docs[:4], opener=lzma.open)
    write_jsonl(tmp_path / "b.jsonl.gz", docs[4:8], opener=gzip.open)
    with open(tmp_path / "c.jsonl.zst", "wb") as fh:
        fh.write(zstandard.ZstdCompressor().compress("".join(json.dumps({"text": d}) + "\n" for d in docs[8:]).encode()))
    got, counts = read_documents(parse_sources(f"jsonl:{tmp_path}/*.jsonl.*"), text_field="text", max_documents=None, seed=0)
    assert got == docs and counts[0]["documents_read"] == 12
    (tmp_path / "t1.txt").write_text(docs[0] + "\n\n" + docs[1] + "\n  \n\n" + docs[2] + "\n")
    (tmp_path / "t2.txt").write_text(docs[3])
    got, _ = read_documents(parse_sources(f"text:{tmp_path}/t*.txt"), text_field="text", max_documents=None, seed=0)
    assert got == docs[:4]  # blank lines separate documents; single newlines stay inside


def test_relative_glob_custom_field_and_max_documents(tmp_path, monkeypatch):
    docs = prose(10)
    write_jsonl(tmp_path / "c.jsonl", docs, field="body")
    monkeypatch.chdir(tmp_path)
    got, _ = read_documents(parse_sources("jsonl:*.jsonl"), text_field="body", max_documents=4, seed=0)
    assert got == docs[:4]


def test_parquet_source(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = prose(8)
    pq.write_table(pa.table({"text": docs, "n": list(range(8))}), tmp_path / "d.parquet")
    got, _ = read_documents(parse_sources(f"parquet:{tmp_path}/*.parquet"), text_field="text", max_documents=None, seed=0)
    assert got == docs
    with pytest.raises(DataError, match="no column 'body'"):
        read_documents(parse_sources(f"parquet:{tmp_path}/*.parquet"), text_field="body", max_documents=None, seed=0)


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = prose(50)
    datasets.Dataset.from_dict({"text": docs, "label": [0] * 50}).save_to_disk(str(tmp_path / "ds"))
    data = prepare(config(tmp_path, f"hf:{tmp_path / 'ds'}"), progress=False)
    assert data.stats["documents_read"] == 50 and len(data.tokens) > 0
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": docs[:5]})}).save_to_disk(str(tmp_path / "dd"))
    got, _ = read_documents(parse_sources(f"hf:{tmp_path / 'dd'}"), text_field="content", max_documents=None, seed=0)
    assert got == docs[:5]
    with pytest.raises(DataError, match="no column 'text'"):
        read_documents(parse_sources(f"hf:{tmp_path / 'dd'}"), text_field="text", max_documents=None, seed=0)


def test_mixing_weights_set_document_proportions(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [f"alpha document {i}." for i in range(400)])
    write_jsonl(tmp_path / "b.jsonl", [f"beta document {i}." for i in range(300)])
    spec = f"jsonl:{tmp_path}/a.jsonl@0.75,jsonl:{tmp_path}/b.jsonl@0.25"
    docs, counts = read_documents(parse_sources(spec), text_field="text", max_documents=None, seed=0)
    alpha = np.array([d.startswith("alpha") for d in docs])
    # a limits the mix: 400 / 0.75 = 533 documents, 400 from a and 133 from b
    assert len(docs) == 533 and alpha.sum() == 400 and [c["documents_used"] for c in counts] == [400, 133]
    assert 0.6 < alpha[:100].mean() < 0.9 and 0.6 < alpha[-100:].mean() < 0.9  # interleaved, not blocks
    capped, _ = read_documents(parse_sources(spec), text_field="text", max_documents=100, seed=0)
    assert len(capped) == 100 and sum(d.startswith("alpha") for d in capped) == 75
    again, _ = read_documents(parse_sources(spec), text_field="text", max_documents=100, seed=0)
    other, _ = read_documents(parse_sources(spec), text_field="text", max_documents=100, seed=1)
    assert again == capped and other != capped
    both, _ = read_documents(parse_sources(f"jsonl:{tmp_path}/a.jsonl,jsonl:{tmp_path}/b.jsonl"), text_field="text",
                             max_documents=None, seed=0)
    assert len(both) == 700 and both[399].startswith("alpha") and both[400].startswith("beta")


def test_sample_is_bundled_and_small():
    (src,) = parse_sources("sample")
    assert src.kind == "jsonl" and os.path.getsize(src.files[0]) <= 3 * 2**20
    assert src.files[0].endswith(os.path.join("cram_core", "data", "sample", "sample-en.jsonl.xz"))


def test_tiny_preset_prepares_the_bundled_sample(tmp_path):
    from cram_core.presets import get_preset

    cfg = dataclasses.replace(get_preset("tiny").data, cache_dir=str(tmp_path / "cache"))
    data = prepare(cfg, progress=False)
    assert data.tokens.shape[1] == 64 and len(data.tokens) > 100
    assert data.vocab_size <= 2048 and data.tokens.dtype == np.uint16
    assert data.stats["documents_read"] == 551 and "compressibility" in data.stats["filters"]


# ------------------------------------------------------------------------------------------ cache


def test_second_prepare_is_a_cache_hit(tmp_path, corpus, monkeypatch):
    _, path = corpus
    cfg = config(tmp_path, f"jsonl:{path}")
    first = prepare(cfg, progress=False)
    mtime = first.path.stat().st_mtime_ns
    builds = []
    monkeypatch.setattr(pipeline, "build", lambda *a, **k: builds.append(a))
    second = prepare(cfg, progress=False)
    assert not first.cache_hit and second.cache_hit and not builds
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first.tokens, second.tokens)
    assert pipeline.cache_key(dataclasses.replace(cfg, cache_dir="/elsewhere"), parse_sources(cfg.source)) == \
        first.path.name  # cache_dir is not part of the key


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_two_builds_give_identical_ids(tmp_path, corpus, kind):
    """Trainers break frequency ties in hash-map order; ids are renumbered canonically so they don't."""
    _, path = corpus
    first = prepare(dataclasses.replace(config(tmp_path, f"jsonl:{path}"), tokenizer=kind), progress=False)
    other = dataclasses.replace(config(tmp_path / "b", f"jsonl:{path}"), tokenizer=kind)
    second = prepare(other, progress=False)
    assert first.path != second.path and not second.cache_hit
    np.testing.assert_array_equal(first.tokens, second.tokens)
    assert first.tokenizer().get_vocab() == second.tokenizer().get_vocab()


def test_a_damaged_cache_entry_is_rebuilt_not_used(tmp_path, corpus, capsys):
    _, path = corpus
    cfg = config(tmp_path, f"jsonl:{path}")
    first = prepare(cfg, progress=False)
    expected = np.array(first.tokens)
    tokens_file = first.path / "tokens.npy"
    del first
    with open(tokens_file, "r+b") as f:  # a half-copied cache
        f.truncate(tokens_file.stat().st_size // 2)
    again = prepare(cfg, progress=False)
    assert not again.cache_hit and "damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(again.tokens, expected)
    assert cache_entries(tmp_path) == [again.path.name]


def test_cache_key_sees_config_and_file_changes(tmp_path, corpus):
    docs, path = corpus
    cfg = config(tmp_path, f"jsonl:{path}")
    key = pipeline.cache_key(cfg, parse_sources(cfg.source))
    for field, value in [("seq_len", 64), ("seed", 1), ("tokenizer", "bpe"), ("dedup", "exact"),
                         ("ordering", "random"), ("add_cls", True), ("text_field", "body")]:
        assert pipeline.cache_key(dataclasses.replace(cfg, **{field: value}), parse_sources(cfg.source)) != key
    write_jsonl(path, docs[:-1])
    os.utime(path, ns=(1, 1))
    assert pipeline.cache_key(cfg, parse_sources(cfg.source)) != key


def test_cache_dir_falls_back_to_env(tmp_path, monkeypatch, corpus):
    _, path = corpus
    monkeypatch.setenv("CRAM_CACHE", str(tmp_path / "env-cache"))
    data = prepare(dataclasses.replace(config(tmp_path, f"jsonl:{path}"), cache_dir=""), progress=False)
    assert data.path.parent == tmp_path / "env-cache" / "data"


# ------------------------------------------------------------------------------------------ errors


def bad_inputs(tmp_path):
    write_jsonl(tmp_path / "ok.jsonl", prose(20))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    write_jsonl(tmp_path / "nofield.jsonl", ["x"], field="body")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (tmp_path / "number.jsonl").write_text('{"text": 5}\n')
    (tmp_path / "trunc.jsonl.xz").write_bytes(lzma.compress(b'{"text": "abc"}\n' * 100)[:40])
    ok = tmp_path / "ok.jsonl"
    return [
        ({"source": "csv:data/*.csv"}, "unknown source kind 'csv'"),
        ({"source": f"jsonl:{tmp_path}/nothing-*.jsonl"}, "matches no file"),
        ({"source": f"jsonl:{tmp_path}/latin1.jsonl"}, "latin1.jsonl:1: not valid UTF-8"),
        ({"source": f"text:{tmp_path}/latin1.txt"}, "latin1.txt: not valid UTF-8"),
        ({"source": f"jsonl:{tmp_path}/nofield.jsonl"}, "nofield.jsonl:1: no field 'text'"),
        ({"source": f"jsonl:{tmp_path}/broken.jsonl"}, "broken.jsonl:2: not valid JSON"),
        ({"source": f"jsonl:{tmp_path}/number.jsonl"}, "number.jsonl:1: field 'text' is int"),
        ({"source": f"jsonl:{tmp_path}/trunc.jsonl.xz"}, "trunc.jsonl.xz: cannot read"),
        ({"source": f"jsonl:{ok}@0.5,jsonl:{ok}"}, "weight"),
        ({"source": f"jsonl:{ok}@-1"}, "weight must be a positive number"),
        ({"source": f"jsonl:{ok},"}, "empty part"),
        ({"source": f"jsonl:{ok}", "compressibility": 0.01}, "no documents left after filtering"),
        ({"source": f"jsonl:{ok}", "max_documents": 1, "seq_len": 4096}, "corpus too small"),
    ]


def test_bad_inputs_fail_cleanly_and_leave_no_cache(tmp_path):
    for kw, message in bad_inputs(tmp_path):
        with pytest.raises(DataError) as info:
            prepare(config(tmp_path, **kw), progress=False)
        assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
        assert message in str(info.value) and "\n" not in str(info.value), (kw, str(info.value))
        assert cache_entries(tmp_path) == [], kw


# ------------------------------------------------------------------------------------------ CLI


def cli(*args):
    repo = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-m", "cram_core.data", *args], check=False, capture_output=True,
                          text=True, env=os.environ | {"PYTHONPATH": repo})


def test_cli_prepare_prints_statistics_then_hits_the_cache(tmp_path, corpus):
    _, path = corpus
    args = ["prepare", "--no-progress", f"data.source=jsonl:{path}", "data.vocab_size=300", "data.seq_len=32",
            "data.dedup=exact", f"data.cache_dir={tmp_path / 'cache'}"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "documents read     60" in first.stdout and "exact_dedup" in first.stdout and "tokens/s" in first.stdout
    second = cli(*args)
    assert second.returncode == 0 and "(cache hit)" in second.stdout and "(cache hit)" not in first.stdout


@pytest.mark.parametrize("args, message", [
    (["data.source=csv:x"], "error: data.source: unknown source kind 'csv'"),
    (["data.vocab_size=abc"], "error: data.vocab_size: expected an integer"),
    (["model.num_layers=2"], "error: prepare takes only data.* overrides"),
    (["--preset", "nope"], "error: unknown preset 'nope'"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, args, message):
    proc = cli("prepare", "--no-progress", f"data.cache_dir={tmp_path / 'cache'}", *args)
    assert proc.returncode == 2 and proc.stderr.startswith(f"python -m cram_core.data: {message}"), proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and cache_entries(tmp_path) == []
