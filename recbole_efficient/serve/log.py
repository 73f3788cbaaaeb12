"""Durability of the serving state: a write-ahead log and atomic snapshots in ``state_dir``.

``state_dir`` holds

* ``meta.json``: the checkpoint the state belongs to (path, size, SHA-256); another
  checkpoint refuses to start on it;
* ``log-<first seq>.jsonl``: log segments, one JSON record a line, each with a sequence
  number one above the previous one: ``{"seq": 7, "op": "events", "events": [["u1", "i3"],
  ...]}`` (raw ids) or ``{"seq": 8, "op": "forget", "user": "u1"}``. Records are written and
  ``fsync``-ed before their events are applied and before the request is answered; one
  ``fsync`` covers every request of a micro-batch;
* ``snapshot.pt``: every user (``Engine.export``) and the last sequence number it contains,
  written to a temporary file, ``fsync``-ed and renamed over the old one (atomic). A new
  segment starts after each snapshot and the older ones, wholly inside it, are deleted.
  A snapshot is due after ``snapshot_events`` logged events, or ``snapshot_seconds`` after
  the previous one once anything was logged; it is checked after each batch (an idle server
  has nothing new to save) and taken at a clean shutdown.

Start-up loads the snapshot, then replays the records above its sequence number. A crash
mid-write leaves at most the last line of the last segment incomplete: it is ignored (and cut
off); a bad line anywhere else is corruption and stops the start.
"""

import json
import os
import re
import tempfile
import time
from logging import getLogger
from pathlib import Path

from recbole_efficient.serve.common import ServeError

FORMAT = "recbole_efficient.serve/1"
META = "meta.json"
SNAPSHOT = "snapshot.pt"
_SEGMENT = re.compile(r"^log-(\d{12})\.jsonl$")


class StoreError(RuntimeError):
    """The log could not be written: the request is not acknowledged."""


def check_state_dir(folder, checkpoint, sha256):
    """Raise :class:`ServeError` when ``folder`` holds the state of another checkpoint."""
    meta = Path(folder) / META
    if meta.is_file():
        try:
            saved = json.loads(meta.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ServeError(f"{meta} is not valid JSON ({err}): is {folder} a serving "
                             "state folder?") from None
        if saved.get("sha256") != sha256:
            raise ServeError(
                f"--state_dir {folder} holds the serving state of checkpoint "
                f"{saved.get('checkpoint')} (sha256 {str(saved.get('sha256'))[:12]}), not of "
                f"{checkpoint}: give another --state_dir, or the checkpoint it was made with.")
    elif Path(folder).is_dir() and (any(Path(folder).glob("log-*.jsonl"))
                                    or (Path(folder) / SNAPSHOT).exists()):
        raise ServeError(f"--state_dir {folder} holds a log or snapshot but no {META}: it is not "
                         "a serving state folder written by this version.")


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on every platform (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateStore:
    """Write-ahead log and snapshots of one engine's users in ``folder`` (see the module).

    ``snapshot_events`` / ``snapshot_seconds``: a snapshot is due after that many logged
    events (a forget counts one), or that long after the previous one with anything logged.
    """

    def __init__(self, folder, engine, snapshot_events=10000, snapshot_seconds=60.0):
        from filelock import FileLock, Timeout

        self.folder = Path(folder)
        self.engine = engine
        self.snapshot_events = int(snapshot_events)
        self.snapshot_seconds = float(snapshot_seconds)
        check_state_dir(self.folder, engine.checkpoint, engine.checkpoint_sha256)
        self.folder.mkdir(parents=True, exist_ok=True)
        # two servers appending to one log would interleave their sequence numbers
        # not thread-local: taken here, released by the batching thread at shutdown
        self.lock = FileLock(str(self.folder / "lock"), thread_local=False)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise ServeError(f"--state_dir {self.folder} is in use by another server.") from None
        meta = self.folder / META
        if not meta.is_file():
            self._write_atomic(meta, json.dumps({
                "format": FORMAT, "checkpoint": engine.checkpoint,
                "size": os.path.getsize(engine.checkpoint) if engine.checkpoint else None,
                "sha256": engine.checkpoint_sha256, "model": engine.model_name}).encode())
        self.seq = 0
        self.snapshot_seq = 0
        self.pending = 0  # events (and forgets) logged since the last snapshot
        self.last_snapshot = time.monotonic()
        self.file = None
        self.broken = None

    # -- start-up -----------------------------------------------------------------------------
    def recover(self):
        """Load the snapshot and replay the log into the engine; returns the records replayed.
        Then opens a new log segment."""
        import torch

        snapshot = self.folder / SNAPSHOT
        if snapshot.is_file():
            data = torch.load(snapshot, map_location="cpu", weights_only=True)
            if data.get("sha256") != self.engine.checkpoint_sha256:
                raise ServeError(f"{snapshot} belongs to another checkpoint than "
                                 f"{self.engine.checkpoint}: give another --state_dir.")
            self.engine.restore(data["engine"])
            self.seq = self.snapshot_seq = int(data["seq"])
        writes = []
        for record in self._records():
            if record["seq"] <= self.snapshot_seq:
                continue
            if record["seq"] != self.seq + 1:
                raise ServeError(f"the log in {self.folder} skips from sequence number {self.seq} "
                                 f"to {record['seq']}: it is damaged.")
            self.seq = record["seq"]
            if record["op"] == "events":
                # unbounded: a record logged under a larger max_events than this start's
                writes.append(self.engine.parse_events(record["events"]))
                self.pending += len(record["events"])
            else:
                writes.append(("forget", record["user"]))
                self.pending += 1
        self.engine.apply_writes(writes)
        replayed = len(writes)
        self._open_segment(self.seq + 1)
        getLogger().info(f"serve: recovered to sequence number {self.seq} "
                         f"({replayed} log records replayed)")
        return replayed

    def _segments(self):
        found = sorted((int(m.group(1)), p) for p in self.folder.iterdir()
                       if (m := _SEGMENT.match(p.name)))
        return [p for _, p in found]

    def _records(self):
        segments = self._segments()
        for n, path in enumerate(segments):
            with open(path, "rb") as f:
                data = f.read()
            lines = data.split(b"\n")
            end = 0  # bytes of complete, valid lines
            for i, line in enumerate(lines):
                last = n == len(segments) - 1 and i >= len(lines) - 2
                if i == len(lines) - 1 and not line:
                    break  # the newline that ends the file
                try:
                    record = json.loads(line)
                    if i == len(lines) - 1:
                        raise ValueError("no newline: the write stopped here")
                except ValueError as err:
                    if last:  # a torn final line: the crash hit mid-write, nothing was acked
                        getLogger().warning(f"serve: ignoring the incomplete last line of {path}")
                        with open(path, "r+b") as f:
                            f.truncate(end)
                            os.fsync(f.fileno())
                        return
                    raise ServeError(f"line {i + 1} of {path} is damaged ({err}); only the last "
                                     "line of the last segment may be incomplete.") from None
                end += len(line) + 1
                yield record

    # -- logging ------------------------------------------------------------------------------
    def _open_segment(self, first_seq):
        if self.file is not None:
            self.file.close()
        path = self.folder / f"log-{first_seq:012d}.jsonl"
        self.file = open(path, "ab")
        _fsync_dir(self.folder)

    def log(self, records):
        """Append ``records`` (dicts with ``op`` and its fields; numbered here, in order) and
        ``fsync``; returns their sequence numbers. Raises :class:`StoreError` when the log
        cannot be written (and every later call after that: the state may be ahead of it)."""
        if self.broken:
            raise StoreError(f"the write-ahead log failed earlier ({self.broken}); restart the "
                             "server.")
        seqs = list(range(self.seq + 1, self.seq + 1 + len(records)))
        lines = b"".join(json.dumps({"seq": s, **r}, separators=(",", ":")).encode() + b"\n"
                         for s, r in zip(seqs, records))
        try:
            self.file.write(lines)
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as err:
            self.broken = str(err)
            raise StoreError(f"could not write the write-ahead log: {err}") from err
        self.seq += len(records)
        self.pending += sum(len(r["events"]) if r["op"] == "events" else 1 for r in records)
        return seqs

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot_due(self):
        return self.pending > 0 and (
            self.pending >= self.snapshot_events
            or time.monotonic() - self.last_snapshot >= self.snapshot_seconds)

    def snapshot(self):
        """Save every user and the last sequence number, then start a new log segment and
        delete the segments the snapshot covers. Call between batches (state == log)."""
        import torch

        data = {"format": FORMAT, "sha256": self.engine.checkpoint_sha256, "seq": self.seq,
                "checkpoint": self.engine.checkpoint, "engine": self.engine.export()}
        fd, tmp = tempfile.mkstemp(prefix=".snapshot.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / SNAPSHOT)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_dir(self.folder)
        self.snapshot_seq, self.pending, self.last_snapshot = self.seq, 0, time.monotonic()
        self._open_segment(self.seq + 1)
        current = self.folder / f"log-{self.seq + 1:012d}.jsonl"
        for path in self._segments():  # all their records are <= seq: in the snapshot
            if path != current:
                path.unlink()
        getLogger().info(f"serve: snapshot at sequence number {self.seq}")

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None
        self.lock.release()

    def _write_atomic(self, path, payload):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
