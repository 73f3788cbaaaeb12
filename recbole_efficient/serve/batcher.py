"""Micro-batching: requests queue up; one worker serves them in batches.

The worker takes the first waiting request, gathers more until ``max_wait_ms`` after that
request arrived or until ``max_batch`` are in hand, and serves the batch in one thread (the
event loop stays free to accept requests meanwhile; the next batch gathers while this one
runs): each write is validated alone (a bad request fails alone), every valid write is
logged with one ``fsync``, the writes are applied in their order
(:meth:`Engine.apply_writes`: one call per run of events), and the reads are scored in one
call. Only this worker touches the engine, one batch at a time.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from logging import getLogger

from recbole_efficient.serve.engine import BadRequest


class Batcher:
    """Serve ``engine`` requests in micro-batches; ``store``: a :class:`StateStore` (or None:
    nothing is durable). ``metrics``: an object with ``events`` (counter) and ``batch_size``
    (histogram), or None."""

    def __init__(self, engine, store=None, max_batch=256, max_wait_ms=2.0, metrics=None):
        self.engine = engine
        self.store = store
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000
        self.metrics = metrics
        self.queue = None
        self.task = None
        self.executor = None

    async def start(self):
        self.queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-engine")
        self.task = asyncio.create_task(self._worker())

    async def stop(self):
        """Finish the batch in hand, fail what still waits, snapshot, close the log."""
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
        while self.queue is not None and not self.queue.empty():
            _, _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))
        if self.executor is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.executor, self._close_store)
            self.executor.shutdown(wait=True)
            self.executor = None

    def _close_store(self):
        if self.store is None:
            return
        try:
            if self.store.pending and not self.store.broken:
                self.store.snapshot()  # the next start need not replay
        finally:
            self.store.close()

    async def submit(self, kind, *args):
        """Queue one request and wait for its result (or its exception)."""
        if self.task is None:
            raise RuntimeError("the batcher is not running (start the app's lifespan)")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(((kind, *args), time.monotonic(), future))
        return await future

    async def _worker(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            # counted from the first request's arrival: requests that queued while the previous
            # batch ran have waited already and go at once, with whatever else is queued
            deadline = batch[0][1] + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            work = [item for item, _, _ in batch]
            try:
                # shielded: a shutdown waits for the batch in hand (its log records are written)
                results = await asyncio.shield(
                    loop.run_in_executor(self.executor, self.serve, work))
            except asyncio.CancelledError:
                raise
            except Exception as err:  # an engine failure fails the batch, not the server
                getLogger().exception("serve: batch failed")
                results = [err] * len(batch)
            for (_, _, future), result in zip(batch, results):
                if future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def serve(self, work):
        """Serve one batch (in the engine's thread); returns a result or an exception per item.

        Items: ``("events", events)``, ``("forget", user)``, ``("recommend", user, k,
        exclude_seen)``, ``("user", user)``.
        """
        engine = self.engine
        results = [None] * len(work)
        writes, records = [], []  # (index, parsed events or None), log record
        for i, (kind, *args) in enumerate(work):
            try:
                if kind == "events":
                    parsed = engine.parse(args[0])
                    writes.append((i, parsed))
                    records.append({"op": "events", "events": [[u, engine.item_tokens[item]]
                                                               for u, item in parsed]})
                elif kind == "forget":
                    user = args[0]
                    engine.check_user(user)
                    writes.append((i, None))
                    records.append({"op": "forget", "user": str(user)})
                elif kind == "recommend":
                    engine.check_user(args[0])
                    engine.check_k(args[1])
            except BadRequest as err:
                results[i] = err
        if writes:
            seqs = [None] * len(writes)
            if self.store is not None:
                try:
                    seqs = self.store.log(records)
                except Exception as err:  # nothing logged: nothing applied
                    for i, _ in writes:
                        results[i] = err
                    writes = []
            try:
                self._apply(writes, seqs, results, work)
            except Exception as err:
                getLogger().exception("serve: applying logged events failed")
                if self.store is not None:  # logged but maybe not applied: stop writing
                    self.store.broken = f"applying logged events failed: {err}"
                for i, _ in writes:
                    results[i] = err
        reads = [i for i, (kind, *_) in enumerate(work)
                 if kind == "recommend" and results[i] is None]
        if reads:
            try:
                outs = engine.recommend_many([tuple(work[i][1:]) for i in reads])
            except Exception as err:
                getLogger().exception("serve: scoring failed")
                outs = [err] * len(reads)
            for i, out in zip(reads, outs):
                results[i] = out if isinstance(out, Exception) else \
                    {"user": str(work[i][1]), "items": out[0], "scores": out[1]}
        for i, (kind, *args) in enumerate(work):
            if kind == "user":
                try:
                    results[i] = engine.user_info(args[0])
                except BadRequest as err:
                    results[i] = err
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(work))
        if self.store is not None and not self.store.broken and self.store.snapshot_due():
            try:
                self.store.snapshot()
            except Exception:  # the log still holds everything: serving goes on
                getLogger().exception("serve: snapshot failed")
        return results

    def _apply(self, writes, seqs, results, work):
        """Apply logged writes in order (:meth:`Engine.apply_writes`), then answer each."""
        self.engine.apply_writes([("forget", str(work[i][1])) if parsed is None else parsed
                                  for i, parsed in writes])
        for (i, parsed), seq in zip(writes, seqs):
            results[i] = ({"forgotten": str(work[i][1]), "seq": seq} if parsed is None
                          else {"accepted": len(parsed), "seq": seq})
        if self.metrics is not None:
            self.metrics.events.inc(sum(len(parsed) for _, parsed in writes if parsed))
