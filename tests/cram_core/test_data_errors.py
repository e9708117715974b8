"""Damaged input files give one line naming the file and exit code 2, never a traceback (issue 11, item 8)."""

from __future__ import annotations

import pytest

from cram_core.data.__main__ import main as data_main
from cram_core.train import main as train_main

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402


def corrupt_parquet(path):
    """A snappy Parquet file whose footer is intact but whose one data page has 16 flipped bytes."""
    docs = [f"document {i}: " + "some words to compress well " * 40 for i in range(300)]
    pq.write_table(pa.table({"text": docs}), path, compression="snappy", use_dictionary=False)
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    middle = column.data_page_offset + column.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))
    pq.ParquetFile(path)  # the footer still parses: the damage only shows when the page is read
    return path


def test_corrupt_parquet_page_is_one_line_naming_the_file(tmp_path, capsys):
    """Before: OSError 'Corrupt snappy compressed data' from iter_batches, a traceback."""
    path = corrupt_parquet(tmp_path / "bad.parquet")
    code = data_main(["prepare", "--no-progress", f"data.source=parquet:{path}", f"data.cache_dir={tmp_path / 'c'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(path) in err and "corrupt Parquet data" in err, err
    assert not (tmp_path / "c" / "data").exists() or not any((tmp_path / "c" / "data").iterdir())


def test_train_with_a_corrupt_parquet_source_exits_2_and_writes_nothing(tmp_path, capsys):
    path = corrupt_parquet(tmp_path / "bad.parquet")
    out = tmp_path / "run"
    code = train_main(["--preset", "tiny", f"data.source=parquet:{path}", f"data.cache_dir={tmp_path / 'c'}",
                       "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(path) in err, err
    assert not out.exists()
