"""The benchmark harness itself (benchmarks/), on tiny sizes: no timing is asserted."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY

from benchmarks import (accuracy, cli, efficiency, gpu_summary, measure, models, report,
                        steps, streaming)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- exponent fit --------------------------------------------------------------------------
@pytest.mark.parametrize("power", [1, 2])
def test_fit_exponent_recovers_power_law(power):
    lengths = [50, 200, 500, 1000, 2000]
    assert measure.fit_exponent(lengths, [3e-6 * L ** power for L in lengths]) == \
        pytest.approx(power, abs=0.05)


def test_fit_exponent_with_constant_term_and_missing_points():
    lengths = [50, 200, 500, 1000, 2000]
    # a constant overhead flattens the fit; missing / non-positive points are ignored
    slope = measure.fit_exponent(lengths, [1e-2 + 1e-7 * L ** 2 for L in lengths])
    assert 0.5 < slope < 1.9
    assert measure.fit_exponent(lengths, [None, 4.0, 0.0, 100.0, None]) == pytest.approx(2.0)
    assert measure.fit_exponent([10], [1.0]) is None
    assert measure.fit_exponent([10, 20], [None, 1.0]) is None


# -- building blocks -------------------------------------------------------------------------
def test_size_overrides_apply_only_keys_the_model_has():
    assert models.size_overrides("SoftmaxSASRec", 8, 1) == {"hidden_size": 8, "n_layers": 1}
    assert models.size_overrides("GRU4Rec", 8, 1) == {"hidden_size": 8, "embedding_size": 8,
                                                      "num_layers": 1}
    assert models.size_overrides("GRU4Rec", extra={"inner_size": 4, "dropout_prob": 0.1}) == \
        {"dropout_prob": 0.1}


def test_build_model_batches_and_steps_in_both_modes():
    for name, mode in [("SoftmaxSASRec", "all_positions"), ("SoftmaxSASRec", "augmented"),
                       ("GRU4Rec", None), ("LightSANs", None)]:
        over = efficiency.model_overrides(name, 6, efficiency.parse_args(["--hidden_size", "8"]))
        model, config, info = models.build_model(name, 6, 30, over, mode)
        assert info["train_mode"] == (mode or "augmented")
        batch = steps.make_batch(config, 3, 6, 30, info["train_mode"], train=True)
        assert batch["item_id_list"].shape == (3, 6)
        assert ("item_id_target_list" in batch) == (info["train_mode"] == "all_positions")
        optimizer = models.optimizer_for(model, config)
        before = [p.detach().clone() for p in model.parameters()]
        steps.train_step(model, optimizer, batch, config["clip_grad_norm"])
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        scores = steps.inference_step(model, steps.make_batch(config, 3, 6, 30, train=False))
        assert scores.shape == (3, 30)


def test_median_ms_times_every_function_in_blocks():
    counts = [0, 0]

    def bump(i):
        counts[i] += 1

    ms = measure.median_ms([lambda: bump(0), lambda: bump(1)], warmup=1, repeats=3, block_ms=0)
    assert len(ms) == 2 and all(m >= 0 for m in ms)
    assert counts == [1 + 1 + 3] * 2  # warm-up, the call that sizes a block, one per sample


def test_markdown_table_escapes_and_aligns():
    table = report.markdown_table(["a", "b|c"], [[1, None], ["x|y", "two\nlines"]],
                                  align=["l", "r"])
    assert table.splitlines() == ["| a | b\\|c |", "|:---|---:|", "| 1 |  |",
                                  "| x\\|y | two lines |"]


def test_key_value_options_and_overrides_are_typed_as_recbole_types_them():
    assert cli.key_value("n_heads=2") == ("n_heads", 2)
    assert cli.key_value("causal=False") == ("causal", False)
    assert cli.key_value("learner = adam") == ("learner", " adam")  # the value as given
    with pytest.raises(Exception, match="expected KEY=VALUE"):
        cli.key_value("n_heads")
    assert cli.parse_overrides(["--a=1", "--b", "[1,2]", "--c=x"]) == {"a": 1, "b": [1, 2],
                                                                       "c": "x"}
    for tokens in (["stray"], ["--a"]):
        with pytest.raises(ValueError):
            cli.parse_overrides(tokens)
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--epochs", "1", "stray"])
    assert cli.command_line("efficiency", ["--lengths", "8"]) == \
        "python -m benchmarks.efficiency --lengths 8"


def test_default_models_are_ours_then_the_baselines():
    from recbole_efficient.model import MODELS

    assert models.default_models() == list(MODELS) + ["SASRec"]
    assert models.default_models(("GRU4Rec", "SASRec")) == list(MODELS) + ["GRU4Rec", "SASRec"]
    assert models.default_models(()) == list(MODELS)
    assert models.has_floor("LRURec") and not models.has_floor("SASRec")


def test_profiler_peak_counts_tensor_allocations():
    def fn():
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 20)  # 4 MiB more: the peak
        del a, b
        c = torch.ones(1 << 19)  # 2 MiB after the frees
        return c.sum()

    peak = measure.profiler_peak_bytes(fn)
    assert 8 * 2**20 <= peak < 8.5 * 2**20


# -- efficiency end to end -------------------------------------------------------------------
def test_efficiency_end_to_end_writes_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eff"
    results = efficiency.main([
        "--models", "SoftmaxSASRec", "GRU4Rec", "--lengths", "8", "16", "--hidden_size", "8",
        "--n_items", "50", "--tokens_per_batch", "64", "--batch_size", "2", "--repeats", "2",
        "--warmup", "1", "--out", str(out)])
    for name in ["efficiency.json", "efficiency.csv", "efficiency.md", "efficiency_time.png",
                 "efficiency_memory.png"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC

    data = json.loads((out / "efficiency.json").read_text())
    points = data["points"]
    assert len(points) == 2 * 2 * 2 * 2  # models x kinds x settings x lengths
    assert all(p["status"] == "ok" and p["time_s_median"] > 0 and p["repeats"] == 2
               for p in points)
    assert all(p["peak_mem_bytes"] > 0 for p in points if p["kind"] == "train")
    modes = {p["model"]: p["train_mode"] for p in points}
    assert modes == {"SoftmaxSASRec": "all_positions", "GRU4Rec": "augmented"}
    batches = {(p["setting"], p["seq_len"]): p["batch_size"] for p in points}
    assert batches == {("tokens", 8): 8, ("tokens", 16): 4, ("batch", 8): 2, ("batch", 16): 2}
    assert len(data["exponents"]) == 2 * 2 * 2
    assert all(isinstance(e["time_exponent"], float) for e in data["exponents"])
    assert data["meta"]["memory_method"] == "cpu_profiler_allocations"
    assert results["points"] == points

    with (out / "efficiency.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(points) and set(efficiency.CSV_FIELDS) <= set(rows[0])

    md = (out / "efficiency.md").read_text()
    assert "| SoftmaxSASRec | all_positions |" in md and "| GRU4Rec | augmented |" in md
    assert "L=16 (B=4)" in md
    _assert_tables_well_formed(md)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_efficiency_with_autocast_and_a_scaler(tmp_path, monkeypatch, amp):
    """``--amp``: steps under autocast (fp16 with a GradScaler, ELASTIC's sparse memory
    gradients and LRURec's clipping included) run and change the weights."""
    monkeypatch.chdir(tmp_path)
    taken = []
    original = steps.train_step

    def spy(model, optimizer, batch, clip, loss_fn, amp_dtype, scaler):
        before = [p.detach().clone() for p in model.parameters()]
        original(model, optimizer, batch, clip, loss_fn, amp_dtype, scaler)
        taken.append((model.__class__.__name__, amp_dtype, scaler is not None,
                      any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))))

    monkeypatch.setattr(steps, "train_step", spy)
    results = efficiency.main([
        "--models", "LRURec", "ELASTIC", "--lengths", "16", "--hidden_size", "8", "--n_items",
        "50", "--settings", "batch", "--batch_size", "2", "--repeats", "1", "--warmup", "0",
        "--cpu_memory", "none", "--amp", amp, "--set", "memory_size=64", "--out",
        str(tmp_path / "eff")])
    assert all(p["status"] == "ok" for p in results["points"]), results["points"]
    dtype = efficiency.AMP_DTYPES[amp]
    assert {s[0] for s in taken} == {"LRURec", "ELASTIC"}
    assert all(s[1] == dtype and s[2] == (amp == "fp16") and s[3] for s in taken), taken
    assert f"autocast {amp}" in (tmp_path / "eff" / "efficiency.md").read_text()


def test_gpu_paths_needs_cuda(monkeypatch, capsys):
    from benchmarks import gpu_paths

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        gpu_paths.main([])
    assert exit_info.value.code == 2 and "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("python,message", [(sys.executable, "sees no CUDA device"),
                                            (sys.executable + " -S", "cannot import torch")])
def test_gpu_check_refuses_a_machine_without_cuda(tmp_path, python, message):
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    out = subprocess.run(["bash", str(script), str(tmp_path / "gpu")], capture_output=True,
                         text=True, timeout=120, cwd=script.parents[1],
                         env={**os.environ, "PYTHON": python, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "gpu").exists()


def test_reproduce_gpu_refuses_a_machine_without_cuda(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_gpu.sh"
    out = subprocess.run(["bash", str(script), str(tmp_path / "gpu")], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "",
                              "PYTHON": sys.executable})
    assert out.returncode == 2 and "sees no CUDA device" in out.stderr
    assert not (tmp_path / "gpu").exists()


def _assert_tables_well_formed(md):
    """Every markdown table row has as many cells as its header."""
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    assert tables
    for table in tables:
        cells = [line.replace("\\|", "").count("|") for line in table]
        assert len(set(cells)) == 1 and table[1].startswith("|---"), table


def test_committed_efficiency_reports_render_again_from_their_json():
    """Each committed efficiency.md is what the current writer makes of its efficiency.json."""
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    found = sorted(results.rglob("efficiency.json"))
    assert found
    for path in found:
        expected = (path.parent / "efficiency.md").read_text()
        assert efficiency.markdown_report(json.loads(path.read_text())) == expected, path


def test_efficiency_marks_too_slow_then_skips_larger_lengths(tmp_path):
    results = efficiency.main([
        "--models", "GRU4Rec", "--lengths", "4", "8", "--hidden_size", "4", "--n_items", "20",
        "--settings", "batch", "--kinds", "train", "--batch_size", "1", "--repeats", "1",
        "--warmup", "0", "--max_seconds_per_point", "1e-9", "--out", str(tmp_path)])
    status = {p["seq_len"]: p["status"] for p in results["points"]}
    assert status == {4: "too_slow", 8: "skipped"}
    md = (tmp_path / "efficiency.md").read_text()
    assert "too slow" in md and "skipped" in md


# -- variants, floors and presets ---------------------------------------------------------------
def test_model_variants_are_parsed():
    v = efficiency.parse_variant("SoftmaxSASRec@n_heads=1, hidden_dropout_prob=0.1,floor")
    assert v == efficiency.Variant("SoftmaxSASRec@n_heads=1, hidden_dropout_prob=0.1,floor",
                                   "SoftmaxSASRec", {"n_heads": 1, "hidden_dropout_prob": 0.1},
                                   True)
    assert efficiency.parse_variant("LRURec") == efficiency.Variant("LRURec", "LRURec", {}, False)
    with pytest.raises(ValueError, match="key=value or 'floor'"):
        efficiency.parse_variant("LRURec@fast")
    with pytest.raises(SystemExit):  # RecBole's models have no floor
        efficiency.parse_args(["--models", "SASRec@floor"])


def test_floors_follow_their_models_and_presets_are_defaults():
    args = efficiency.parse_args(["--models", "LRURec@n_layers=1", "SASRec", "--floors"])
    assert args.models == ["LRURec@n_layers=1", "LRURec@n_layers=1,floor", "SASRec"]
    args = efficiency.parse_args(["--preset", "train"])
    assert (args.kinds, args.settings, args.tokens_per_batch, args.lengths, args.n_items,
            args.hidden_size, args.n_layers, args.train_mode) == \
        (["train"], ["tokens"], 16384, [200, 1000, 2000], 3417, 64, 2, "all_positions")
    assert args.models[-1] == "SASRec" and args.reference == "SASRec"
    assert "LRURec@floor" in args.models and "SoftmaxSASRec@floor" in args.models
    assert args.out.endswith("efficiency_train")
    args = efficiency.parse_args(["--preset", "inference", "--lengths", "8", "--batch_size", "2"])
    assert (args.kinds, args.settings, args.lengths, args.batch_size) == \
        (["inference"], ["batch"], [8], 2)


def test_recbole_all_positions_loss_equals_ours_for_the_same_weights():
    """RecBole's SASRec trained at every position (benchmark adapter) == SoftmaxSASRec."""
    ours_model, config, info = models.build_model("SoftmaxSASRec", 6, 30, {"hidden_size": 8})
    theirs, _, theirs_info = models.build_model("SASRec", 6, 30, {"hidden_size": 8},
                                                train_mode="all_positions")
    assert theirs_info["train_mode"] == "all_positions" and info["loss_fn"] is None
    theirs.load_state_dict(ours_model.state_dict())
    batch = steps.make_batch(config, 3, 6, 30, "all_positions")
    batch["item_length"][1] = 2  # a padded row
    ours_model.eval(), theirs.eval()
    torch.testing.assert_close(theirs_info["loss_fn"](theirs, batch),
                               ours_model.calculate_loss(batch))
    assert theirs.full_sort_predict(batch).shape == (3, 30)  # the gather is back


def test_floor_models_build_and_step():
    model, config, info = models.build_model("LRURec", 6, 30, {"hidden_size": 8}, floor=True)
    full, _, _ = models.build_model("LRURec", 6, 30, {"hidden_size": 8})
    assert info["floor"] and info["n_params"] < sum(p.numel() for p in full.parameters())
    optimizer = models.optimizer_for(model, config)
    steps.train_step(model, optimizer, steps.make_batch(config, 2, 6, 30, "all_positions"),
                     config["clip_grad_norm"])
    assert steps.inference_step(model, steps.make_batch(config, 2, 6, 30, train=False)).shape \
        == (2, 30)


def test_train_preset_end_to_end_reports_ratios_to_floors(tmp_path):
    results = efficiency.main([
        "--preset", "train", "--models", "SoftmaxSASRec", "LRURec", "SASRec", "--lengths", "8",
        "--tokens_per_batch", "32", "--n_items", "30", "--hidden_size", "8", "--repeats", "1",
        "--warmup", "0", "--clock", "cpu", "--out", str(tmp_path)])
    points = {p["model"]: p for p in results["points"]}
    assert set(points) == {"SoftmaxSASRec", "SoftmaxSASRec@floor", "LRURec", "LRURec@floor",
                           "SASRec"}
    assert all(p["status"] == "ok" and p["train_mode"] == "all_positions"
               for p in points.values())
    md = (tmp_path / "efficiency.md").read_text()
    section = md.split("relative to the model's floor")[1].split("###")[0]
    assert "| SoftmaxSASRec |" in section and "| LRURec |" in section
    assert "| SASRec |" not in section and "@floor |" not in section
    assert "Time per token (µs)" in md and "relative to SASRec" in md
    assert "(CPU time of the process)" in md
    _assert_tables_well_formed(md)


# -- accuracy --------------------------------------------------------------------------------
def test_accuracy_overrides_are_parsed():
    args = accuracy.parse_args(["--models", "SASRec", "--MAX_ITEM_LIST_LENGTH=20",
                                "--train_batch_size", "64", "--learning_rate=1e-3",
                                "--time_budget", "5", "--data_path", "."])
    assert args.overrides == {"MAX_ITEM_LIST_LENGTH": 20, "train_batch_size": 64,
                              "learning_rate": 1e-3}
    assert args.epochs == 10_000 and Path(args.data_path).is_absolute()
    cfg = accuracy.model_config_dict("SASRec", args)
    assert cfg["train_mode"] == "augmented" and cfg["train_time_budget"] == 5
    assert cfg["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert "LS" in cfg["eval_args"]["split"]


def test_accuracy_tables_from_fake_results(tmp_path):
    from collections import OrderedDict

    fake = {"best_valid_result": OrderedDict([("ndcg@10", 0.05), ("hit@10", 0.1)]),
            "test_result": OrderedDict([("recall@10", 0.12), ("mrr@10", 0.03),
                                        ("ndcg@10", 0.0456789), ("hit@10", 0.12)]),
            "train_epoch_seconds": [1.0, 2.0, 3.0]}
    rows = [accuracy.row_from_result("SoftmaxSASRec", {"train_mode": "all_positions"}, fake, 9.5),
            {"model": "Broken", "train_mode": "augmented", "status": "error",
             "error": "ValueError: boom | bad"}]
    assert rows[0]["epochs"] == 3 and rows[0]["train_seconds"] == 6.0
    assert rows[0]["seconds_per_epoch"] == 2.0 and rows[0]["ndcg@10"] == 0.0457
    meta = {"command": "x", "dataset": "ml-1m", "eval_mode": "full", "exclude_history": True,
            "epochs": 10000, "time_budget": 60.0, "seed": 1, "overrides": {"a": 1}}
    md = accuracy.write_tables(meta, rows, tmp_path)
    assert "| SoftmaxSASRec | all_positions | ok | 3 | 6.0 | 2.0 | 0.0457 | 0.1200 |" in md
    assert "- Broken: ValueError: boom" in md
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert all(line.count("|") == header.count("|")
               for line in md.splitlines() if line.startswith("| ") and "---" not in line)
    with (tmp_path / "accuracy.csv").open() as f:
        got = list(csv.DictReader(f))
    assert [r["model"] for r in got] == ["SoftmaxSASRec", "Broken"]
    assert got[0]["ndcg@10"] == "0.0457" and got[1]["error"].startswith("ValueError")
    assert json.loads((tmp_path / "accuracy.json").read_text())["rows"][0]["hit@10"] == 0.12


def test_accuracy_one_epoch_on_tiny_dataset(tiny):
    root, _ = tiny
    out = root / "acc"
    rows = accuracy.main(["--models", "SoftmaxSASRec", "--dataset", TINY, "--data_path", str(root),
                          "--epochs", "1", "--eval_mode", "full", "--out", str(out),
                          "--MAX_ITEM_LIST_LENGTH=8", "--hidden_size=8", "--n_layers=1",
                          "--n_heads=1", "--inner_size=16", "--eval_batch_size=64"])
    assert rows[0]["status"] == "ok", rows[0].get("error")
    assert rows[0]["epochs"] == 1 and 0 <= rows[0]["ndcg@10"] <= 1
    assert (out / "accuracy.md").is_file() and (out / "logs" / "SoftmaxSASRec.log").is_file()
    assert not (root / "log").exists() and not (root / "saved").exists()  # ran in a temp dir


# -- streaming -------------------------------------------------------------------------------
def test_streaming_covers_every_model_with_the_api(capsys, tmp_path):
    rows = streaming.main(["--lengths", "6", "9", "--hidden_size", "8", "--n_items", "20",
                           "--repeats", "1", "--warmup", "0", "--set", "n_heads=2",
                           "--out", str(tmp_path)])
    assert {(r["model"], r["length"]) for r in rows} == \
        {(m, L) for m in ("LRURec", "LinRec", "ELASTIC") for L in (6, 9)}
    assert all(r["step_ms"] > 0 and r["max_abs_diff"] < 1e-5 for r in rows)
    assert "| LinRec | 9 |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "streaming.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert {"command", "date_utc", "environment"} <= set(saved["meta"])
    assert saved["meta"]["command"].startswith("python -m benchmarks.streaming --lengths 6 9")
    with pytest.raises(SystemExit, match="LinRecBERT has no streaming"):
        streaming.main(["--models", "LinRecBERT", "--lengths", "4", "--hidden_size", "8",
                        "--out", ""])


# -- reproduction ----------------------------------------------------------------------------
def test_reproduce_protocols_and_gpu_budget(monkeypatch):
    from benchmarks import reproduce

    with pytest.raises(SystemExit):  # no CUDA here: refused, not silently run on CPU
        with monkeypatch.context() as patch:
            patch.setattr(torch.cuda, "is_available", lambda: False)
            reproduce.parse_args(["--device", "cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = reproduce.parse_args(["--models", "LRURec", "SASRec", "--device", "cuda",
                                 "--gpu_minutes", "10", "--train_batch_size=256"])
    assert args.time_budget == 10 * 60 / 4 - 20  # 2 models x 2 protocols share 10 minutes
    concurrent = reproduce.parse_args(["--models", "LRURec", "SASRec", "--device", "cuda",
                                       "--jobs", "3"])
    assert concurrent.time_budget == 10 * 60 / 2 - 20  # 4 runs in 3 slots: two after another
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--jobs", "0"])
    lru, rb = reproduce.run_args(args, "lrurec"), reproduce.run_args(args, "recbole")
    assert lru.exclude_history and not rb.exclude_history
    assert lru.overrides["valid_metric"] == "Recall@10" and rb.overrides["valid_metric"] == "NDCG@10"
    for run in (lru, rb):
        assert run.overrides["MAX_ITEM_LIST_LENGTH"] == 200 and run.overrides["stopping_step"] == 10
        assert run.overrides["train_batch_size"] == 256 and run.overrides["gpu_id"] == "0"
        assert run.eval_mode == "full" and run.time_budget == args.time_budget
    fake = {"test_result": {"ndcg@10": 0.1}, "train_epoch_seconds": [2.0], "best_epoch": 0,
            "stop_reason": "budget", "valid_history": [[0, 0.2]]}
    row = reproduce.row_of("lrurec", "SoftmaxSASRec", {}, fake, 5.0, args)
    assert row["paper_ndcg@10"] == 0.19021 and row["status"] == "budget-limited, not converged"
    assert reproduce.row_of("recbole", "LRURec", {}, fake, 5.0, args)["paper_ndcg@10"] is None


def test_reproduce_without_the_dataset_says_where_it_looked(tmp_path, capsys):
    from benchmarks import reproduce

    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--data_path", str(tmp_path), "--models", "LRURec", "--out",
                        str(tmp_path / "out"), "--allow_download=False"])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert err.startswith("error: Dataset 'ml-1m' is not on disk") and str(tmp_path) in err
    assert "allow_download=False" in err


def test_reproduce_end_to_end_resumes_and_reuses_runs(tiny):
    from benchmarks import reproduce

    root, _ = tiny
    out = root / "repro"
    argv = ["--models", "SoftmaxSASRec", "--dataset", TINY, "--data_path", str(root),
            "--out", str(out), "--MAX_ITEM_LIST_LENGTH=8", "--hidden_size=8", "--n_layers=1",
            "--n_heads=1", "--inner_size=16", "--eval_batch_size=64", "--train_batch_size=16"]
    first = reproduce.main(argv + ["--protocols", "lrurec", "recbole", "--epochs", "1"])
    assert [(r["protocol"], r["status"], r["epochs"]) for r in first] == [
        ("lrurec", "epoch-limited (1), not converged", 1),
        ("recbole", "epoch-limited (1), not converged", 1)]
    assert all(0 <= r["recall@10"] <= 1 and r["paper_ndcg@10"] is None for r in first)
    assert all(r["steps"] >= 1 for r in first)  # one epoch of at least one batch
    md = (out / "reproduce.md").read_text()
    assert "LRURec's protocol" in md and "RecBole's protocol" in md
    assert (out / "reproduce_curves.png").is_file() and (out / "reproduce.csv").is_file()

    # An interrupted run (no result.json yet) continues in its own run folder; a finished one
    # asked for more epochs continues too.
    run = out / "runs" / "lrurec" / "SoftmaxSASRec"
    (run / "result.json").unlink()
    more = ["--protocols", "lrurec", "recbole", "--epochs", "3"]
    second = reproduce.main(argv + more)
    for row in second:
        assert row["epochs"] == 3 and [e for e, _ in row["valid_history"]] == [0, 1, 2]
    for protocol in ("lrurec", "recbole"):
        assert len(list((out / "runs" / protocol / "SoftmaxSASRec").glob("saved/*/latest.pth"))) == 1
    assert reproduce.main(argv + more) == second  # same settings: reused, not repeated
    fresh = reproduce.main(argv + ["--protocols", "recbole", "--epochs", "1", "--fresh"])
    assert fresh[0]["epochs"] == 1 and len(list(out.glob("runs/recbole/SoftmaxSASRec.old-*"))) == 1

    # --jobs: each run in a process of its own, the same rows; a finished run is reused there too
    jobs = reproduce.main(argv + more + ["--jobs", "2"])
    assert jobs[0] == second[0]  # lrurec: finished with these settings
    assert jobs[1]["protocol"] == "recbole" and jobs[1]["epochs"] == 3  # continued from 1 epoch
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "lrurec_SoftmaxSASRec.log", "recbole_SoftmaxSASRec.log"]
    assert "finished earlier, reused" in (out / "logs" / "lrurec_SoftmaxSASRec.log").read_text()


# -- GPU targets ---------------------------------------------------------------------------------
def _efficiency_run(kind, times):
    """An efficiency.json of ``{(label, L): ms}``."""
    return {"meta": {"args": {"amp": "off"}, "environment": {"gpu": "test GPU"}},
            "points": [{"model": label, "seq_len": n, "kind": kind, "status": "ok",
                        "time_s_median": ms / 1e3} for (label, n), ms in times.items()]}


def _write_run(root, name, kind, times):
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "efficiency.json").write_text(json.dumps(_efficiency_run(kind, times)))


def test_gpu_summary_reads_each_target_off_the_runs(tmp_path):
    train = {("SoftmaxSASRec", 200): 10, ("SoftmaxSASRec@floor", 200): 6,
             ("SoftmaxSASRec", 1000): 12, ("SoftmaxSASRec@floor", 1000): 7,
             ("LRURec", 200): 13, ("LRURec@floor", 200): 10,       # slower than softmax at 200: allowed
             ("LRURec", 1000): 11, ("LRURec@floor", 1000): 7.5,    # 1.47x its floor: missed
             ("SASRec", 200): 10, ("SASRec", 1000): 12}
    inference = {("LinRec", 200): 5, ("LinRec@floor", 200): 1,      # 5x at L < 1000: allowed
                 ("LinRec", 1000): 2, ("LinRec@floor", 1000): 1}   # 2x at L = 1000: missed
    _write_run(tmp_path, "train_fp32", "train", train)
    _write_run(tmp_path, "inference", "inference", inference)
    assert gpu_summary.main([str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "| LRURec | 13.0 (1.30×), 1.30× ref | 11.0 (1.47×), 0.92× ref |" in text
    _, failures = gpu_summary.summarise(tmp_path)
    assert failures == ["train_bf16: no results (train_bf16/efficiency.json is missing: the step "
                        "failed or ran out of time)",
                        "inference: LinRec at L=1000 is 2.00× its floor (target ≤ 1.6)",
                        "train_fp32: LRURec at L=1000 is 1.47× its floor (target ≤ 1.4)"]
    required = ("train_fp32", "inference")
    train[("LRURec", 1000)] = 12.5  # within its floor bound, not faster than softmax
    inference[("LinRec", 1000)] = 1.5
    _write_run(tmp_path, "train_fp32", "train", train)
    _write_run(tmp_path, "inference", "inference", inference)
    assert gpu_summary.summarise(tmp_path, required)[1] == [
        "train_fp32: LRURec at L=1000 is 1.67× its floor (target ≤ 1.4)",
        "train_fp32: LRURec at L=1000 is not faster than SoftmaxSASRec (12.5 vs 12.0 ms)"]
    train[("LRURec", 1000)] = 10
    _write_run(tmp_path, "train_fp32", "train", train)
    _write_run(tmp_path, "ablation", "train", {("LRURec", 1000): 50, ("LRURec@floor", 1000): 1})
    text, failures = gpu_summary.summarise(tmp_path, required)
    assert failures == [] and "All targets met." in text and "### ablation" in text
    del train[("LRURec@floor", 1000)]  # a point that did not run is a miss
    _write_run(tmp_path, "train_fp32", "train", train)
    assert gpu_summary.summarise(tmp_path, required)[1] == [
        "train_fp32: LRURec's floor at L=1000 did not run"]


def test_gpu_summary_without_runs_says_what_to_run(tmp_path, capsys):
    assert gpu_summary.main([str(tmp_path)]) == 2
    assert "run benchmarks/gpu_check.sh first" in capsys.readouterr().err
