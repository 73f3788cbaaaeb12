"""`recbole-efficient convert`: your own interaction log to atomic files, with a summary."""

import sys

import pandas as pd
import pytest

from recbole_efficient import cli

# 5 users (2-6 events each), string ids, ISO times with ties, a rating
EVENTS = pd.DataFrame(
    [(f"user{u}", f"sku-{(u * 3 + k) % 7}", f"2024-05-0{1 + k // 2}T10:0{k % 2}:00Z", 1 + k % 5)
     for u in range(1, 6) for k in range(1 + u)],
    columns=["customer", "product", "when", "stars"])


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["recbole-efficient", *args])
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def expected_rows(with_rating=True):
    seconds = (pd.to_datetime(EVENTS["when"]) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return [f"{u}\t{i}\t" + (f"{r}\t" if with_rating else "") + f"{t:.0f}"
            for u, i, r, t in zip(EVENTS["customer"], EVENTS["product"], EVENTS["stars"], seconds)]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
def test_each_format_gives_the_same_atomic_file_and_a_summary(tmp_path, monkeypatch, capsys,
                                                              suffix):
    log = tmp_path / f"shop{suffix}"
    if suffix == ".parquet":
        EVENTS.to_parquet(log)
    elif suffix == ".jsonl":
        EVENTS.to_json(log, orient="records", lines=True)
    else:
        EVENTS.to_csv(log, index=False, sep="\t" if suffix == ".tsv" else ",")
    code, out, err = run(monkeypatch, capsys, "convert", str(log), "--user=customer",
                         "--item=product", "--time=when", "--rating=stars",
                         f"--data_path={tmp_path / 'data'}")
    assert code == 0, err
    inter = (tmp_path / "data" / "shop" / "shop.inter").read_text().splitlines()
    assert inter[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert inter[1:] == expected_rows()
    assert "users: 5   items: 7   interactions: 20" in out
    assert "interactions per user: min 2, p25 3, p50 4, p75 5, p90 6, p99 6, max 6" in out
    assert "fits MAX_ITEM_LIST_LENGTH: 50: 100.0%, 200: 100.0%" in out
    assert "fewer than 3 interactions" in out  # user1 has 2: never tested
    assert f"recbole-efficient --model=ELASTIC --dataset=shop --data_path={tmp_path / 'data'}" \
        in out


def test_numeric_times_are_kept_and_the_result_trains(tmp_path, monkeypatch, capsys):
    log = tmp_path / "clicks.csv"
    frame = pd.DataFrame({"u": [f"u{i % 6}" for i in range(60)],
                          "i": [f"i{(i * 7) % 13}" for i in range(60)],
                          "t": [1_700_000_000 + 37 * i for i in range(60)]})
    frame.to_csv(log, index=False)
    code, out, err = run(monkeypatch, capsys, "convert", str(log), "--user=u", "--item=i",
                         "--time=t", "--name=clicks", f"--data_path={tmp_path}")
    assert code == 0, err
    rows = (tmp_path / "clicks" / "clicks.inter").read_text().splitlines()
    assert rows[0] == "user_id:token\titem_id:token\ttimestamp:float"
    assert rows[1] == "u0\ti0\t1700000000"
    monkeypatch.chdir(tmp_path)
    code, out, err = run(monkeypatch, capsys, "--model=SoftmaxSASRec", "--dataset=clicks",
                         f"--data_path={tmp_path}", "--epochs=1", "--show_progress=False",
                         "--MAX_ITEM_LIST_LENGTH=8", "--hidden_size=16")
    assert code == 0, err[-2000:]
    assert "test_result: " in out


BAD = [
    ("missing column", "customer,product,when\nu1,i1,1\n", ["--time=ts"],
     "has no column 'ts'; its columns are 'customer', 'product', 'when'"),
    ("unparseable time", "customer,product,when\nu1,i1,2024-01-01\nu1,i2,yesterday\n", [],
     "column 'when' at row 2 is 'yesterday', neither a number nor a date/time"),
    ("empty file", "", [], "is empty"),
    ("header only", "customer,product,when\n", [], "has no rows (columns: customer, product, when)"),
    ("missing item", "customer,product,when\nu1,,5\n", [],
     "column 'product' is empty at row 1"),
    ("bad rating", "customer,product,when,stars\nu1,i1,5,good\n", ["--rating=stars"],
     "column 'stars' at row 1 is 'good', not a number"),
    ("same column twice", "customer,product,when\nu1,i1,5\n", ["--item=customer"],
     "must name different columns"),
]


@pytest.mark.parametrize("case,text,extra,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_in_one_line(tmp_path, monkeypatch, capsys, case, text, extra,
                                          message):
    log = tmp_path / "log.csv"
    log.write_text(text)
    args = {"--user": "customer", "--item": "product", "--time": "when"}
    args.update(dict(a.split("=", 1) for a in extra))
    code, out, err = run(monkeypatch, capsys, "convert", str(log), f"--data_path={tmp_path}",
                         *(f"{k}={v}" for k, v in args.items()))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert message in err
    assert not (tmp_path / "log").exists() and not list(tmp_path.glob(".log.partial"))


def test_an_existing_dataset_is_replaced_only_when_asked(tmp_path, monkeypatch, capsys):
    log = tmp_path / "shop.csv"
    EVENTS.to_csv(log, index=False)
    args = ["convert", str(log), "--user=customer", "--item=product", "--time=when",
            f"--data_path={tmp_path}"]
    assert run(monkeypatch, capsys, *args)[0] == 0
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == 2 and "already exists; pass --force" in err
    assert run(monkeypatch, capsys, *args, "--force")[0] == 0
    code, _, err = run(monkeypatch, capsys, *args, "--name=../up")
    assert code == 2 and "a dataset name is a plain folder name" in err
