"""Tokenizer training (``tokenizers``) and fast batch encoding into a ragged token array.

Every tokenizer model shares one normaliser (BERT's, with the lowercase / accent flags, NFKC first when
asked) and one pre-tokenizer (BERT's whitespace + punctuation split), so the ``data.tokenizer`` ablation
changes only the subword model. Special tokens come first in the vocabulary, at fixed ids.
"""

from __future__ import annotations

import json

from dataclasses import dataclass
from enum import IntEnum
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np

from cram_core.config import DataConfig
from cram_core.data.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class SpecialIds(IntEnum):
    """Ids of SPECIAL_TOKENS in every tokenizer this package trains."""

    PAD = 0
    UNK = 1
    CLS = 2
    SEP = 3
    MASK = 4


# At most this many distinct characters enter the vocabulary (BERT's choice); the rarest others
# become [UNK], so a few exotic symbols cannot eat a small vocabulary.
ALPHABET_LIMIT = 1000
# Documents per encode_batch call: large enough that the Rust thread pool has work for every core,
# small enough that the progress bar moves and the Python Encoding objects stay few.
ENCODE_CHUNK = 1024


def _wordpiece(cfg: DataConfig, progress: bool):
    from tokenizers import models, trainers

    trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        limit_alphabet=ALPHABET_LIMIT, show_progress=progress)
    return models.WordPiece(unk_token="[UNK]"), trainer


def _bpe(cfg: DataConfig, progress: bool):
    from tokenizers import models, trainers

    # "##" continuation marks like WordPiece's, so both decode with the same decoder
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  limit_alphabet=ALPHABET_LIMIT, continuing_subword_prefix="##",
                                  show_progress=progress)
    return models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"), trainer


def _unigram(cfg: DataConfig, progress: bool):
    from tokenizers import models, trainers

    trainer = trainers.UnigramTrainer(vocab_size=cfg.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token="[UNK]", show_progress=progress)
    return models.Unigram(), trainer


TOKENIZER_MODELS = {"wordpiece": _wordpiece, "bpe": _bpe, "unigram": _unigram}


def train_tokenizer(docs: list[str], cfg: DataConfig, *, progress: bool) -> Tokenizer:
    """A new ``cfg.tokenizer`` tokenizer of at most ``cfg.vocab_size`` tokens trained on ``docs``."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors

    model, trainer = TOKENIZER_MODELS[cfg.tokenizer](cfg, progress)
    tok = Tokenizer(model)
    steps = [normalizers.NFKC()] if cfg.nfkc else []
    steps.append(normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=cfg.strip_accents, lowercase=cfg.lowercase))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if cfg.tokenizer != "unigram":
        tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(docs, trainer, length=len(docs))
    tok = canonical_ids(tok)
    for expected, token in enumerate(SPECIAL_TOKENS):
        # internal invariant: the trainers put special tokens first, in the order given
        assert tok.token_to_id(token) == expected, (token, tok.token_to_id(token))
    # for downstream users of tokenizer.json; packing encodes with add_special_tokens=False
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", SpecialIds.CLS), ("[SEP]", SpecialIds.SEP)],
    )
    return tok


def canonical_ids(tok: Tokenizer) -> Tokenizer:
    """The same tokenizer with ids that depend only on what was learned, not on how the trainer ran.

    The trainers break ties between equally frequent entries in hash-map order, so two builds of one
    corpus learn the same vocabulary under permuted ids (seen: 54 of 2048 WordPiece ids), which would make
    seeded runs irreproducible across cache rebuilds. Ids never affect how text is split (WordPiece and BPE
    match by string; Unigram by score), so we renumber: special tokens first, then the rest in a fixed order.
    """
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    model = spec["model"]
    specials = list(SPECIAL_TOKENS)
    if model["type"] == "Unigram":
        entries = [e for e in model["vocab"] if e[0] not in specials]
        by_token = {e[0]: e for e in model["vocab"]}
        entries.sort(key=lambda e: (-e[1], e[0]))
        model["vocab"] = [by_token[t] for t in specials] + entries
        if model.get("unk_id") is not None:
            model["unk_id"] = specials.index("[UNK]")
    else:  # WordPiece and BPE: a token -> id map
        rest = sorted(t for t in model["vocab"] if t not in specials)
        model["vocab"] = {t: i for i, t in enumerate(specials + rest)}
    ids = {t: i for i, t in enumerate(specials)}
    for added in spec.get("added_tokens", []):
        added["id"] = ids.get(added["content"], added["id"])
    return Tokenizer.from_str(json.dumps(spec))


@dataclass(slots=True)
class Ragged:
    """Token ids of many documents: document i is ``flat[offsets[i]:offsets[i + 1]]``."""

    flat: np.ndarray
    "int32 [total tokens]"
    offsets: np.ndarray
    "int64 [documents + 1], starts at 0"

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def select(self, keep: np.ndarray) -> Ragged:
        """The documents where boolean ``keep`` is true, in order."""
        lengths = self.lengths[keep]
        token_keep = np.repeat(keep, self.lengths)
        return Ragged(self.flat[token_keep], np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def encode_documents(tok: Tokenizer, docs: list[str], *, progress: bool, desc: str) -> Ragged:
    """Token ids of every document (no special tokens), encoded in parallel chunks."""
    from tqdm import tqdm

    parts, lengths = [], []
    with tqdm(total=len(docs), desc=desc, unit="doc", disable=not progress, leave=False) as bar:
        for start in range(0, len(docs), ENCODE_CHUNK):
            chunk = docs[start : start + ENCODE_CHUNK]
            # encode_batch_fast skips offsets; we only need ids here (about 3x faster)
            ids = [e.ids for e in tok.encode_batch_fast(chunk, add_special_tokens=False)]
            counts = [len(x) for x in ids]
            parts.append(np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=sum(counts)))
            lengths.extend(counts)
            bar.update(len(chunk))
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return Ragged(flat, offsets)


def check_vocab(tok: Tokenizer) -> int:
    """The trained vocabulary size; DataError when the corpus was too small to learn anything."""
    size = tok.get_vocab_size()
    if size <= len(SPECIAL_TOKENS):
        raise DataError(f"tokenizer learned no tokens beyond the {len(SPECIAL_TOKENS)} special ones; corpus too small")
    return size
