"""Smoke test of the benchmark entry point (figures are printed, never asserted: speed is not a unit test)."""

from cram_core.bench import main


def test_bench_prints_a_throughput_row(capsys):
    assert main(["--preset", "tiny", "--steps", "2", "impl.threads=1"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "matmul ceiling measured here" in out
    row = [line for line in out.splitlines() if line.startswith("tiny (2x128")]
    assert row and float(row[0].split()[5].replace(",", "")) > 0  # tokens/s column


def test_bench_bad_override_is_one_line(capsys):
    assert main(["model.norm=batchnorm"]) == 2
    err = capsys.readouterr().err
    assert "valid: layernorm, rmsnorm" in err and err.count("\n") == 1


def test_vary_adds_one_row_per_value_and_profile_says_where_the_time_goes(capsys):
    assert main(["--preset", "tiny", "--steps", "1", "impl.threads=1", "train.batch_size=16",
                 "--vary", "train.micro_batch_size=4,8", "--profile"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("tiny (2x128")]
    assert [r.split(")")[0] for r in rows[:2]] == ["tiny (2x128, micro-batch 4", "tiny (2x128, micro-batch 8"]
    assert "train.micro_batch_size=8" in rows[1]
    assert out.count("profile: 3 steps") == 2 and "matmul" in out and "top:" in out


def test_variant_overrides_are_every_combination():
    from cram_core.bench import variant_overrides

    assert variant_overrides([]) == [[]]
    assert variant_overrides(["a.b=1,2", "c.d=x"]) == [["a.b=1", "c.d=x"], ["a.b=2", "c.d=x"]]


def test_bad_vary_is_one_line(capsys):
    assert main(["--preset", "tiny", "--vary", "impl.precision"]) == 2
    err = capsys.readouterr().err
    assert "expected group.field=value1,value2" in err and err.count("\n") == 1
    assert main(["--preset", "tiny", "--vary", "impl.precision=bf16,fp9"]) == 2
    assert "fp8" in capsys.readouterr().err  # the valid choices are named


def test_busy_time_is_the_union_of_kernel_intervals_and_kernels_are_grouped():
    from cram_core.bench import busy_time, kernel_group

    assert busy_time([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4
    assert kernel_group("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NTN") == "matmul"
    assert kernel_group("triton_per_fused_native_layer_norm_0") == "compiler fusions (norm, GLU, loss)"
    assert kernel_group("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>") == "attention"
    assert kernel_group("void at::native::(anonymous namespace)::multi_tensor_apply_kernel") == "optimizer / foreach"


def test_compile_times_are_cold_a_fresh_cache_that_is_removed_afterwards(monkeypatch, capsys):
    import os

    import cram_core.bench as bench

    seen = []
    real = bench.bench_preset

    def spy(*args, **kwargs):
        seen.append((os.environ.get("TORCHINDUCTOR_CACHE_DIR"), os.environ.get("TRITON_CACHE_DIR")))
        assert seen[-1][0] is None or os.path.isdir(seen[-1][0])
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "bench_preset", spy)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", "/somewhere/else")
    assert main(["--preset", "tiny", "--steps", "1", "impl.threads=1"]) == 0
    folder, triton = seen[0]
    assert folder and triton.startswith(folder) and not os.path.exists(folder)  # existed while timing (spy)
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and os.environ["TRITON_CACHE_DIR"] == "/somewhere/else"
    assert main(["--preset", "tiny", "--steps", "1", "impl.threads=1", "--warm-cache"]) == 0
    assert seen[1] == (None, "/somewhere/else")  # --warm-cache leaves the user's caches alone


def test_reference_hf_needs_cuda_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert main(["--preset", "tiny", "--reference", "hf"]) == 2
    err = capsys.readouterr().err
    assert "--reference hf needs CUDA" in err and err.count("\n") == 1
