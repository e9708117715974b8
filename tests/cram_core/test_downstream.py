import json
import lzma
import math
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from cram_core import downstream as ds
from cram_core.checkpoint import save_model
from cram_core.config import DataConfig, ModelConfig, RunConfig
from cram_core.model import build_model

REPO = Path(__file__).resolve().parents[2]

FILLER = ["the", "a", "movie", "film", "plot", "actor", "was", "is", "very", "quite", "long", "short", "and",
          "but", "dull", "scene", "story", "ending"]
KEY_WORD = "good"


def _sentence(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
    if positive:
        words.insert(rng.randint(0, len(words)), KEY_WORD)
    return " ".join(words)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.suffix == ".xz":
        path.write_bytes(lzma.compress(text.encode()))
    else:
        path.write_text(text)


def _write_task(root: Path, name: str, train: list[dict], dev: list[dict], *, fields=("sentence",),
                metric="accuracy", labels=("negative", "positive"), dev_file="dev.jsonl.xz") -> Path:
    task_dir = root / name
    task_dir.mkdir(parents=True)
    _write_jsonl(task_dir / "train.jsonl", train)
    _write_jsonl(task_dir / dev_file, dev)
    meta = {"name": name, "text_fields": list(fields), "label_field": "label", "labels": list(labels),
            "metric": metric, "files": {"train": "train.jsonl", "dev": dev_file}}
    (task_dir / "task.json").write_text(json.dumps(meta))
    return task_dir


def _keyword_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        rows.append({"sentence": _sentence(rng, positive), "label": int(positive)})
    return rows


@pytest.fixture(autouse=True)
def one_thread():
    # a 2x32 model is dominated by thread hand-offs; one thread is faster and steadier on a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A run dir like `train --out` writes, with a random-init 2x32 model and a WordLevel tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    root = tmp_path_factory.mktemp("run")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(FILLER + [KEY_WORD, "x", "y", "z"])],
                            trainers.WordLevelTrainer(special_tokens=list(ds.SPECIAL_TOKENS)))
    # a template the fine-tuning layout must not inherit (it would double the [CLS])
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok_path = root / "source-tokenizer.json"
    tok.save(str(tok_path))
    model_cfg = ModelConfig(num_layers=2, hidden_size=32, num_heads=2, ffn_size=64, max_seq_len=24)
    cfg = RunConfig(model=model_cfg, data=DataConfig(vocab_size=64, seq_len=24))
    torch.manual_seed(0)
    model = build_model(model_cfg, tok.get_vocab_size())
    out = root / "out"
    save_model(out, model, cfg, SimpleNamespace(vocab_size=tok.get_vocab_size(), tokenizer_path=tok_path))
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    _write_task(root, "keyword", _keyword_rows(320, seed=1), _keyword_rows(200, seed=2))
    rng = random.Random(3)
    reg = []
    for _ in range(120):
        k = rng.randint(0, 4)
        reg.append({"sentence": " ".join([KEY_WORD] * k + [rng.choice(FILLER) for _ in range(3)]), "label": k / 4})
    _write_task(root, "count", reg[:80], reg[80:], metric="pearson", labels=())
    return root


# ------------------------------------------------------------------------------------------- metrics


def test_metric_hand_values():
    assert ds.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    # tp=2 fp=1 fn=1 -> 2*2 / (2*2 + 1 + 1)
    assert ds.f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == pytest.approx(2 / 3)
    assert ds.f1([0, 0], [0, 0]) == 0.0
    # tp=3 tn=3 fp=1 fn=1 -> (9 - 1) / sqrt(4 * 4 * 4 * 4)
    assert ds.matthews_corr([1, 1, 1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1, 1, 0]) == pytest.approx(0.5)
    assert ds.matthews_corr([0, 1, 2, 2], [0, 1, 2, 2]) == pytest.approx(1.0)
    assert ds.matthews_corr([1, 0], [0, 1]) == pytest.approx(-1.0)
    assert ds.matthews_corr([1, 1, 1], [0, 1, 1]) == 0.0  # constant prediction: chance, not NaN


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    p = y + rng.normal(scale=0.5, size=50)
    assert ds.pearson(p, y) == pytest.approx(stats.pearsonr(p, y).statistic)
    assert ds.spearman(p, y) == pytest.approx(stats.spearmanr(p, y).statistic)
    assert ds.pearson(np.ones(50), y) == 0.0


def test_unknown_metric_lists_the_valid_names():
    with pytest.raises(ValueError, match="accuracy, matthews_corr, f1, pearson"):
        ds.get_metric("auc")


# --------------------------------------------------------------------------------------------- tasks


def test_load_task_reads_plain_and_xz_and_caps_with_a_seeded_shuffle(data_root):
    full = ds.load_task(data_root / "keyword")
    assert (len(full.train), len(full.dev), full.num_labels, full.metric) == (320, 200, 2, "accuracy")
    assert full.train.texts[0] == (_keyword_rows(1, seed=1)[0]["sentence"],)
    capped = ds.load_task(data_root / "keyword", max_train=50, max_dev=20)
    again = ds.load_task(data_root / "keyword", max_train=50, max_dev=20)
    assert (len(capped.train), len(capped.dev)) == (50, 20)
    assert capped.train == again.train and capped.dev == again.dev
    assert set(capped.train.texts) <= set(full.train.texts)
    assert capped.train.texts != full.train.texts[:50]  # shuffled, not the file's head
    reg = ds.load_task(data_root / "count")
    assert reg.regression and reg.num_labels == 1 and isinstance(reg.dev.labels[0], float)


def test_load_task_rejects_bad_labels_and_missing_files(tmp_path):
    _write_task(tmp_path, "bad", [{"sentence": "a", "label": 2}], [{"sentence": "a", "label": 0}])
    with pytest.raises(ds.DownstreamError, match="label 2"):
        ds.load_task(tmp_path / "bad")
    with pytest.raises(ds.DownstreamError, match="no task.json"):
        ds.load_task(tmp_path / "nothing-here")


def test_data_root_resolution_prefers_argument_then_env(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.DATA_ROOT_ENV, str(tmp_path))
    assert ds.resolve_data_root() == tmp_path
    assert ds.resolve_data_root(tmp_path / "..") == tmp_path / ".."
    with pytest.raises(ds.DownstreamError, match="not found"):
        ds.resolve_data_root(tmp_path / "missing")


# ------------------------------------------------------------------------------------------ encoding


def test_encoding_layout_ignores_the_tokenizer_template_and_truncates_longest_first(tiny_run):
    enc = ds.PairEncoder(tiny_run / "tokenizer.json", max_length=10)
    vocab = enc.tokenizer.get_vocab()
    (single,) = enc.encode([("Good movie",)])
    assert single == [ds.CLS_ID, vocab["good"], vocab["movie"], ds.SEP_ID]
    (pair,) = enc.encode([("good movie", "dull plot")])
    assert pair == [ds.CLS_ID, vocab["good"], vocab["movie"], ds.SEP_ID, vocab["dull"], vocab["plot"], ds.SEP_ID]
    # budget 10 - 3 = 7 content tokens: the 8-word text is cut to 5 so the 2-word one survives whole
    (cut,) = enc.encode([(" ".join(FILLER[:8]), "dull plot")])
    assert len(cut) == 10 and cut[:6] == [ds.CLS_ID] + [vocab[w] for w in FILLER[:5]]
    assert cut[6:] == [ds.SEP_ID, vocab["dull"], vocab["plot"], ds.SEP_ID]
    (long_single,) = enc.encode([(" ".join(FILLER),)])
    assert len(long_single) == 10 and long_single[-1] == ds.SEP_ID


def test_collate_pads_right_with_pad_id_and_masks():
    ids, mask = ds.collate([[2, 7, 3], [2, 3]])
    assert ids.tolist() == [[2, 7, 3], [2, 3, 0]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    assert ds.collate([[2, 3]], pad_to=4)[0].tolist() == [[2, 3, 0, 0]]


# ------------------------------------------------------------------------------------- run and model


def test_run_max_length_is_capped_by_the_pretrained_positions(tiny_run):
    run = ds.load_run(tiny_run)
    assert run.max_length == 24 and run.weights_path.name == "model.safetensors" and run.pad_to is None


def test_pooled_output_is_padding_invariant_in_eval_mode(tiny_run):
    run = ds.load_run(tiny_run)
    model = ds.build_classifier(run, 2).eval()
    enc = ds.PairEncoder(run.tokenizer_path, run.max_length)
    short, long = enc.encode([("good film",), ("the very long and quite dull story of a film",)])
    alone = model.pooled(*ds.collate([short]))
    batched = model.pooled(*ds.collate([short, long]))
    assert batched.shape[1] == 32
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-5)


def test_dropout_is_on_for_fine_tuning_and_off_in_eval(tiny_run):
    run = ds.load_run(tiny_run)
    assert run.config.model.dropout == 0.0  # pretrained without dropout ...
    model = ds.build_classifier(run, 2)
    ids, mask = ds.collate([[2, 5, 6, 7, 3]])
    model.train()
    # ... but the encoder itself now drops (the head's dropout alone would not change encode())
    assert not torch.equal(model.encoder.encode(ids, mask), model.encoder.encode(ids, mask))
    model.eval()
    assert torch.equal(model(ids, mask), model(ids, mask))


def test_lr_schedule_warms_up_then_decays_to_zero():
    total = 100
    factors = [ds.lr_factor(s, total, 0.1) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5)
    assert 0 < factors[-1] < 0.001 and all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert ds.lr_factor(0, 3, 0.0) == 1.0


# --------------------------------------------------------------------------------------- fine-tuning


def test_fine_tuning_learns_a_keyword_task_well_above_chance(tiny_run, data_root):
    # a random-init encoder needs a larger LR than the protocol's 4e-5 to learn in 80 updates; one seed in
    # a few stays stuck at chance, which the median over three seeds absorbs (as the paper's median does)
    results = ds.evaluate_run(tiny_run, ["keyword"], data_root=data_root, seeds=3, epochs=4, lr=3e-3,
                              device="cpu")
    assert [(r["task"], r["metric"], r["seed"]) for r in results] == [("keyword", "accuracy", s) for s in range(3)]
    summary = ds.summarize(results)["keyword"]
    assert summary["median"] >= 0.8, [r["value"] for r in results]  # chance is 0.5 on the balanced dev set
    assert all(r["n_train"] == 320 and r["n_dev"] == 200 for r in results)


def test_regression_task_trains_with_one_output(tiny_run, data_root):
    (record,) = ds.evaluate_run(tiny_run, ["count"], data_root=data_root, epochs=2, lr=3e-3, device="cpu")
    assert record["metric"] == "pearson" and math.isfinite(record["value"])


def test_fine_tuning_is_reproducible_per_seed(tiny_run, data_root):
    run = ds.load_run(tiny_run)
    task = ds.load_task(data_root / "keyword", max_train=48, max_dev=32)
    rng_before = torch.get_rng_state()
    a = ds.finetune(run, task, seed=3, epochs=1, lr=1e-3, device="cpu")
    b = ds.finetune(run, task, seed=3, epochs=1, lr=1e-3, device="cpu")
    assert (a["value"], a["train_loss"]) == (b["value"], b["train_loss"])
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's stream is not reseeded


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_prints_a_table_and_writes_json(tiny_run, data_root, tmp_path, capsys):
    out = tmp_path / "scores.json"
    rc = ds.main([str(tiny_run), "--tasks", "keyword", "--epochs", "1", "--seeds", "2", "--max-train", "64",
                  "--max-dev", "40", "--data-root", str(data_root), "--json", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "keyword" in printed and "median" in printed
    payload = json.loads(out.read_text())
    assert [r["seed"] for r in payload["results"]] == [0, 1]
    assert payload["medians"]["keyword"]["metric"] == "accuracy"
    assert payload["results"][0]["n_train"] == 64 and payload["results"][0]["n_dev"] == 40


def test_cli_unknown_task_lists_the_tasks_found(tiny_run, data_root, capsys):
    rc = ds.main([str(tiny_run), "--tasks", "keyword,nope", "--data-root", str(data_root)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "nope" in err and "count, keyword" in err


def test_cli_missing_run_dir_or_files_exit_2_with_one_line(tiny_run, data_root, tmp_path, capsys):
    assert ds.main([str(tmp_path / "no-run"), "--tasks", "keyword", "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "does not exist" in err
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_run / "config.json").read_text())
    assert ds.main([str(partial), "--tasks", "keyword", "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "tokenizer.json" in err and "model.safetensors" in err


def test_module_entry_point_reports_bad_input_on_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cram_core.downstream", str(tmp_path / "missing"), "--tasks", "x"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "does not exist" in proc.stderr


def test_cli_usage_errors_are_one_line_too(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        ds.main([str(tmp_path), "--tasks", "x", "--seeds", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "--seeds" in err


# ------------------------------------------------------------------------------ speed (issue 9 item 3)


def _padded_tokens(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_length_batches_cover_every_example_once_and_cut_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 60) for _ in range(1003)]
    batches = ds.length_batches(lengths, 16, torch.Generator().manual_seed(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1003))
    assert [len(b) for b in batches].count(16) == len(batches) - 1  # one short batch, as a plain shuffle has
    assert batches == ds.length_batches(lengths, 16, torch.Generator().manual_seed(1))  # seeded
    # before: a random order padded every batch to its longest member
    order = torch.randperm(1003, generator=torch.Generator().manual_seed(1)).tolist()
    plain = [order[i : i + 16] for i in range(0, 1003, 16)]
    assert _padded_tokens(batches, lengths) < 0.75 * _padded_tokens(plain, lengths)


def test_length_batches_keep_labels_mixed_where_length_tracks_the_label():
    # one token longer for every positive: exact-length sorting would make most batches one-label
    lengths = [10 + (i % 2) for i in range(640)]
    batches = ds.length_batches(lengths, 16, torch.Generator().manual_seed(0))
    one_label = sum(len({i % 2 for i in b}) == 1 for b in batches)
    assert one_label <= 2


def test_collate_rounds_the_width_up_to_a_multiple_within_the_limit():
    ids, mask = ds.collate([[2, 5, 3], [2, 5, 6, 7, 8, 3]], multiple=4)
    assert ids.shape == (2, 8) and mask.sum().item() == 9 and not mask[:, 6:].any()
    assert ds.collate([[2] * 9], multiple=8, limit=12)[0].shape == (1, 12)
    assert ds.collate([[2] * 13], multiple=8, limit=12)[0].shape == (1, 13)  # never shorter than the data
    assert ds.collate([[2, 3]])[0].shape == (1, 2)  # default: the longest, as before


def test_batched_prediction_matches_one_at_a_time(tiny_run):
    run = ds.load_run(tiny_run)
    model = ds.build_classifier(run, 2).eval()
    enc = ds.PairEncoder(run.tokenizer_path, run.max_length)
    rng = random.Random(4)
    seqs = enc.encode([(_sentence(rng, i % 3 == 0),) for i in range(37)])
    batched = ds.predict(model, seqs, regression=True, batch_size=256)
    alone = np.array([ds.predict(model, [s], regression=True, batch_size=1)[0] for s in seqs])
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-5)


def test_fine_tuning_record_reports_examples_per_second(tiny_run, data_root):
    task = ds.load_task(data_root / "keyword", max_train=64, max_dev=32)
    record = ds.finetune(ds.load_run(tiny_run), task, epochs=1, device="cpu")
    assert record["train_examples_per_second"] > 0 and record["n_train"] == 64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_steps_train_like_eager_steps(tiny_run, data_root):
    # dropout off: the graphs replay the eager step's arithmetic, so the runs agree to bf16 noise
    task = ds.load_task(data_root / "keyword", max_train=120, max_dev=64)
    run = ds.load_run(tiny_run)
    graphed = ds.finetune(run, task, epochs=2, dropout=0.0, lr=3e-3, device="cuda")
    eager = ds.finetune(run, task, epochs=2, dropout=0.0, lr=3e-3, device="cuda", cuda_graphs=False)
    assert graphed["train_loss"] == pytest.approx(eager["train_loss"], rel=0.02, abs=0.02)
    assert abs(graphed["value"] - eager["value"]) <= 0.05


# --------------------------------------------------------------- seeds side by side (issue 9 item 3)

_TIMINGS = ("seconds", "train_examples_per_second")


def _without_timings(records):
    return [{k: v for k, v in r.items() if k not in _TIMINGS} for r in records]


def test_parallel_jobs_give_the_sequential_records_bit_for_bit_in_the_same_order(tiny_run, data_root):
    kwargs = dict(data_root=data_root, seeds=[0, 3], epochs=1, max_train=48, max_dev=32, lr=1e-3, device="cpu")
    alone = ds.evaluate_run(tiny_run, ["keyword", "count"], parallel=1, **kwargs)
    side_by_side = ds.evaluate_run(tiny_run, ["keyword", "count"], parallel=2, **kwargs)
    assert [(r["task"], r["seed"]) for r in side_by_side] == [("keyword", 0), ("keyword", 3), ("count", 0),
                                                              ("count", 3)]
    assert _without_timings(side_by_side) == _without_timings(alone)  # floats compared exactly
    assert not __import__("multiprocessing").active_children()


def test_the_default_on_cpu_starts_no_process_and_on_cuda_runs_up_to_four(tiny_run, data_root, monkeypatch):
    ft = sys.modules["cram_core.downstream.finetune"]  # the package's `finetune` is the function
    assert ds.default_parallel("cpu", 10) == 1
    monkeypatch.setattr(ft, "resolve_device", lambda device: torch.device("cuda"))
    assert (ds.default_parallel("auto", 10), ds.default_parallel("auto", 3)) == (4, 3)
    monkeypatch.undo()

    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool was started")

    monkeypatch.setattr(ft, "ProcessPoolExecutor", no_pool)
    records = ds.evaluate_run(tiny_run, ["keyword"], data_root=data_root, seeds=2, epochs=1, max_train=16,
                              max_dev=8, device="cpu")
    assert len(records) == 2


def test_a_failing_job_stops_the_pool_with_one_line_and_leaves_no_child(tiny_run, data_root):
    import multiprocessing

    with pytest.raises(ds.DownstreamError) as exc:
        ds.evaluate_run(tiny_run, ["keyword"], data_root=data_root, seeds=3, batch_size=0, max_train=16,
                        max_dev=8, device="cpu", parallel=2)
    message = str(exc.value)
    assert "\n" not in message and "keyword seed 0 failed" in message and "batch_size must be >= 1" in message
    assert not multiprocessing.active_children()


def test_parallel_below_one_is_refused_before_any_work(tiny_run, data_root, capsys):
    with pytest.raises(ds.DownstreamError, match="parallel must be an integer >= 1, got 0"):
        ds.evaluate_run(tiny_run, ["keyword"], data_root=data_root, parallel=0, device="cpu")
    with pytest.raises(SystemExit) as exc:
        ds.main([str(tiny_run), "--tasks", "keyword", "--parallel", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "--parallel" in err


def test_bench_prints_examples_per_second_and_equal_scores_per_parallel_setting(tiny_run, data_root, tmp_path,
                                                                                capsys):
    out = tmp_path / "bench.json"
    rc = ds.main(["bench", str(tiny_run), "--task", "keyword", "--seeds", "2", "--epochs", "1", "--max-train",
                  "32", "--max-dev", "16", "--parallel", "1,2", "--device", "cpu", "--data-root", str(data_root),
                  "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == "keyword: 32 train x 1 epochs x 2 seeds, 16 dev, accuracy"
    assert table[1].split() == ["parallel", "wall_s", "examples/s", "median", "mean", "sd", "scores"]
    assert [line.split()[0] for line in table[2:]] == ["1", "2"]
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["scores"] == rows[1]["scores"] and rows[0]["seeds"] == [0, 1]
    assert all(r["examples_per_second"] == pytest.approx(2 * 32 / r["wall_s"]) for r in rows)


def test_bench_usage_errors_are_one_line(tiny_run, capsys):
    with pytest.raises(SystemExit) as exc:
        ds.main(["bench", str(tiny_run), "--parallel", "1,0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "--parallel" in err


@pytest.mark.parametrize("failing, error", [("1 / 0", "b failed: ZeroDivisionError: division by zero"),
                                             ("__import__('os')._exit(3)", "failed: BrokenProcessPool: ")])
def test_a_failure_kills_the_jobs_still_running_instead_of_waiting_for_them(failing, error):
    import multiprocessing
    import time

    ft = sys.modules["cram_core.downstream.finetune"]
    t0 = time.perf_counter()
    # eval: a picklable stand-in for a long job beside a failing (or dying) one; test functions are not
    # importable by the spawned workers
    with pytest.raises(ds.DownstreamError, match="^fine-tuning ") as exc:
        ft._run_pool(eval, [("__import__('time').sleep(120)",), (failing,)], ["a", "b"], workers=2)
    assert error in str(exc.value) and "\n" not in str(exc.value)
    assert time.perf_counter() - t0 < 60
    assert not multiprocessing.active_children()


def test_module_entry_point_runs_the_bench_with_spawned_workers(tiny_run, data_root):
    # the spawned workers re-import the parent's main module: `python -m cram_core.downstream` must not re-run
    proc = subprocess.run([sys.executable, "-m", "cram_core.downstream", "bench", str(tiny_run), "--task", "keyword",
                           "--seeds", "2", "--epochs", "1", "--max-train", "16", "--max-dev", "8", "--parallel", "2",
                           "--device", "cpu", "--data-root", str(data_root)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].split()[0] == "2" and proc.stderr.count("parallel 2:") == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_seeds_side_by_side_train_like_seeds_alone(tiny_run, data_root):
    # each worker replays its own CUDA graphs; bf16 and the backward's atomics allow noise, not different training
    kwargs = dict(data_root=data_root, seeds=2, epochs=2, max_train=120, max_dev=64, lr=3e-3, device="cuda")
    alone = ds.evaluate_run(tiny_run, ["keyword"], parallel=1, **kwargs)
    side_by_side = ds.evaluate_run(tiny_run, ["keyword"], parallel=2, **kwargs)
    for a, b in zip(alone, side_by_side):
        assert b["seed"] == a["seed"] and b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02, abs=0.02)
        assert abs(b["value"] - a["value"]) <= 0.05
