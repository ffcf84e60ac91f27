"""benchmarks/rows_diff.py: one backend's rows of two compare runs side by side, times read from the files."""

from __future__ import annotations

import json


def _run(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text(json.dumps({"results": [
        {"case": c, "op": o, "backend": b, "status": st, "time_us": us} for c, o, b, st, us in rows]}))
    return str(path)


def test_rows_side_by_side_with_the_changes_counted(tmp_path, capsys, benchmark_script):
    before = _run(tmp_path, "a.json", [("p", "shrink1", "triton", "pass", 10.0), ("p", "expand", "triton", "pass", 20.0),
                                       ("m", "qkv", "triton", "pass", 30.0), ("m", "qkv", "peer", "pass", 1.0),
                                       ("m", "gate_up", "triton", "pass", 40.0), ("only", "x", "triton", "pass", 5.0)])
    after = _run(tmp_path, "b.json", [("p", "shrink1", "triton", "pass", 9.0), ("p", "expand", "triton", "pass", 20.2),
                                      ("m", "qkv", "triton", "pass", 33.0), ("m", "gate_up", "triton", "wrong", 39.0)])
    assert benchmark_script("rows_diff").main([before, after]) == 0
    out = capsys.readouterr().out
    assert "| p | shrink1 | 10.00 | 9.00 | 0.900 |" in out
    assert "| p | expand | 20.00 | 20.20 | 1.010 |" in out
    assert "| m | qkv | 30.00 | 33.00 | 1.100 |" in out, "the peer's row is not triton's"
    assert "| m | gate_up | pass | wrong | |" in out, "a row that did not pass shows its status, no time"
    assert "only" not in out.split("\n\n")[0], "rows in one run only are left out"
    assert out.strip().endswith("triton: 4 rows in both runs; 1 faster and 1 slower by more than 2%")


def test_usage_without_two_files(capsys, benchmark_script):
    assert benchmark_script("rows_diff").main(["one.json"]) == 2
    assert "rows_diff.py BEFORE.json AFTER.json" in capsys.readouterr().err
