"""``recbole-efficient serve``: the HTTP server of a trained checkpoint (uvicorn)."""

import argparse
import gc
import logging
import os
import sys

PROG = "recbole-efficient serve"
TOKEN_ENV = "RECBOLE_EFFICIENT_SERVE_TOKEN"


def parser():
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a trained checkpoint over HTTP: POST /events takes users' new "
                    "interactions, GET /recommend/{user} answers their top-k items. Users of "
                    "the training data start from their history; every accepted event is "
                    "logged (fsync) before it is acknowledged and survives a crash.")
    p.add_argument("--checkpoint", required=True, help="a .pth file written by training")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--mode", default="auto", choices=("auto", "stream", "reencode"),
                   help="stream: one step per event (models with streaming inference); "
                        "reencode: full_sort_predict over the last MAX_ITEM_LIST_LENGTH items; "
                        "auto (default): stream when the model can")
    p.add_argument("--state_dir", default="serve_state",
                   help="write-ahead log and snapshots (default serve_state/)")
    p.add_argument("--token", default=None,
                   help=f"bearer token required by POST and DELETE (default: ${TOKEN_ENV}; "
                        "none: writes are open)")
    p.add_argument("--max_batch", type=int, default=256, help="most requests per micro-batch")
    p.add_argument("--max_wait_ms", type=float, default=2.0,
                   help="longest a request waits for others to batch with (default 2)")
    p.add_argument("--snapshot_events", type=int, default=10000,
                   help="snapshot after this many logged events (default 10000)")
    p.add_argument("--snapshot_seconds", type=float, default=60.0,
                   help="or this long after the previous snapshot (default 60)")
    p.add_argument("--max_events", type=int, default=1000, help="most events per request")
    p.add_argument("--data_path", default=None,
                   help="folder holding the dataset (default: the checkpoint's data_path)")
    p.add_argument("--trust_checkpoint", type=_bool, default=False,
                   help="allow checkpoints that need full unpickling (RecBole's own format)")
    return p


def _bool(value):
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def main(argv=None):
    """Returns the exit status (2: bad start-up input, before the server starts)."""
    args = parser().parse_args(argv)
    # RecBole's logger would dump the whole config to stderr: start-up errors are one line.
    # A root handler set first makes its logging.basicConfig a no-op.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.ERROR)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)
    try:
        app = build(args)
    except (ValueError, KeyError, OSError) as err:  # ServeError, DatasetError, missing files
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    handler.setLevel(logging.WARNING)
    # The users restored at start live as long as the server: frozen, they are skipped by
    # every full collection, which would walk them all (pauses of 100s of ms at 10,000 users).
    gc.collect()
    gc.freeze()
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def build(args):
    from recbole_efficient.serve.common import ServeError, checkpoint_file, file_sha256
    from recbole_efficient.serve.log import check_state_dir

    checkpoint = checkpoint_file(args.checkpoint)
    # before the minutes a large dataset can take to load
    check_state_dir(args.state_dir, checkpoint.resolve(), file_sha256(checkpoint))
    for name in ("max_batch", "max_events", "snapshot_events"):
        if getattr(args, name) < 1:
            raise ServeError(f"--{name} must be at least 1, got {getattr(args, name)}")
    from recbole_efficient.checkpoint import UnsafeCheckpointError
    from recbole_efficient.serve.engine import Engine

    try:
        engine = Engine.from_checkpoint(checkpoint, mode=args.mode, data_path=args.data_path,
                                        max_events=args.max_events,
                                        trust_checkpoint=args.trust_checkpoint)
    except UnsafeCheckpointError as err:
        raise ServeError(str(err)) from None
    except RuntimeError as err:  # not a checkpoint, or weights that do not fit this dataset
        raise ServeError(f"cannot load {checkpoint}: {err}") from None
    from recbole_efficient.serve.app import create_app

    return create_app(engine, token=args.token or os.environ.get(TOKEN_ENV) or None,
                      state_dir=args.state_dir, max_batch=args.max_batch,
                      max_wait_ms=args.max_wait_ms, snapshot_events=args.snapshot_events,
                      snapshot_seconds=args.snapshot_seconds)
