"""Downstream fine-tuning of a finished pretraining run under the "GLUE sane" protocol (ABLATIONS.md).

A run directory (``python -m cram_core.train --out DIR``) holds model.safetensors, config.json and
tokenizer.json. Every task is fine-tuned from those weights once per seed and scored on its dev split after
the last epoch. Per-seed records are the primary output: the median over seeds (the paper's figure) is also
computed here for convenience, but analysis should keep the individual values.

One module per concern: ``tasks`` (task files), ``metrics``, ``encoding`` (token ids, padding, length
buckets), ``classifier`` (the run and its classifier), ``finetune`` (the loop) and ``cli``.

    python -m cram_core.downstream RUN_DIR --tasks rt-polarity,sva --seeds 5
"""

from cram_core.downstream.classifier import (WEIGHT_FILES, PretrainedRun, SequenceClassifier, build_classifier,
                                             load_run)
from cram_core.downstream.cli import main
from cram_core.downstream.encoding import (CLS_ID, MASK_ID, MAX_LENGTH, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID,
                                           PairEncoder, collate, length_batches)
from cram_core.downstream.errors import DownstreamError
from cram_core.downstream.finetune import (EVAL_BATCH_SIZE, default_parallel, evaluate_run, finetune, lr_factor,
                                           predict, resolve_device, summarize)
from cram_core.downstream.metrics import (METRICS, REGRESSION_METRICS, accuracy, f1, get_metric, matthews_corr,
                                          pearson, spearman)
from cram_core.downstream.tasks import (DATA_ROOT_ENV, DEFAULT_DATA_ROOT, Split, Task, list_tasks, load_task,
                                        resolve_data_root)

__all__ = [
    "CLS_ID", "DATA_ROOT_ENV", "DEFAULT_DATA_ROOT", "EVAL_BATCH_SIZE", "MASK_ID", "MAX_LENGTH", "METRICS", "PAD_ID",
    "REGRESSION_METRICS", "SEP_ID", "SPECIAL_TOKENS", "UNK_ID", "WEIGHT_FILES", "DownstreamError", "PairEncoder",
    "PretrainedRun", "SequenceClassifier", "Split", "Task", "accuracy", "build_classifier", "collate",
    "default_parallel", "evaluate_run", "f1", "finetune", "get_metric", "length_batches", "list_tasks", "load_run", "load_task",
    "lr_factor", "main", "matthews_corr", "pearson", "predict", "resolve_data_root", "resolve_device", "spearman",
    "summarize",
]
