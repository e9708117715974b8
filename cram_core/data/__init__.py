"""Data pipeline: corpus sources, filters, tokenizer training, ordering, packing, cache, training loader.

``prepare(cfg: DataConfig)`` returns a ``PreparedData`` (packed [N, seq_len] token blocks + tokenizer);
``TrainLoader`` serves micro-batches of it. See sources.py for the ``data.source`` syntax.
"""

from cram_core.data.errors import DataError
from cram_core.data.pipeline import PreparedData, prepare
from cram_core.data.tokenizer import SPECIAL_TOKENS, SpecialIds

__all__ = ["SPECIAL_TOKENS", "DataError", "PreparedData", "SpecialIds", "TrainLoader", "prepare"]


def __getattr__(name: str):
    # TrainLoader needs torch (seconds to import); `python -m cram_core.data prepare` must not pay that
    # on a cache hit, so the loader module is imported on first use of the name.
    if name == "TrainLoader":
        from cram_core.data.loader import TrainLoader

        return TrainLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
