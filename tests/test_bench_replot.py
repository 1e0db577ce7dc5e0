"""benchmarks.replot: a saved validation's plots drawn again from its results file alone."""

import gzip
import json

import pytest


def _results() -> dict:
    rows, decisions = [], []
    for prim, k in (("route", 1.0), ("fetch", 1.1), ("local", 3.0)):
        for i, rows_ in enumerate((16, 64)):
            t = k * (i + 1) * 1e-3
            rows.append({"primitive": prim, "measured": {"total_s": t}, "predicted": {"total_s": 1.05 * t}})
    for rows_ in (16, 64):
        for chunk in (64, 256):
            decisions.append({"holders": 1, "steps": 1, "path": "gloo", "batch": 1, "rows": rows_, "chunk_tokens": chunk,
                              "predicted": "route", "measured_fastest": "route" if rows_ == 16 else "fetch",
                              "decisive": True})  # fmt: skip
    return {"rows": rows, "metrics": {"decisions": decisions}}


def test_the_plots_come_back_from_the_results_file(tmp_path):
    from benchmarks.replot import main

    path = tmp_path / "validation-x-2026-11-27.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(_results(), f)
    written = main([str(path)])
    assert [p.name for p in written] == ["validation-x-2026-11-27-scatter.png", "validation-x-2026-11-27-crossover.png"]
    assert all(p.parent == tmp_path and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    elsewhere = main([str(path), "--out", str(tmp_path / "plots")])
    assert [p.parent.name for p in elsewhere] == ["plots", "plots"]


def test_bad_files_are_one_line_errors(tmp_path):
    from benchmarks.replot import main

    with pytest.raises(SystemExit, match="replot: validation file .* does not exist"):
        main([str(tmp_path / "missing.json")])
    old = tmp_path / "validation-old.json"
    old.write_text(json.dumps({"rows": [], "metrics": {}}))
    with pytest.raises(SystemExit, match="has no metrics.decisions"):
        main([str(old)])
