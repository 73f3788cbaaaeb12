"""The HTTP API (FastAPI) over an :class:`~recbole_efficient.serve.engine.Engine`.

``POST /events``, ``GET /recommend/{user}``, ``DELETE /users/{user}``, ``GET /users/{user}``,
``GET /health``, ``GET /metrics`` (Prometheus). Writes need ``Authorization: Bearer <token>``
when a token is set; reads are open.
"""

import hmac
import time
from contextlib import asynccontextmanager
from typing import Union

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, \
    generate_latest
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from recbole_efficient.serve.batcher import Batcher
from recbole_efficient.serve.engine import BadRequest
from recbole_efficient.serve.log import StateStore, StoreError

RawId = Union[StrictStr, StrictInt]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: RawId
    item: RawId


class Events(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event]


class Metrics:
    """The app's Prometheus metrics, in its own registry (several apps may share a process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.events = Counter("serve_events_accepted", "Events accepted and applied",
                              registry=self.registry)
        self.requests = Counter("serve_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("serve_request_seconds", "Request latency by endpoint",
                                 ["endpoint"], registry=self.registry)
        self.batch_size = Histogram("serve_batch_size", "Requests served per micro-batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                                    registry=self.registry)


class Measure:
    """ASGI middleware counting and timing every request by endpoint and status.

    A plain ASGI wrapper: Starlette's ``@app.middleware("http")`` passes each request through
    memory streams, which cost more per request than the batched model work."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")  # set by the router on this same scope
            endpoint = f"{scope['method']} {route.path}" if route is not None else "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def create_app(engine, token=None, state_dir=None, max_batch=256, max_wait_ms=2.0,
               snapshot_events=10000, snapshot_seconds=60.0):
    """The FastAPI app serving ``engine``; run it with uvicorn (its lifespan starts the
    batching worker: use ``with TestClient(app)`` in tests).

    ``state_dir``: where the write-ahead log and snapshots go (None: nothing is durable); the
    saved state is recovered here, before the app is returned, so bad state fails early.
    """
    store = None
    if state_dir is not None:
        store = StateStore(state_dir, engine, snapshot_events, snapshot_seconds)
        try:
            store.recover()
        except BaseException:
            store.close()
            raise
    metrics = Metrics()
    batcher = Batcher(engine, store, max_batch, max_wait_ms, metrics)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="recbole-efficient serve", lifespan=lifespan)
    app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics

    # async: FastAPI runs a plain ``def`` dependency in a worker thread, a hand-off per request
    async def authorize(authorization: str = Header(default="")):
        if token is None:
            return
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.encode()):
            raise HTTPException(401, "missing or wrong token: send Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    app.add_middleware(Measure, metrics=metrics)

    async def run(kind, *args):
        try:
            # a ready response: FastAPI's generic encoding of the result costs more than scoring
            return JSONResponse(await batcher.submit(kind, *args))
        except BadRequest as err:
            raise HTTPException(400, str(err)) from None
        except StoreError as err:
            raise HTTPException(503, str(err)) from None

    @app.exception_handler(Exception)
    async def failed(request, err):
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, 500)

    @app.post("/events", dependencies=[Depends(authorize)])
    async def post_events(body: Events):
        return await run("events", [(e.user, e.item) for e in body.events])

    @app.get("/recommend/{user}")
    async def recommend(user: str, k: int = 10, exclude_seen: bool = True):
        return await run("recommend", user, k, exclude_seen)

    @app.delete("/users/{user}", dependencies=[Depends(authorize)])
    async def forget(user: str):
        return await run("forget", user)

    @app.get("/users/{user}")
    async def user_info(user: str):
        return await run("user", user)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_name, "mode": engine.mode,
                "users": engine.n_users, "seq": store.seq if store is not None else None}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
