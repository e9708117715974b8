"""Tokenizer training (``tokenizers``) and fast batch encoding into a ragged token array.

Every tokenizer model shares one normaliser (BERT's, with the lowercase / accent flags, NFKC first when
asked) and one pre-tokenizer (BERT's whitespace + punctuation split), so the ``data.tokenizer`` ablation
changes only the subword model. Special tokens come first in the vocabulary, at fixed ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
# Unigram scores are rounded to multiples of this power of two. The trainer sums its EM statistics in
# hash-map order, so two builds learn scores that differ in the last bits (seen: 2.5e-14), and the
# Viterbi split then flips between near-equal paths. On the grid every score, and every sum of a few
# hundred of them, is exact, so one rounded score table gives one split. A build differs only if a score
# lands within ~1e-14 of a grid point (odds about 1e-9 per score); 2**-16 is far below any score gap that
# matters for segmentation.
UNIGRAM_SCORE_GRID = 2.0**-16
CONTINUATION = "##"


@dataclass(frozen=True, slots=True)
class Symbols:
    """The initial symbols of a merge-based (WordPiece / BPE) trainer, chosen before it runs.

    The trainers give ids to continuation symbols ("##e") in the order they meet words in a hash map and
    break ties between equally frequent merges by those ids, so which of the tied merges fill the last
    vocabulary slots changed from build to build (seen: 20-56 of 32768 tokens at the bundled sample).
    Pinning the continuations as leading tokens in a fixed order, and the alphabet as a given initial
    alphabet, leaves the trainers nothing to order by hash, so the learned merges are a function of the corpus.
    """

    alphabet: list[str]
    "the ALPHABET_LIMIT most frequent characters (count, then code point), in code point order"
    continuations: list[str]
    "'##' + c for every alphabet character c that occurs inside a word, in code point order"


def _wordpiece(cfg: DataConfig, progress: bool, symbols: Symbols | None):
    from tokenizers import models, trainers

    trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, show_progress=progress,
                                        **_merge_trainer_args(symbols))
    return models.WordPiece(unk_token="[UNK]"), trainer


def _bpe(cfg: DataConfig, progress: bool, symbols: Symbols | None):
    from tokenizers import models, trainers

    # "##" continuation marks like WordPiece's, so both decode with the same decoder
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, continuing_subword_prefix=CONTINUATION,
                                  show_progress=progress, **_merge_trainer_args(symbols))
    return models.BPE(unk_token="[UNK]", continuing_subword_prefix=CONTINUATION), trainer


def _merge_trainer_args(symbols: Symbols | None) -> dict:
    assert symbols is not None  # internal invariant: merge-based kinds are given their symbols
    return {"special_tokens": [*SPECIAL_TOKENS, *symbols.continuations], "initial_alphabet": symbols.alphabet,
            "limit_alphabet": len(symbols.alphabet)}


def _unigram(cfg: DataConfig, progress: bool, symbols: Symbols | None):
    from tokenizers import models, trainers

    trainer = trainers.UnigramTrainer(vocab_size=cfg.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token="[UNK]", show_progress=progress)
    return models.Unigram(), trainer


@dataclass(frozen=True, slots=True)
class TokenizerKind:
    build: Callable[[DataConfig, bool, Symbols | None], tuple]
    "(cfg, progress, symbols) -> (untrained model, trainer)"
    merges: bool
    "grows the vocabulary by merging '##'-continued symbols (WordPiece, BPE), so it needs pinned Symbols"


TOKENIZER_MODELS = {
    "wordpiece": TokenizerKind(build=_wordpiece, merges=True),
    "bpe": TokenizerKind(build=_bpe, merges=True),
    "unigram": TokenizerKind(build=_unigram, merges=False),
}


def train_tokenizer(docs: list[str], cfg: DataConfig, *, progress: bool) -> Tokenizer:
    """A new ``cfg.tokenizer`` tokenizer of at most ``cfg.vocab_size`` tokens trained on ``docs``.

    The result depends only on ``docs`` and ``cfg``: two builds give the same tokens under the same ids.
    """
    from tokenizers import decoders, processors

    kind = TOKENIZER_MODELS[cfg.tokenizer]
    symbols = initial_symbols(docs, cfg) if kind.merges else None
    model, trainer = kind.build(cfg, progress, symbols)
    tok = _untrained(model, cfg)
    if kind.merges:
        tok.decoder = decoders.WordPiece(prefix=CONTINUATION)
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


def _untrained(model, cfg: DataConfig) -> Tokenizer:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    tok = Tokenizer(model)
    steps = [normalizers.NFKC()] if cfg.nfkc else []
    steps.append(normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=cfg.strip_accents, lowercase=cfg.lowercase))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def initial_symbols(docs: list[str], cfg: DataConfig) -> Symbols:
    """The alphabet and continuation symbols the merge trainers would start from on ``docs``, in a fixed order.

    One merge-free trainer pass (vocabulary size 1) finds every character and every continuation exactly
    as the trainers see them, the same way whatever order it meets them in. When there are more than
    ALPHABET_LIMIT characters, the rarest go, counted on the raw text with each character normalised alone
    (exact unless NFKC joins characters) and ties broken by code point.
    """
    from tokenizers import models, trainers

    probe = _untrained(models.WordPiece(unk_token="[UNK]"), cfg)
    probe.train_from_iterator(docs, trainers.WordPieceTrainer(
        vocab_size=1, special_tokens=list(SPECIAL_TOKENS), continuing_subword_prefix=CONTINUATION,
        show_progress=False), length=len(docs))
    found = set(probe.get_vocab()) - set(SPECIAL_TOKENS)
    alphabet = sorted(t for t in found if len(t) == 1)
    if len(alphabet) > ALPHABET_LIMIT:
        counts = _char_counts(docs, probe.normalizer)
        alphabet = sorted(sorted(alphabet, key=lambda c: (-counts.get(c, 0), c))[:ALPHABET_LIMIT])
    return Symbols(alphabet=alphabet,
                   continuations=[CONTINUATION + c for c in alphabet if CONTINUATION + c in found])


def _char_counts(docs: list[str], normalizer) -> dict[str, int]:
    """How often each normalised character occurs in ``docs``, normalising each distinct raw character alone."""
    raw = np.zeros(0x110000, dtype=np.int64)
    for start in range(0, len(docs), ENCODE_CHUNK):
        text = "".join(docs[start : start + ENCODE_CHUNK])
        raw += np.bincount(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32), minlength=len(raw))
    counts: dict[str, int] = {}
    for code in np.flatnonzero(raw).tolist():
        for c in normalizer.normalize_str(chr(code)):
            counts[c] = counts.get(c, 0) + int(raw[code])
    return counts


def canonical_ids(tok: Tokenizer) -> Tokenizer:
    """The same tokenizer with ids that depend only on what was learned, not on how the trainer ran.

    Special tokens come first at their fixed ids, then the rest in a fixed order: by string for WordPiece
    and BPE (which match by string), by (rounded score, string) for Unigram. The continuation symbols
    pinned for training stay in the vocabulary but are not added tokens: text never matches them whole.
    """
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    model = spec["model"]
    specials = list(SPECIAL_TOKENS)
    if model["type"] == "Unigram":
        rounded = [[t, round(s / UNIGRAM_SCORE_GRID) * UNIGRAM_SCORE_GRID] for t, s in model["vocab"]]
        by_token = {e[0]: e for e in rounded}
        entries = sorted((e for e in rounded if e[0] not in specials), key=lambda e: (-e[1], e[0]))
        model["vocab"] = [by_token[t] for t in specials] + entries
        if model.get("unk_id") is not None:
            model["unk_id"] = specials.index("[UNK]")
    else:  # WordPiece and BPE: a token -> id map
        rest = sorted(t for t in model["vocab"] if t not in specials)
        model["vocab"] = {t: i for i, t in enumerate(specials + rest)}
    ids = {t: i for i, t in enumerate(specials)}
    spec["added_tokens"] = [a | {"id": ids[a["content"]]} for a in spec.get("added_tokens", [])
                            if a["content"] in ids]
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
