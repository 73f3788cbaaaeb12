"""``recbole-efficient serve``: the engine (streamed events score as a full forward does), the
HTTP API (validation, all-or-nothing batches, tokens, metrics), durability (log, snapshots,
torn lines) and a server killed mid-traffic that recovers every acknowledged event."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY, tiny_config, write_tiny_dataset

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from recbole_efficient.serve.app import create_app  # noqa: E402
from recbole_efficient.serve.batcher import Batcher  # noqa: E402
from recbole_efficient.serve.engine import BadRequest, Engine, ServeError  # noqa: E402
from recbole_efficient.serve.log import SNAPSHOT, StateStore  # noqa: E402

STREAMING = ("LRURec", "LinRec", "ELASTIC")
EXTRA = {"ELASTIC": {"n_experts": 4, "memory_size": 64, "memory_topk": 4}}
TOKEN = "s3cret"


@contextmanager
def cwd(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``checkpoint(model)``: a checkpoint trained 1 epoch on the tiny dataset (once each)."""
    from recbole_efficient import run_recbole_efficient

    root = write_tiny_dataset(tmp_path_factory.mktemp("serve"))
    made = {}

    def make(name):
        if name not in made:
            with cwd(root):
                result = run_recbole_efficient(name, TINY, read_cmd_line=False,
                                               config_dict=tiny_config(root, **EXTRA.get(name, {})))
            made[name] = Path(result["saved_model_file"])
        return made[name]

    return make


@pytest.fixture(scope="module")
def child_env(tmp_path_factory):
    """The environment of server subprocesses: one thread, and bytecode cached in a temporary
    folder across their starts (where the environment turns caching off, each start would
    compile torch and RecBole again: seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPYCACHEPREFIX=str(tmp_path_factory.mktemp("pycache")))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RecBole writes log/ into the working folder


_loaded = {}


def engine_of(checkpoint, name, mode="auto", **kwargs):
    """A fresh engine over ``name``'s checkpoint (model and dataset loaded once per model)."""
    from recbole_efficient import load_data_and_model

    if name not in _loaded:
        _, model, dataset, *_ = load_data_and_model(checkpoint(name))
        _loaded[name] = model, dataset
    model, dataset = _loaded[name]
    return Engine(model, dataset, mode=mode, checkpoint=checkpoint(name), **kwargs)


def expected_top(engine, history, k, window):
    """Top-``k`` of ``full_sort_predict`` on the last ``window`` items of ``history`` (raw
    ids; None: all of it), padding and seen items excluded."""
    from recbole.data.interaction import Interaction

    ids = [engine.item_index[str(i)] for i in history]
    kept = ids[-window:] if window else ids
    seq = torch.zeros(1, max(len(kept), engine.max_len), dtype=torch.long)
    seq[0, :len(kept)] = torch.tensor(kept)
    model = engine.model
    with torch.no_grad():
        scores = model.full_sort_predict(Interaction({
            model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: torch.tensor([len(kept)])}))[0].clone()
    scores[0] = -torch.inf
    scores[torch.tensor(ids)] = -torch.inf
    top = torch.topk(scores, k)
    return [engine.item_tokens[i] for i in top.indices.tolist()], top.values.tolist()


def catalogue(engine, n, seed):
    rng = np.random.default_rng(seed)
    return [engine.item_tokens[i] for i in rng.integers(1, engine.n_items, size=n)]


# -- the engine's recommendations ------------------------------------------------------------------
@pytest.mark.parametrize("name,mode", [(m, "auto") for m in STREAMING]
                         + [(m, "reencode") for m in STREAMING]
                         + [("SoftmaxSASRec", "auto"), ("LinRecBERT", "auto"), ("SASRec", "auto")])
def test_events_served_over_http_score_as_full_sort_predict(checkpoint, name, mode):
    engine = engine_of(checkpoint, name, mode)
    streams = name in STREAMING and mode == "auto"
    assert engine.mode == ("stream" if streams else "reencode")
    new, known = catalogue(engine, 12, seed=1), catalogue(engine, 3, seed=2)
    trained = list(engine._history("u5"))  # a training user with a long history (> MAX length)
    assert len(trained) > engine.max_len
    with TestClient(create_app(engine)) as client:
        for part in range(3):  # both users in each request, steps batched over them
            events = [{"user": "fresh", "item": i} for i in new[4 * part:4 * part + 4]]
            events.insert(1, {"user": "u5", "item": known[part]})
            reply = client.post("/events", json={"events": events})
            assert reply.status_code == 200, reply.text
            assert reply.json()["accepted"] == 5
        assert client.get("/health").json()["mode"] == engine.mode
        window = (engine.limit if streams else engine.max_len)
        for user, history in (("fresh", new), ("u5", [engine.item_tokens[i] for i in trained]
                                                 + known)):
            reply = client.get(f"/recommend/{user}", params={"k": 5}).json()
            items, scores = expected_top(engine, history, 5, window)
            assert reply["items"] == items, (user, reply, items)
            np.testing.assert_allclose(reply["scores"], scores, atol=1e-4, rtol=1e-4)
            info = client.get(f"/users/{user}").json()
            assert info == {"user": user, "events": len(history) - (len(trained) if user == "u5"
                                                                    else 0),
                            "history_length": len(history)}


def test_training_histories_are_recbole_eval_rows(checkpoint):
    """The history a training user starts from ends with RecBole's test row (prefix and
    target), for rows of every length, in both dataset layouts (augmented: SASRec)."""
    from recbole_efficient import load_data_and_model

    for name in ("LinRec", "SASRec"):
        engine = engine_of(checkpoint, name)
        *_, test = load_data_and_model(checkpoint(name))
        rows = test.dataset.inter_feat
        tokens = test.dataset.field2id_token["user_id"]
        for uid, seq, length, target in zip(rows["user_id"].tolist(), rows["item_id_list"].tolist(),
                                            rows["item_length"].tolist(), rows["item_id"].tolist()):
            history = engine._history(str(tokens[uid]))
            assert history[-length - 1:] == seq[:length] + [target]


def test_stream_limit_rebuilds_and_matches_after_many_events(checkpoint):
    """Past a learned-position model's limit every step still equals a full forward on the
    last ``limit`` items, when events arrive one at a time and in one long batch."""
    one, batch = engine_of(checkpoint, "LinRec"), engine_of(checkpoint, "LinRec")
    assert one.limit == one.max_len
    items = catalogue(one, 3 * one.limit, seed=3)
    for item in items:
        one.apply([("x", item)])
    batch.apply([("x", item) for item in items])
    expected = expected_top(one, items, 5, one.limit)
    for engine in (one, batch):
        got = engine.recommend("x", 5)
        assert got[0] == expected[0]
        np.testing.assert_allclose(got[1], expected[1], atol=1e-4)


def test_loaded_histories_score_as_streamed_events(checkpoint):
    loaded, streamed = engine_of(checkpoint, "ELASTIC"), engine_of(checkpoint, "ELASTIC")
    histories = {"a": catalogue(loaded, 5, seed=8), "u5": catalogue(loaded, 20, seed=9)}
    assert loaded.load_histories(histories, batch_size=1) == 2
    streamed.forget("u5")  # loaded histories replace the training one
    streamed.apply([(u, i) for u, items in histories.items() for i in items])
    for user in histories:
        assert loaded.user_info(user) == {"user": user, "events": 0, "history_length":
                                          len(histories[user])}
        got, want = loaded.recommend(user, 5), streamed.recommend(user, 5)
        assert got[0] == want[0]
        np.testing.assert_allclose(got[1], want[1], atol=1e-4)


def test_new_and_forgotten_users_get_popular_items(checkpoint):
    engine = engine_of(checkpoint, "LRURec")
    items, scores = engine.recommend("nobody", 3)
    assert scores == torch.topk(engine.popularity[1:], 3).values.tolist()  # interaction counts
    assert [engine.popularity[engine.item_index[i]].item() for i in items] == scores
    engine.apply([("u5", engine.item_tokens[1])])
    assert engine.user_info("u5")["events"] == 1
    engine.forget("u5")
    assert engine.user_info("u5") == {"user": "u5", "events": 0, "history_length": 0}
    assert engine.recommend("u5", 3) == engine.recommend("nobody", 3)
    engine.apply([("u5", engine.item_tokens[2])])  # starts empty, not from training
    assert engine.user_info("u5")["history_length"] == 1


@pytest.mark.parametrize("mode", ["stream", "reencode"])
def test_one_batch_of_recommendations_equals_one_request_at_a_time(checkpoint, mode):
    engine = engine_of(checkpoint, "LRURec", mode)
    engine.apply([("grown", i) for i in catalogue(engine, 6, seed=11)])
    requests = [("grown", 5, True), ("u5", 3, True), ("nobody", 4, True), ("grown", 7, False),
                ("u7", 5, False), ("u5", 5, True)]
    batched = engine.recommend_many(requests)
    for (items, scores), request in zip(batched, requests):
        alone = engine.recommend(*request)  # a product of another shape: last bits may differ
        assert items == alone[0], request
        np.testing.assert_allclose(scores, alone[1], rtol=1e-5, atol=1e-6)
    assert [len(items) for items, _ in batched] == [5, 3, 4, 7, 5, 5]
    engine.apply([("grown", batched[0][0][0])])  # a recommended item, seen from now on
    for user, k, exclude_seen in requests:
        items, scores = engine.recommend(user, k, exclude_seen)
        assert scores == sorted(scores, reverse=True)
        if exclude_seen:
            assert not set(engine.item_index[i] for i in items) & set(engine._history(user))
    assert batched[0][0][0] not in engine.recommend("grown", 5)[0]


# -- the HTTP API ------------------------------------------------------------------------------
def test_bad_requests_fail_alone_and_apply_nothing(checkpoint):
    engine = engine_of(checkpoint, "LinRec", max_events=5)
    item = engine.item_tokens[3]
    with TestClient(create_app(engine)) as client:
        ok = {"events": [{"user": "u1", "item": item}]}
        assert client.post("/events", json=ok).status_code == 200
        bad = {"events": [{"user": "u1", "item": item}, {"user": "u2", "item": "no-such-item"}]}
        reply = client.post("/events", json=bad)
        assert reply.status_code == 400 and "no-such-item" in reply.json()["detail"]
        assert client.get("/users/u1").json()["events"] == 1  # the valid event was not applied
        assert client.get("/users/u2").json()["events"] == 0
        for body, status in [
                ("not json", 422), ({"events": "x"}, 422), ({"events": [{"user": "u1"}]}, 422),
                ({"events": [{"user": ["u1"], "item": item}]}, 422),
                ({"events": [{"user": "u1", "item": 1.5}]}, 422),
                ({"events": [{"user": "u1", "item": item, "extra": 1}]}, 422),
                ({"events": []}, 400),
                ({"events": [{"user": "u1", "item": item}] * 6}, 400)]:
            kwargs = {"content": body} if isinstance(body, str) else {"json": body}
            reply = client.post("/events", **kwargs)
            assert reply.status_code == status, (body, reply.text)
            assert reply.json()["detail"], body
        assert "max_events=5" in reply.json()["detail"]
        assert client.get("/users/u1").json()["events"] == 1
        n = engine.n_items
        for k, status in [(0, 400), (n, 400), (-1, 400), ("ten", 422)]:
            reply = client.get("/recommend/u1", params={"k": k})
            assert reply.status_code == status and reply.json()["detail"], (k, reply.text)
        everything = client.get("/recommend/u1", params={"k": n - 1, "exclude_seen": "false"})
        assert len(everything.json()["items"]) == n - 1
        # ints are raw ids too (tokens "7" and "3"): the catalogue's tokens are "i<n>"
        reply = client.post("/events", json={"events": [{"user": 7, "item": 3}]})
        assert reply.status_code == 400 and "unknown item(s) '3'" in reply.json()["detail"]
    assert engine.parse([(7, item)]) == [("7", engine.item_index[item])]
    with pytest.raises(BadRequest, match="user must be"):
        engine.parse([(True, item)])


def test_writes_need_the_token_reads_do_not(checkpoint):
    engine = engine_of(checkpoint, "LRURec")
    body = {"events": [{"user": "u1", "item": engine.item_tokens[1]}]}
    with TestClient(create_app(engine, token=TOKEN)) as client:
        assert client.post("/events", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/events", json=body, headers=wrong).status_code == 401
        assert client.delete("/users/u1", headers=wrong).status_code == 401
        assert client.get("/users/u1").json()["events"] == 0
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/events", json=body, headers=right).status_code == 200
        assert client.get("/recommend/u1").status_code == 200
        assert client.delete("/users/u1", headers=right).json() == {"forgotten": "u1", "seq": None}


def test_delete_forgets_and_metrics_count(checkpoint):
    engine = engine_of(checkpoint, "ELASTIC")
    with TestClient(create_app(engine)) as client:
        events = [{"user": "u5", "item": i} for i in catalogue(engine, 3, seed=4)]
        assert client.post("/events", json={"events": events}).json()["accepted"] == 3
        before = client.get("/users/u5").json()
        assert before["events"] == 3 and before["history_length"] > 3
        assert client.delete("/users/u5").json()["forgotten"] == "u5"
        assert client.get("/users/u5").json() == {"user": "u5", "events": 0, "history_length": 0}
        assert client.get("/recommend/u5").json()["items"] == \
            client.get("/recommend/nobody").json()["items"]
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["model"] == "ELASTIC"
        assert health["mode"] == "stream" and health["users"] == 0
        client.post("/events", json={"events": []})
        assert client.get("/no-such-endpoint").status_code == 404
        text = client.get("/metrics").text
    assert "serve_events_accepted_total 3.0" in text
    assert 'serve_requests_total{endpoint="POST /events",status="200"} 1.0' in text
    assert 'serve_requests_total{endpoint="POST /events",status="400"} 1.0' in text
    assert 'serve_request_seconds_count{endpoint="GET /recommend/{user}"} 2.0' in text
    assert 'serve_requests_total{endpoint="unmatched",status="404"} 1.0' in text
    assert "serve_batch_size_count" in text


# -- durability -----------------------------------------------------------------------------------
def crash(store):
    """Stop ``store`` as a killed process would: no final snapshot, the lock released."""
    store.file.close()
    store.lock.release()


def test_log_and_snapshot_recover_the_same_state(checkpoint, tmp_path):
    engine = engine_of(checkpoint, "LinRec")
    store = StateStore(tmp_path / "state", engine, snapshot_events=12)
    store.recover()
    batcher = Batcher(engine, store)
    items = catalogue(engine, 40, seed=5)
    users = ["u3", "u5", "fresh", "u9"]
    for n in range(8):
        events = [(users[(n + j) % 4], items[5 * n + j]) for j in range(5)]
        work = [("events", events)] + ([("forget", "u9")] if n == 5 else []) \
            + [("events", [("fresh", "no-such-item")])]
        results = batcher.serve(work)
        assert results[0]["accepted"] == 5 and isinstance(results[-1], BadRequest)
    assert (tmp_path / "state" / SNAPSHOT).is_file()
    assert store.snapshot_seq > 0 and store.seq > store.snapshot_seq  # a log after the snapshot
    expected = {u: engine.recommend(u, 5) for u in users}
    infos = {u: engine.user_info(u) for u in users}
    crash(store)

    # a crash mid-write left half a record: ignored, and the log goes on after it
    segment = sorted((tmp_path / "state").glob("log-*.jsonl"))[-1]
    with open(segment, "ab") as f:
        f.write(b'{"seq": 999, "op": "events", "events": [["u3", "i')
    last = 9  # 8 event records and a forget; the torn line is not counted
    for max_events in (1000, 2):  # records of 5 events replay under a smaller max_events too
        again = engine_of(checkpoint, "LinRec", max_events=max_events)
        store = StateStore(tmp_path / "state", again)
        assert store.recover() > 0
        assert store.seq == last
        for user in users:
            assert again.user_info(user) == infos[user]
            got = again.recommend(user, 5)
            assert got[0] == expected[user][0]
            np.testing.assert_allclose(got[1], expected[user][1], atol=1e-5)
        last += 1
        assert store.log([{"op": "events", "events": [["u3", items[0]]]}]) == [last]
        again.apply_parsed(again.parse([("u3", items[0])]))
        infos["u3"]["events"] += 1
        infos["u3"]["history_length"] += 1
        expected["u3"] = again.recommend("u3", 5)
        crash(store)
    assert not any(b"999" in p.read_bytes() for p in (tmp_path / "state").glob("log-*.jsonl"))

    # a damaged line that is not the last one stops the start
    lines = segment.read_bytes().split(b"\n")
    segment.write_bytes(b"\n".join([b"{garbage"] + lines[1:]))
    other = engine_of(checkpoint, "LinRec")
    with pytest.raises(ServeError, match="damaged"):
        StateStore(tmp_path / "state", other).recover()


def test_restarted_app_recommends_the_same(checkpoint, tmp_path):
    state = tmp_path / "state"
    users = ["u1", "u5", "fresh"]
    with TestClient(create_app(engine_of(checkpoint, "ELASTIC"), state_dir=state)) as client:
        engine = client.app.state.engine
        for n, item in enumerate(catalogue(engine, 30, seed=6)):
            client.post("/events", json={"events": [{"user": users[n % 3], "item": item}]})
        client.delete("/users/u1")
        before = {u: client.get(f"/recommend/{u}").json() for u in users + ["u2"]}
    with TestClient(create_app(engine_of(checkpoint, "ELASTIC"), state_dir=state)) as client:
        for user, reply in before.items():
            after = client.get(f"/recommend/{user}").json()
            assert after["items"] == reply["items"]
            np.testing.assert_allclose(after["scores"], reply["scores"], atol=1e-5)
        assert client.get("/health").json()["seq"] == 31
    # the state belongs to ELASTIC's checkpoint: another model's refuses to start on it
    with pytest.raises(ServeError, match="another --state_dir"):
        create_app(engine_of(checkpoint, "LinRec"), state_dir=state)


# -- the real server, killed ----------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt, state, port, log, env):
    cmd = [sys.executable, "-m", "recbole_efficient", "serve", f"--checkpoint={ckpt}",
           f"--port={port}", f"--state_dir={state}", "--snapshot_events=40", f"--token={TOKEN}"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_healthy(proc, url, log_path, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}): "
                        f"{Path(log_path).read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("the server did not answer /health in time")


async def traffic(url, users, items, stop_after, kill):
    """Each user sends requests of 1-3 events one after another (all users at once) until
    ``kill`` is called after ``stop_after`` acknowledged requests. Returns per user the acked
    events, in order, and the events of the request that was in flight when it died."""
    acked = {u: [] for u in users}
    inflight = {u: [] for u in users}
    done = [0]
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def user_loop(client, user, seed):
        rng = np.random.default_rng(seed)
        for _ in range(100):  # bounded: 4 users x 100 requests at most
            events = [[user, items[i]] for i in rng.integers(0, len(items), rng.integers(1, 4))]
            inflight[user] = events
            try:
                reply = await client.post(f"{url}/events", headers=headers, json={
                    "events": [{"user": u, "item": i} for u, i in events]})
            except httpx.TransportError:
                return
            assert reply.status_code == 200, reply.text
            acked[user] += events
            inflight[user] = []
            done[0] += 1
            if done[0] == stop_after:
                kill()

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.wait_for(asyncio.gather(*(user_loop(client, u, s) for s, u in
                                                enumerate(users))), timeout=60)
    return acked, inflight


def test_killed_server_recovers_every_acknowledged_event(checkpoint, tmp_path, child_env):
    ckpt, state, port = checkpoint("LinRec"), tmp_path / "state", free_port()
    url = f"http://127.0.0.1:{port}"
    engine = engine_of(checkpoint, "LinRec")
    items = catalogue(engine, 50, seed=7)
    users = ["u5", "u7", "new-a", "new-b"]
    procs = []
    try:
        with open(tmp_path / "first.log", "wb") as log:
            procs.append(start_server(ckpt, state, port, log, child_env))
        wait_healthy(procs[0], url, tmp_path / "first.log")
        acked, inflight = asyncio.run(traffic(
            url, users, items, stop_after=200, kill=lambda: os.kill(procs[0].pid, signal.SIGKILL)))
        procs[0].wait(timeout=30)
        assert procs[0].returncode == -signal.SIGKILL
        assert sum(map(len, acked.values())) >= 200
        assert (state / SNAPSHOT).is_file()  # snapshots were taken while events came in

        with open(tmp_path / "second.log", "wb") as log:
            procs.append(start_server(ckpt, state, port, log, child_env))
        wait_healthy(procs[1], url, tmp_path / "second.log")
        reference = engine_of(checkpoint, "LinRec")
        for user in users:
            events = httpx.get(f"{url}/users/{user}").json()["events"]
            # a request is all or nothing: the in-flight one is wholly in or wholly out
            assert events in (len(acked[user]), len(acked[user]) + len(inflight[user])), user
            applied = acked[user] + (inflight[user] if events > len(acked[user]) else [])
            reference.apply(applied)
        for user in users + ["u9"]:
            served = httpx.get(f"{url}/recommend/{user}", params={"k": 5}).json()
            items_ref, scores_ref = reference.recommend(user, 5)
            assert served["items"] == items_ref, user
            np.testing.assert_allclose(served["scores"], scores_ref, atol=1e-4)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def test_bad_start_up_input_is_one_line_and_status_2(checkpoint, tmp_path, child_env):
    def run_cli(*args):
        return subprocess.run([sys.executable, "-m", "recbole_efficient", "serve", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=child_env)

    missing = run_cli("--checkpoint=nowhere/best.pth")
    stream = run_cli(f"--checkpoint={checkpoint('SoftmaxSASRec')}", "--mode=stream",
                     f"--state_dir={tmp_path / 'fresh'}")
    state = tmp_path / "state"
    state.mkdir()
    (state / "meta.json").write_text(json.dumps({"checkpoint": "other.pth", "sha256": "0" * 64}))
    other = run_cli(f"--checkpoint={checkpoint('LinRec')}", f"--state_dir={state}")
    for out, words in ((missing, "no checkpoint at"), (stream, "no streaming inference"),
                       (other, "holds the serving state of checkpoint other.pth")):
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("error: ") and words in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
