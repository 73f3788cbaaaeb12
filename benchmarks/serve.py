"""Serving over HTTP: events/s and latency of streaming states against re-encoding histories.

    python -m benchmarks.serve --models LRURec LinRec --lengths 200 2000 --users 10000

For each model, history length H and serving mode (``stream``, ``reencode``), on this machine's
loopback interface only:

1. a checkpoint: a synthetic atomic dataset (``--train_users`` users, ``--n_items`` items, all
   of them used, timestamps) and the model trained on it for one epoch, hidden 64, 2 layers
   (the LRURec paper's sizes; other keys from each model's yaml), ``MAX_ITEM_LIST_LENGTH`` = H
   + ``--margin`` (the most events the load adds to one user, so that models with learned
   positions never stream past their last position); the weights do not matter, only the
   timing does. One checkpoint per model and H serves both modes;
2. ``--users`` users (unknown to the dataset), each with a history of H random items, loaded
   in-process (``Engine.load_histories``: states built by ``build_state`` in batches) and
   written as the server's snapshot into a fresh state folder per mode (a ``reencode``
   server restores the histories from it and drops the states);
3. ``python -m recbole_efficient serve`` started on each folder and a free port (the servers
   of both modes start together; each loads its snapshot), then, one server at a time:
   ``--floor_seconds`` of GET /health from ``--clients`` clients (the HTTP stack's own rate,
   the ceiling of any endpoint on this machine), then for each value B of
   ``--events_per_post`` a closed load of ``--clients`` recommendations in flight:
   ``--clients`` / B loops, each repeating: POST /events with one event of each of B random
   users, then GET /recommend/{user}?k=10 for each of them at once (react to what the users
   just did). B = 1 is a client per user click; B > 1 is an event pipeline forwarding events
   in batches while users ask for their pages. ``--warmup`` seconds unrecorded, then
   ``--seconds`` measured or ``--requests`` cycles, whichever ends first; every server is
   killed afterwards, whatever happened.

Reported per run: cycles (one event + its user's recommendation) per second, p50/p99 latency of
each endpoint as the client sees it, requests, errors, the server's mean micro-batch over the
measured seconds (from /metrics) and the GET /health rate. The clients speak HTTP/1.1 over
keep-alive asyncio connections with a minimal parser, so that on a small machine the load
generator takes little of the CPU the server needs. Snapshots are off during the measurement
unless ``--snapshot_events`` is given (a snapshot of every user stalls the server while it is
written; see docs/serving.md).

Outputs in ``--out``: serve.json (meta + rows), serve.csv, serve.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import cli, models, report

MODES = ("stream", "reencode")
DATASET = "serve"
#: ``--quick``: a run of seconds (defaults it replaces; explicit flags still win)
QUICK = {"models": ["LRURec"], "lengths": [8], "users": 20, "clients": 2, "seconds": 2.0,
         "events_per_post": [1, 2], "floor_seconds": 0.5,
         "warmup": 0.5, "requests": 2000, "n_items": 50, "train_users": 20, "margin": 200,
         "hidden_size": 8, "n_layers": 1}


# -- checkpoint -----------------------------------------------------------------------------------
def write_dataset(root, n_users, n_items, per_user, seed=0):
    """``root/serve/serve.inter``: ``n_users`` users (``t1``...) with ``per_user`` interactions
    each over items ``i1``...``i<n_items>``, every item used at least once, increasing
    timestamps."""
    rng = np.random.default_rng(seed)
    total = max(n_users * per_user, n_items)
    per_user = -(-total // n_users)
    items = np.concatenate([rng.permutation(n_items),
                            rng.integers(0, n_items, n_users * per_user - n_items)]) + 1
    rng.shuffle(items)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        for t, i in enumerate(items[u * per_user:(u + 1) * per_user]):
            lines.append(f"t{u + 1}\ti{i}\t{t}")
    folder = Path(root) / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{DATASET}.inter").write_text("\n".join(lines) + "\n")
    return Path(root)


def make_checkpoint(name, max_len, root, args):
    """Train ``name`` one epoch on the dataset under ``root`` (written before); returns the
    checkpoint's path. Runs in ``root`` (RecBole writes log/ into the working folder)."""
    from recbole_efficient import run_recbole_efficient

    config = {"data_path": str(root), "MAX_ITEM_LIST_LENGTH": int(max_len), "epochs": 1,
              "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
              "show_progress": False, "allow_download": False, "seed": 0,
              "checkpoint_dir": str(Path(root) / "saved"), "train_batch_size": 64,
              "eval_batch_size": 256, "state": "WARNING"}
    config.update(models.size_overrides(name, args.hidden_size, args.n_layers, dict(args.extra)))
    if models.model_yaml_defaults(name).get("loss_type", "CE") == "CE":
        config["train_neg_sample_args"] = None
    cwd = os.getcwd()
    try:
        os.chdir(root)
        result = run_recbole_efficient(name, DATASET, config_dict=config, read_cmd_line=False)
    finally:
        os.chdir(cwd)
    return Path(result["saved_model_file"])


def populate(checkpoint, modes, state_dirs, histories):
    """Load ``histories`` (``{user: [raw item ids]}``) into an engine of ``checkpoint`` and
    write them as the snapshot of every folder of ``state_dirs`` (one per mode of ``modes``);
    returns the seconds it took.

    The engine streams when ``stream`` is among ``modes``: its snapshot holds the histories and
    the states, and a ``reencode`` server restores the histories from it and drops the states.
    Other folders get a copy of the first."""
    from recbole_efficient.serve.engine import Engine
    from recbole_efficient.serve.log import StateStore

    started = time.perf_counter()
    engine = Engine.from_checkpoint(checkpoint, mode="stream" if "stream" in modes else modes[0])
    store = StateStore(state_dirs[0], engine)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # nothing else runs yet: set-up, not measured
    try:
        store.recover()
        engine.load_histories(histories)
        store.snapshot()
    finally:
        torch.set_num_threads(threads)
        store.close()
    del engine, store
    gc.collect()
    for state_dir in state_dirs[1:]:
        shutil.copytree(state_dirs[0], state_dir, ignore=shutil.ignore_patterns("lock"))
    return time.perf_counter() - started


def random_histories(n_users, length, n_items, seed):
    """``{"b<k>": [raw item ids]}``: ``n_users`` users of ``length`` random items each."""
    rng = np.random.default_rng(seed)
    tokens = [f"i{i}" for i in range(n_items + 1)]
    out = {}
    for u in range(n_users):
        out[f"b{u}"] = [tokens[i] for i in rng.integers(1, n_items + 1, length).tolist()]
    return out


# -- server ----------------------------------------------------------------------------------------
def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m recbole_efficient serve`` in a subprocess on 127.0.0.1 (a context manager:
    always killed on exit)."""

    def __init__(self, checkpoint, mode, state_dir, workdir, args):
        self.port = free_port()
        snapshots = ([f"--snapshot_events={args.snapshot_events}"] if args.snapshot_events
                     else ["--snapshot_events=1000000000", "--snapshot_seconds=1e9"])
        self.command = [sys.executable, "-m", "recbole_efficient", "serve",
                        f"--checkpoint={checkpoint}", f"--mode={mode}",
                        f"--state_dir={state_dir}", "--host=127.0.0.1", f"--port={self.port}",
                        f"--max_batch={args.max_batch}", f"--max_wait_ms={args.max_wait_ms}",
                        *snapshots]
        self.workdir = Path(workdir)
        self.log_path = self.workdir / f"server_{mode}.log"
        self.start_timeout = args.start_timeout
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
        self.env.pop("RECBOLE_EFFICIENT_SERVE_TOKEN", None)  # writes open: no token to send
        if args.threads:
            self.env["OMP_NUM_THREADS"] = str(args.threads)
        self.proc = None

    def __enter__(self):
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        """Start the process (:meth:`wait_healthy` waits for it to serve)."""
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.command, cwd=self.workdir, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            log.close()
        self.started = time.perf_counter()

    def wait_healthy(self):
        """Wait until /health answers (raises if the process exits or ``start_timeout``
        passes); returns the seconds since :meth:`start`."""
        while time.perf_counter() - self.started < self.start_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode} before "
                                   f"answering /health:\n{self.log_tail()}")
            try:
                status, _ = asyncio.run(_get_once("127.0.0.1", self.port, "/health"))
                if status == 200:
                    self.started_seconds = time.perf_counter() - self.started
                    return self.started_seconds
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer /health within {self.start_timeout:g} s:"
                           f"\n{self.log_tail()}")

    def log_tail(self, chars=3000):
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self):
        """Kill the process group (SIGKILL: the state is thrown away, so the server's final
        snapshot would only cost time) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.proc.wait(60)


# -- load ------------------------------------------------------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection; responses must carry Content-Length (uvicorn's
    do)."""

    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout = host, port, timeout
        self.reader = self.writer = None

    async def request(self, method, path, body=None):
        """``(status, parsed JSON body)``; reconnects after any failure."""
        try:
            return await asyncio.wait_for(self._request(method, path, body), self.timeout)
        except BaseException:
            self.close()
            raise

    async def _request(self, method, path, body):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        self.writer.write(head.encode() + data)
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        if "content-length" not in fields:
            raise ConnectionError("response without Content-Length")
        payload = await self.reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            self.close()
        is_json = fields.get("content-type", "").startswith("application/json")
        return status, json.loads(payload) if is_json else payload.decode(errors="replace")

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _get_once(host, port, path, timeout=5.0):
    conn = Connection(host, port, timeout)
    try:
        return await conn.request("GET", path)
    finally:
        conn.close()


class Load:
    """A closed loop of ``clients`` recommendation requests in flight: each of ``clients //
    per_post`` loops posts one event of each of ``per_post`` random users in one request, then
    asks for those users' top 10, one request each, at once; ``users`` take at most ``margin``
    events each."""

    def __init__(self, port, users, items, clients, margin, timeout, seed, per_post=1):
        self.port, self.users, self.items = port, users, items
        self.clients, self.margin, self.timeout = clients, margin, timeout
        self.per_post = max(1, min(int(per_post), clients))
        self.rng = random.Random(seed)
        self.events = {}  # events sent per user
        self.errors = []
        self.requests = 0  # sent while recording

    def pick_users(self):
        """``per_post`` distinct users with events to spare (fewer when nearly all are spent)."""
        picked = {}
        for _ in range(100 * self.per_post):
            if len(picked) == self.per_post:
                break
            user = self.users[self.rng.randrange(len(self.users))]
            if user not in picked and self.events.get(user, 0) < self.margin:
                picked[user] = None
        for user in picked:
            self.events[user] = self.events.get(user, 0) + 1
        return list(picked)

    async def phase(self, seconds, max_cycles, record):
        """Run every loop for ``seconds`` or until ``max_cycles`` cycles (an event and its
        user's recommendation) started; returns ``(cycles, elapsed seconds, post latencies,
        recommend latencies)`` (seconds)."""
        post, rec = [], []
        state = {"cycles": 0, "started": 0}
        started = time.perf_counter()
        deadline = started + seconds

        async def recommend(conn, user):
            t0 = time.perf_counter()
            if await self._call(conn, "GET", f"/recommend/{user}?k=10", None,
                                lambda b: 0 < len(b.get("items", ())) <= 10, record):
                rec.append(time.perf_counter() - t0)
                state["cycles"] += 1

        async def loop():
            conns = [Connection("127.0.0.1", self.port, self.timeout)
                     for _ in range(self.per_post + 1)]
            try:
                while time.perf_counter() < deadline and state["started"] < max_cycles:
                    users = self.pick_users()
                    if not users:
                        return
                    state["started"] += len(users)
                    events = [{"user": u, "item": self.items[self.rng.randrange(len(self.items))]}
                              for u in users]
                    t0 = time.perf_counter()
                    if not await self._call(conns[0], "POST", "/events", {"events": events},
                                            lambda b: b.get("accepted") == len(users), record):
                        continue
                    post.append(time.perf_counter() - t0)
                    if len(users) == 1:  # a task less per cycle: the clients share the CPU
                        await recommend(conns[1], users[0])
                    else:
                        await asyncio.gather(*(recommend(c, u)
                                               for c, u in zip(conns[1:], users)))
            finally:
                for conn in conns:
                    conn.close()

        await asyncio.gather(*(loop() for _ in range(max(1, self.clients // self.per_post))))
        return state["cycles"], time.perf_counter() - started, post, rec

    async def floor(self, seconds):
        """GET /health from ``clients`` closed-loop clients for ``seconds``: requests per second
        of the HTTP stack alone (no batching, no model), the most any endpoint can answer."""
        count = 0
        deadline = time.perf_counter() + seconds

        async def client():
            nonlocal count
            conn = Connection("127.0.0.1", self.port, self.timeout)
            try:
                while time.perf_counter() < deadline:
                    status, _ = await conn.request("GET", "/health")
                    count += status == 200
            finally:
                conn.close()

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(self.clients)))
        return count / (time.perf_counter() - started)

    async def _call(self, conn, method, path, body, ok, record):
        self.requests += record
        try:
            status, answer = await conn.request(method, path, body)
        except Exception as err:  # noqa: BLE001 - counted, the load goes on
            if record:
                self.errors.append(f"{method} {path.split('?')[0]}: {type(err).__name__}: {err}")
            return False
        if status != 200 or not isinstance(answer, dict) or not ok(answer):
            if record:
                self.errors.append(f"{method} {path.split('?')[0]}: HTTP {status}: "
                                   f"{str(answer)[:200]}")
            return False
        return True


def batch_counts(metrics_text):
    """``(requests, micro-batches)`` served so far, from the server's /metrics."""
    values = {}
    for line in metrics_text.splitlines():
        for key in ("serve_batch_size_sum", "serve_batch_size_count"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    return values.get("serve_batch_size_sum", 0.0), values.get("serve_batch_size_count", 0.0)


def percentile_ms(values, q):
    return float(np.percentile(values, q) * 1000) if values else None


async def _batches(port):
    try:
        _, text = await _get_once("127.0.0.1", port, "/metrics")
    except Exception:  # noqa: BLE001 - informative only
        return None
    return batch_counts(text) if isinstance(text, str) else None


def measure_server(server, users, items, args):
    """The HTTP floor (GET /health), then per value of ``--events_per_post`` a warm-up and the
    measured closed loop against a running ``server``: ``(floor requests/s, [measurements])``."""

    async def run():
        floor = await Load(server.port, users, items, args.clients, args.margin,
                           args.request_timeout, args.seed).floor(args.floor_seconds) \
            if args.floor_seconds > 0 else None
        out = []
        for per_post in args.events_per_post:
            load = Load(server.port, users, items, args.clients, args.margin,
                        args.request_timeout, args.seed, per_post)
            if args.warmup > 0:
                await load.phase(args.warmup, args.requests, record=False)
            before = await _batches(server.port)
            cycles, elapsed, post, rec = await load.phase(args.seconds, args.requests,
                                                          record=True)
            after = await _batches(server.port)
            served = batches = None
            if before and after:
                served, batches = after[0] - before[0], after[1] - before[1]
            out.append({
                "events_per_post": load.per_post, "cycles": cycles, "seconds": round(elapsed, 3),
                "events_per_s": cycles / elapsed if elapsed > 0 else None,
                "requests": load.requests, "errors": len(load.errors),
                "error_samples": load.errors[:5],
                "post_p50_ms": percentile_ms(post, 50), "post_p99_ms": percentile_ms(post, 99),
                "recommend_p50_ms": percentile_ms(rec, 50),
                "recommend_p99_ms": percentile_ms(rec, 99),
                "mean_batch": served / batches if batches else None})
        return floor, out

    return asyncio.run(run())


# -- main ------------------------------------------------------------------------------------------
def run_pair(name, length, checkpoint, histories, workdir, args, log):
    """Rows per mode of ``args.modes`` and value of ``--events_per_post``: every mode's
    snapshot written, its server started (together: their start-ups overlap), then each
    measured in turn while the others idle."""
    base = {mode: {"model": name, "history": length, "mode": mode, "users": args.users,
                   "clients": args.clients, "max_len": length + args.margin}
            for mode in args.modes}
    rows = {(mode, per_post): dict(base[mode], events_per_post=per_post)
            for mode in args.modes for per_post in args.events_per_post}
    state_dirs = [Path(workdir) / f"state_{mode}" for mode in args.modes]
    items = [f"i{i}" for i in range(1, args.n_items + 1)]
    try:
        with contextlib.ExitStack() as stack:
            took = populate(checkpoint, args.modes, state_dirs, histories)
            for row in rows.values():
                row["populate_s"] = round(took, 2)
            servers = {}
            for mode, state_dir in zip(args.modes, state_dirs):
                servers[mode] = Server(checkpoint, mode, state_dir, workdir, args)
                stack.callback(servers[mode].stop)
                servers[mode].start()
            for mode, server in servers.items():
                started = round(server.wait_healthy(), 2)
                for per_post in args.events_per_post:
                    rows[mode, per_post]["server_start_s"] = started
            for mode, server in servers.items():
                try:
                    floor, measured = measure_server(server, list(histories), items, args)
                    for per_post, found in zip(args.events_per_post, measured):
                        rows[mode, per_post].update(found, http_floor_per_s=floor, status="ok")
                finally:
                    server.stop()
    except Exception as err:  # noqa: BLE001 - one failed run does not stop the others
        for row in rows.values():
            if row.get("status") != "ok":
                row.update(status="error", error=f"{type(err).__name__}: {err}"[-2000:])
    finally:
        for state_dir in state_dirs:
            shutil.rmtree(state_dir, ignore_errors=True)
    for (mode, per_post), row in rows.items():
        log(f"{name} H={length} {mode} events/POST={per_post}: " + ", ".join(
            f"{k}={row[k]:.4g}" if isinstance(row.get(k), float) else f"{k}={row.get(k)}"
            for k in ("status", "populate_s", "server_start_s", "http_floor_per_s",
                      "events_per_s", "post_p99_ms", "recommend_p99_ms", "errors", "mean_batch",
                      "error") if k in row))
    return list(rows.values())


def add_ratios(rows):
    for row in rows:
        other = [r for r in rows if r["model"] == row["model"] and r["history"] == row["history"]
                 and r["events_per_post"] == row["events_per_post"] and r["mode"] == "reencode"]
        row["stream_over_reencode"] = None
        if row["mode"] == "stream" and other and row.get("events_per_s") and \
                other[0].get("events_per_s"):
            row["stream_over_reencode"] = row["events_per_s"] / other[0]["events_per_s"]


def _ms(x):
    return "" if x is None else f"{x:.3g}" if x < 100 else f"{x:.0f}"


def markdown(rows, args):
    table = report.markdown_table(
        ["model", "history H", "mode", "events per POST", "users", "clients", "events/s",
         "stream / reencode", "POST /events p50 (ms)", "p99 (ms)", "GET /recommend p50 (ms)",
         "p99 (ms)", "requests", "errors", "mean batch", "GET /health/s"],
        [[r["model"], r["history"], r["mode"], r["events_per_post"], r["users"], r["clients"],
          f"{r['events_per_s']:.0f}" if r.get("events_per_s") else r.get("status"),
          f"{r['stream_over_reencode']:.1f}x" if r.get("stream_over_reencode") else "",
          _ms(r.get("post_p50_ms")), _ms(r.get("post_p99_ms")), _ms(r.get("recommend_p50_ms")),
          _ms(r.get("recommend_p99_ms")), r.get("requests", ""), r.get("errors", ""),
          f"{r['mean_batch']:.1f}" if r.get("mean_batch") else "",
          f"{r['http_floor_per_s']:.0f}" if r.get("http_floor_per_s") else ""] for r in rows],
        align=["l", "r", "l"] + ["r"] * 13)
    header = (f"hidden {args.hidden_size}, {args.n_layers} layers, {args.n_items} items, "
              f"{args.users} users of H items each, {args.clients} recommendations in flight "
              "(closed loops, each posting the events of 'events per POST' users in one request, "
              f"then GET the top 10 of each of them), {args.seconds:g} s after "
              f"{args.warmup:g} s of warm-up, max_batch {args.max_batch}, max_wait_ms "
              f"{args.max_wait_ms:g}, MAX_ITEM_LIST_LENGTH = H + {args.margin}; events/s = "
              "event + recommendation cycles per second; GET /health/s: the HTTP stack alone "
              "under the same clients\n")
    return header, table


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, argv)
    finally:
        torch.set_num_threads(threads)


def _main(args, argv):
    rows = []
    workroot = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    total = time.perf_counter()
    try:
        for name in args.models:
            for length in args.lengths:
                workdir = workroot / f"{name}_{length}"
                write_dataset(workdir, args.train_users, args.n_items, args.train_length,
                              args.seed)
                started = time.perf_counter()
                checkpoint = make_checkpoint(name, length + args.margin, workdir, args)
                print(f"{name} H={length}: checkpoint in {time.perf_counter() - started:.1f} s",
                      flush=True)
                histories = random_histories(args.users, length, args.n_items, args.seed)
                rows += run_pair(name, length, checkpoint, histories, workdir, args,
                                 lambda s: print(s, flush=True))
                del histories
                gc.collect()
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    add_ratios(rows)
    header, table = markdown(rows, args)
    print(header + table)
    if args.out:
        report.save_run(args.out, "serve", cli.command_line("serve", argv), "Serving over HTTP",
                        f"{header}\n{table}\n", rows, "cpu", args=vars(args),
                        total_seconds=round(time.perf_counter() - total, 1))
    return rows


def build_parser():
    parser = cli.parser("serve", __doc__)
    parser.add_argument("--models", nargs="+", default=["LRURec", "LinRec"],
                        help="models with streaming inference")
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 2000],
                        help="history length H of every user")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="serving modes (the ratio needs both)")
    parser.add_argument("--users", type=int, default=10000, help="users held by the server")
    parser.add_argument("--clients", type=int, default=64,
                        help="recommendation requests in flight (closed loops of events per "
                             "POST users each)")
    parser.add_argument("--events_per_post", type=int, nargs="+", default=[1, 16],
                        help="events sent in one POST /events, of as many users, each then "
                             "asking for its top 10 (1: a client per user click; more: events "
                             "forwarded in batches by an event pipeline); one run per value")
    parser.add_argument("--floor_seconds", type=float, default=3.0,
                        help="seconds of GET /health load per server first: the HTTP stack's "
                             "own rate (0: skip)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured load per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded load first")
    parser.add_argument("--requests", type=int, default=100000,
                        help="most event + recommendation cycles per phase")
    parser.add_argument("--margin", type=int, default=50,
                        help="most events the load adds to one user; MAX_ITEM_LIST_LENGTH = H "
                             "+ margin")
    parser.add_argument("--n_items", type=int, default=3416, help="items (ML-1M has 3,416)")
    parser.add_argument("--train_users", type=int, default=300,
                        help="users of the synthetic training dataset")
    parser.add_argument("--train_length", type=int, default=20,
                        help="interactions per training user (more if the items need them)")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--n_layers", type=int, default=2)
    cli.add_set_option(parser, "any other key, for the models whose yaml has it")
    parser.add_argument("--max_batch", type=int, default=256, help="the server's --max_batch")
    parser.add_argument("--max_wait_ms", type=float, default=2.0,
                        help="the server's --max_wait_ms")
    parser.add_argument("--snapshot_events", type=int, default=0,
                        help="the server's --snapshot_events (0: no snapshot while measuring)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the servers (OMP_NUM_THREADS) and of training the "
                             "checkpoints (0: torch's default; the users' states are built on "
                             "every core before any server starts); 1 = one request batch per "
                             "core, and "
                             "stable on a busy machine where idle OpenMP threads stall tiny ops")
    parser.add_argument("--start_timeout", type=float, default=300.0,
                        help="seconds the server may take to answer /health")
    parser.add_argument("--request_timeout", type=float, default=60.0,
                        help="seconds one request may take (then it counts as an error)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, a few seconds per run (explicit flags still win)")
    parser.add_argument("--out", default="benchmarks/results/serve",
                        help="folder for serve.{json,csv,md} ('': print only)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    given = sys.argv[1:] if argv is None else list(argv)
    if "--quick" in given:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(given)
    for key in ("users", "clients", "margin", "requests", "n_items", "train_users"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be at least 1")
    if min(args.events_per_post) < 1 or max(args.events_per_post) > args.clients:
        parser.error(f"--events_per_post must be from 1 to --clients ({args.clients}), got "
                     f"{args.events_per_post}")
    return args


if __name__ == "__main__":
    main()
