"""``python -m benchmarks.serve`` on tiny sizes: real servers on the loopback interface, both
modes, the result files with their rows and meta. No timing is asserted."""

import csv
import json

import pytest

pytest.importorskip("fastapi")

from benchmarks import serve  # noqa: E402


def test_serve_benchmark_writes_rows_meta_and_no_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RecBole writes log/ into the working folder
    out = tmp_path / "out"
    argv = ["--models", "LRURec", "--lengths", "8", "--users", "20", "--clients", "2",
            "--events_per_post", "1", "2", "--floor_seconds", "0.5",
            "--seconds", "2", "--warmup", "0", "--n_items", "50", "--train_users", "20",
            "--hidden_size", "8", "--n_layers", "1", "--out", str(out)]
    rows = serve.main(argv)

    data = json.loads((out / "serve.json").read_text())
    meta = data["meta"]
    assert meta["command"] == "python -m benchmarks.serve " + " ".join(argv)
    assert meta["date_utc"] and meta["environment"]["torch"] and meta["args"]["users"] == 20
    assert data["rows"] == json.loads(json.dumps(rows, default=str))
    assert [(r["model"], r["history"], r["mode"], r["events_per_post"]) for r in data["rows"]] \
        == [("LRURec", 8, "stream", 1), ("LRURec", 8, "stream", 2),
            ("LRURec", 8, "reencode", 1), ("LRURec", 8, "reencode", 2)]
    for row in data["rows"]:
        assert row["status"] == "ok", row.get("error")
        assert row["errors"] == 0, row["error_samples"]
        assert row["users"] == 20 and row["clients"] == 2
        assert row["cycles"] > 0 and row["events_per_s"] > 0 and row["http_floor_per_s"] > 0
        posts = row["requests"] - row["cycles"]  # a GET per cycle, a POST per events_per_post
        assert posts <= row["cycles"] <= posts * row["events_per_post"]  # (fewer: users spent)
        for endpoint in ("post", "recommend"):
            assert 0 < row[f"{endpoint}_p50_ms"] <= row[f"{endpoint}_p99_ms"]
    for per_post in (1, 2):
        stream, reencode = [r for r in data["rows"] if r["events_per_post"] == per_post]
        assert stream["stream_over_reencode"] == pytest.approx(
            stream["events_per_s"] / reencode["events_per_s"])

    with open(out / "serve.csv", newline="") as f:
        assert [r["mode"] for r in csv.DictReader(f)] == ["stream"] * 2 + ["reencode"] * 2
    table = (out / "serve.md").read_text()
    assert "| LRURec | 8 | stream | 2 | 20 | 2 |" in table and meta["command"] in table
