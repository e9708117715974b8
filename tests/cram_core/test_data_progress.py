"""Data preparation draws one progress bar (over its stages), not one per tokenizer trainer and encoder."""

from __future__ import annotations

import dataclasses

from cram_core.data import filters, pipeline, tokenizer
from cram_core.presets import get_preset


def test_data_preparation_shows_one_progress_bar(tmp_path, monkeypatch, capfd) -> None:
    # before: a first build drew the filter tokenizer's and the final tokenizer's trainer bars and two
    # encoder bars (eight on a terminal); now every stage reports into the build's one bar
    asked: list[tuple[str, bool]] = []

    def spy(module, name):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            asked.append((name, kwargs["progress"]))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for module in (tokenizer, filters):
        spy(module, "train_tokenizer")
        spy(module, "encode_documents")
    cfg = dataclasses.replace(get_preset("tiny").data, cache_dir=str(tmp_path), max_documents=60,
                              compressibility=0.3)
    prepared = pipeline.prepare(cfg, progress=True)
    assert not prepared.cache_hit
    assert sorted(asked) == [("encode_documents", False)] * 2 + [("train_tokenizer", False)] * 2
    frames = [f.strip() for f in capfd.readouterr().err.replace("\r", "\n").splitlines() if f.strip()]
    assert frames and all(f.startswith("preparing data: ") for f in frames), frames
    assert {f.split()[2] for f in frames} == {"read", "filter", "tokenizer", "encode", "pack"}
