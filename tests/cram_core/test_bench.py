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
