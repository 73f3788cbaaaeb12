"""The serving engine: users' states and histories, events in, top-k recommendations out.

Pure Python and torch (no HTTP); one thread at a time may call it.

Users are named by raw ids (the dataset's tokens, as strings). A user of the training data
starts from their training history, built *lazily*: the first request that touches them (an
event or a recommendation) builds their state from that history, sorted by time as RecBole
sorts it. A user the dataset does not know starts empty.

Two modes:

``stream``
    each user keeps one row of the model's streaming state (:meth:`step`'s
    ``StreamState``, stored per user as its own small tensors) and the hidden vector of
    their last position, ``[d]``. An event costs one step, batched over users; a
    recommendation is one product of the cached hidden vectors with the output matrix,
    batched over users, without re-encoding anything. The hidden vector comes from
    ``model.advance`` (``step`` without scoring every item at every event). A lazily built
    user gets both from ``build_state`` over all but their last item, then one step. Models
    with learned positions (``stream_limit()``) keep their last ``limit`` items: a step past
    the limit rebuilds the state from the last ``limit - 1`` items first, so the state is
    always the one ``full_sort_predict`` sees on that window; models without a limit (LRURec)
    keep their whole history in the state.
``reencode``
    the history only; a recommendation runs ``full_sort_predict`` over the last
    ``MAX_ITEM_LIST_LENGTH`` items (batched over users). Any sequential model, RecBole's too.

A user with no history at all (new, or forgotten) is recommended the most popular items of
the training data (scores: interaction counts). :meth:`Engine.forget` drops a user for good: a
forgotten user of the training data starts empty on their next event, not from their
training history (which is what forgetting them means).
"""

import hashlib
import math
from logging import getLogger
from pathlib import Path

import numpy as np
import torch

from recbole_efficient.model.base import StreamState
from recbole_efficient.serve.common import BadRequest, ServeError, checkpoint_file, file_sha256

__all__ = ["Engine", "BadRequest", "ServeError", "MODES"]

MODES = ("auto", "stream", "reencode")


# -- nested state rows: a tensor, or a tuple/list of them (None: no entry), batch on dim 0 ---------
def _cat(rows):
    first = rows[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(rows)
    return type(first)(_cat([row[i] for row in rows]) for i in range(len(first)))


def _split(entry, n):
    """``n`` rows of a batched entry, each its own tensors (a view would keep the whole batch
    alive)."""
    if entry is None:
        return [None] * n
    if isinstance(entry, torch.Tensor):
        return [t.clone() for t in entry.split(1)]
    parts = [_split(e, n) for e in entry]
    return [type(entry)(part[i] for part in parts) for i in range(n)]


def _to(entry, device):
    if entry is None:
        return None
    if isinstance(entry, torch.Tensor):
        return entry.to(device)
    return type(entry)(_to(e, device) for e in entry)


class _User:
    """One user the engine holds: item history (ids), events applied since training, and in
    stream mode the state row (``None``: not built yet), its length and the last hidden
    vector (``None``: empty history)."""

    __slots__ = ("history", "events", "row", "length", "hidden", "_seen")

    def __init__(self, history, seen=None):
        self.history = list(history)
        self.events = 0
        self.row = None
        self.length = 0
        self.hidden = None
        # ``history`` as an int64 array already at hand (a training slice, a snapshot's view)
        self._seen = np.zeros(0, dtype=np.int64) if seen is None else seen

    def seen(self):
        """The history as an int64 array; histories only grow, so only what was appended since
        the last call is converted (a 2,000-item list costs more to convert than to score)."""
        done = len(self._seen)
        if done < len(self.history):
            self._seen = np.concatenate([self._seen, np.asarray(self.history[done:],
                                                                dtype=np.int64)])
        return self._seen


class Engine:
    """Serve ``model`` (trained on ``dataset``) to users named by raw ids.

    ``mode``: ``auto`` (stream when the model supports it, else reencode), ``stream`` or
    ``reencode``. ``max_events``: most events one :meth:`apply` call takes. ``checkpoint``:
    the file the model came from (a saved serving state names it). Training users' states are
    built lazily, on first touch.
    """

    def __init__(self, model, dataset, mode="auto", max_events=1000, checkpoint=None):
        from recbole.model.abstract_recommender import SequentialRecommender

        if mode not in MODES:
            raise ServeError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        name = type(model).__name__
        if not isinstance(model, SequentialRecommender):
            raise ServeError(f"{name} is not a sequential recommender: only sequential models "
                             "(scored from a user's item history) can be served.")
        streams = bool(getattr(model, "supports_streaming", lambda: False)())
        if mode == "stream" and not streams:
            raise ServeError(f"{name} has no streaming inference (it needs a causal encoder with "
                             "a fixed-size state): use --mode=reencode or --mode=auto.")
        self.mode = "stream" if mode == "stream" or (mode == "auto" and streams) else "reencode"
        self.model = model.eval()
        self.model_name = name
        self.max_events = int(max_events)
        self.device = next(model.parameters()).device
        self.n_items = int(model.n_items)
        self.max_len = int(model.max_seq_length)
        self.limit = model.stream_limit() if self.mode == "stream" else None
        self.checkpoint = str(Path(checkpoint).resolve()) if checkpoint else None
        self.checkpoint_sha256 = file_sha256(checkpoint) if checkpoint else None

        iid, uid = dataset.iid_field, dataset.uid_field
        self.item_tokens = [str(t) for t in dataset.field2id_token[iid]]
        self.item_index = {t: i for i, t in enumerate(self.item_tokens)}
        self.items_sha256 = hashlib.sha256("\n".join(self.item_tokens).encode()).hexdigest()
        self.user_index = {str(t): i for t, i in dataset.field2token_id[uid].items()}
        self._train_items, self._train_start, self._train_end = _training_histories(dataset)
        counts = np.bincount(self._train_items, minlength=self.n_items)[:self.n_items]
        self.popularity = torch.as_tensor(counts, dtype=torch.float32)
        self.users = {}
        self.forgotten = set()
        if self.mode == "stream":
            self.model.init_state(1)  # gathers the stream weights once

    @classmethod
    def from_checkpoint(cls, path, mode="auto", data_path=None, max_events=1000,
                        trust_checkpoint=False):
        """Load a checkpoint (``weights_only=True`` unless trusted), its dataset and model."""
        from recbole_efficient.quick_start import load_data_and_model

        if mode not in MODES:
            raise ServeError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
        checkpoint_file(path)
        config_dict = {"data_path": str(data_path)} if data_path else None
        _, model, dataset, *_ = load_data_and_model(path, trust_checkpoint=trust_checkpoint,
                                                    config_dict=config_dict)
        return cls(model, dataset, mode=mode, max_events=max_events, checkpoint=path)

    # -- users ------------------------------------------------------------------------------
    def _training_slice(self, user):
        """``user``'s training history as an int64 array (empty: none, or forgotten)."""
        index = self.user_index.get(user)
        if index is None or index >= len(self._train_start) or user in self.forgotten:
            return self._train_items[:0]
        return self._train_items[self._train_start[index]:self._train_end[index]]

    def _training_history(self, user):
        return self._training_slice(user).tolist()

    def _touch(self, user):
        record = self.users.get(user)
        if record is None:
            trained = self._training_slice(user)
            record = self.users[user] = _User(trained.tolist(), trained)
        return record

    def _history(self, user):
        record = self.users.get(user)
        return record.history if record is not None else self._training_history(user)

    @property
    def n_users(self):
        """Users held (touched since training, not forgotten)."""
        return len(self.users)

    def check_user(self, user):
        """``user`` as a raw id string; :class:`BadRequest` when it is not one."""
        return _name(user, "user")

    def user_info(self, user):
        """Events applied to ``user`` since training, and the length of their history."""
        user = _name(user, "user")
        record = self.users.get(user)
        return {"user": user, "events": record.events if record else 0,
                "history_length": len(self._history(user))}

    def forget(self, user):
        """Drop ``user``'s state, history and event count; they start empty from now on."""
        user = _name(user, "user")
        self.users.pop(user, None)
        self.forgotten.add(user)
        return user

    # -- events -----------------------------------------------------------------------------
    def parse(self, events):
        """One request's ``events`` (``(user, item)`` pairs or ``{"user", "item"}`` dicts, raw
        ids) as ``[(user, item id)]``: at least one, at most ``max_events``; raises
        :class:`BadRequest` on any bad event, naming them."""
        if not isinstance(events, (list, tuple)) or not events:
            raise BadRequest("no events: send at least one {\"user\": ..., \"item\": ...} pair.")
        if len(events) > self.max_events:
            raise BadRequest(f"{len(events)} events in one request, more than max_events="
                             f"{self.max_events}: split them into several requests.")
        return self.parse_events(events)

    def parse_events(self, events):
        """:meth:`parse` without the bounds of a request (logged records, bulk histories)."""
        parsed, unknown = [], []
        for event in events:
            if isinstance(event, dict):
                event = (event.get("user"), event.get("item"))
            if not isinstance(event, (list, tuple)) or len(event) != 2:
                raise BadRequest(f"an event is a user and an item, got {event!r}.")
            user, item = _name(event[0], "user"), _name(event[1], "item")
            index = self.item_index.get(item, 0)
            if index == 0:  # 0 is the padding token
                unknown.append(item)
            parsed.append((user, index))
        if unknown:
            shown = ", ".join(repr(i) for i in dict.fromkeys(unknown[:5]))
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise BadRequest(f"unknown item(s) {shown}{more}: not in the model's catalogue of "
                             f"{self.n_items - 1} items; no event of this request was applied.")
        return parsed

    def _item_ids(self, user, items):
        """The ids of raw ``items``, all of ``user``'s; :class:`BadRequest` as :meth:`parse_events`
        words it. Checked item by item only when one is not a known token (a bulk load has
        millions)."""
        index = self.item_index
        ids = [index.get(item, 0) if type(item) is str else 0 for item in items]
        if 0 in ids:
            return [i for _, i in self.parse_events([(user, item) for item in items])]
        return ids

    def apply(self, events):
        """Validate ``events`` (all or nothing: :class:`BadRequest`, nothing applied), then
        apply them in order. Returns how many were applied."""
        parsed = self.parse(events)
        self.apply_parsed(parsed)
        return len(parsed)

    def apply_writes(self, writes):
        """Apply logged writes in order: each a list of parsed events (:meth:`parse`) or
        ``("forget", user)``; consecutive event lists go in one :meth:`apply_parsed` call."""
        run = []
        for write in writes:
            if isinstance(write, tuple):
                if run:
                    self.apply_parsed(run)
                    run = []
                self.forget(write[1])
            else:
                run += write
        if run:
            self.apply_parsed(run)

    @torch.inference_mode()
    def apply_parsed(self, parsed):
        """Apply events already checked by :meth:`parse`, in order per user."""
        per_user = {}
        for user, item in parsed:
            per_user.setdefault(user, []).append(item)
        records = {user: self._touch(user) for user in per_user}
        if self.mode != "stream":
            for user, items in per_user.items():
                records[user].history.extend(items)
                records[user].events += len(items)
            return
        self._build([r for r in records.values() if r.row is None])
        # round r steps the r-th event of every user: each user once per step call
        for r in range(max(len(items) for items in per_user.values())):
            active = [(records[u], items[r]) for u, items in per_user.items() if len(items) > r]
            self._step([rec for rec, _ in active], [item for _, item in active])
            for record, item in active:  # after the step: a rebuild reads the history before it
                record.history.append(item)
                record.events += 1

    @torch.inference_mode()
    def load_histories(self, histories, batch_size=256):
        """Set users' histories in bulk (``{user: [raw item ids]}``, oldest first), replacing
        what the engine holds for them, as if they were their training histories (no events
        counted). In stream mode their states are built now, ``batch_size`` users per
        ``build_state`` pass. Not logged: take a snapshot afterwards to keep them."""
        parsed = {_name(user, "user"): self._item_ids(user, items)
                  for user, items in histories.items()}
        for user, items in parsed.items():
            self.forgotten.discard(user)
            self.users[user] = _User(items, np.asarray(items, dtype=np.int64))
        if self.mode == "stream":
            records = [self.users[u] for u in parsed]
            for start in range(0, len(records), batch_size):
                self._build(records[start:start + batch_size])
        return len(parsed)

    def _build(self, records):
        """States (and last hidden vectors) of ``records`` from their histories, in one
        ``build_state`` pass over all but the last item and one step."""
        if not records:
            return
        windows = [r.history[-self.limit:] if self.limit else r.history for r in records]
        rows = self._build_rows([w[:-1] for w in windows])
        for record, row, window in zip(records, rows, windows):
            record.row, record.length = row, max(len(window) - 1, 0)
        stepped = [(r, w[-1]) for r, w in zip(records, windows) if w]
        if stepped:
            self._step([r for r, _ in stepped], [item for _, item in stepped])

    def _build_rows(self, sequences):
        seq, lengths = self._padded(sequences, max(1, max(map(len, sequences))))
        state = self.model.build_state(seq, lengths)
        return _split(state.layers, len(sequences))

    def _step(self, records, items):
        """Append ``items[i]`` to ``records[i]``'s state (one step call); the history is
        extended by the caller."""
        if self.limit:
            full = [r for r in records if r.length >= self.limit]
            if full:  # learned positions end at the limit: drop the oldest item
                for record, row in zip(full, self._build_rows(
                        [r.history[-(self.limit - 1):] if self.limit > 1 else [] for r in full])):
                    record.row, record.length = row, self.limit - 1
        layers = _cat([r.row for r in records])
        positions = torch.tensor([r.length for r in records], device=self.device)
        item_ids = torch.tensor(items, device=self.device)
        hidden, state = self.model.advance(item_ids, StreamState(layers, positions))
        for record, row, h in zip(records, _split(state.layers, len(records)), hidden.unbind()):
            record.row, record.length, record.hidden = row, record.length + 1, h.clone()

    def _padded(self, sequences, width):
        seq = torch.zeros(len(sequences), width, dtype=torch.long)
        for i, items in enumerate(sequences):
            if items:
                seq[i, :len(items)] = torch.as_tensor(items)
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
        return seq.to(self.device), lengths.to(self.device)

    # -- recommendations --------------------------------------------------------------------
    def check_k(self, k):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < self.n_items:
            raise BadRequest(f"k must be an integer from 1 to {self.n_items - 1} (the catalogue's "
                             f"size), got {k!r}.")
        return k

    def recommend(self, user, k=10, exclude_seen=True):
        """``(items, scores)``: the ``k`` best raw item ids for ``user``, best first.

        Padding is never recommended; ``exclude_seen`` drops the user's history (fewer than
        ``k`` items come back when too few remain).
        """
        return self.recommend_many([(user, k, exclude_seen)])[0]

    @torch.inference_mode()
    def recommend_many(self, requests):
        """:meth:`recommend` for ``[(user, k, exclude_seen)]``, scored in one model call."""
        requests = [(_name(u, "user"), self.check_k(k), bool(ex)) for u, k, ex in requests]
        if self.mode == "stream":
            records = {u: self._touch(u) for u, _, _ in requests
                       if u in self.users or len(self._training_slice(u))}
            self._build([r for r in records.values() if r.row is None])
            hidden = {u: r.hidden for u, r in records.items() if r.hidden is not None}
            scored = list(hidden)
            scores = self.model.logits(torch.stack([hidden[u] for u in scored])) if scored else None
        else:
            histories = {u: self._history(u) for u, _, _ in requests}
            scored = [u for u, h in histories.items() if h]
            scores = None
            if scored:
                seq, lengths = self._padded([histories[u][-self.max_len:] for u in scored],
                                            self.max_len)
                scores = self.model.full_sort_predict(_interaction(self.model, seq, lengths))
        # one row per request: its scores, or the popularity of items for an empty history
        rows = {u: i for i, u in enumerate(scored)}
        table = torch.cat([scores.float().cpu(), self.popularity[None]]) if scored \
            else self.popularity[None]
        table = table[[rows.get(u, len(scored)) for u, _, _ in requests]]
        table[:, 0] = -torch.inf  # padding
        seen = [self._seen(u) if ex else None for u, _, ex in requests]
        lengths = [0 if s is None else len(s) for s in seen]
        if any(lengths):
            table[torch.from_numpy(np.repeat(np.arange(len(requests)), lengths)),
                  torch.from_numpy(np.concatenate([s for s in seen if s is not None]))] = -torch.inf
        out = [None] * len(requests)
        for k in {k for _, k, _ in requests}:  # one top-k per k asked for
            at = [i for i, (_, ki, _) in enumerate(requests) if ki == k]
            top = torch.topk(table[at], k)
            for i, values, indices in zip(at, top.values.tolist(), top.indices.tolist()):
                keep = [j for j, v in enumerate(values) if math.isfinite(v)]
                out[i] = ([self.item_tokens[indices[j]] for j in keep], [values[j] for j in keep])
        return out

    def _seen(self, user):
        """``user``'s history as an int64 array (the training slice when not touched yet)."""
        record = self.users.get(user)
        return record.seen() if record is not None else self._training_slice(user)

    # -- snapshots (plain tensors, lists, dicts, ints and strings: weights_only loads) --------
    def export(self):
        """Everything needed to restore the users, as plain data."""
        names = list(self.users)
        records = [self.users[u] for u in names]
        histories = [r.history for r in records]
        data = {"mode": self.mode, "users": names, "forgotten": sorted(self.forgotten),
                "items_sha256": self.items_sha256,
                "history": torch.tensor([i for h in histories for i in h], dtype=torch.long),
                "history_lengths": torch.tensor([len(h) for h in histories], dtype=torch.long),
                "events": torch.tensor([r.events for r in records], dtype=torch.long)}
        built = [r for r in records if r.row is not None]
        if self.mode == "stream" and built:
            data["built"] = torch.tensor([r.row is not None for r in records])
            data["layers"] = _to(_cat([r.row for r in built]), "cpu")
            data["lengths"] = torch.tensor([r.length for r in built], dtype=torch.long)
            data["has_hidden"] = torch.tensor([r.hidden is not None for r in built])
            hidden = [r.hidden for r in built if r.hidden is not None]
            data["hidden"] = torch.stack(hidden).cpu() if hidden else torch.zeros(0)
        return data

    def restore(self, data):
        """Replace the users by what :meth:`export` returned (by an engine of this model)."""
        if data["items_sha256"] != self.items_sha256:
            raise ServeError("the saved serving state was made over another item catalogue (the "
                             "dataset changed): start with an empty --state_dir.")
        self.users, self.forgotten = {}, set(data["forgotten"])
        flat = data["history"].numpy()
        items = flat.tolist()
        bounds = np.cumsum([0] + data["history_lengths"].tolist())
        for i, (user, events) in enumerate(zip(data["users"], data["events"].tolist())):
            record = self.users[user] = _User(items[bounds[i]:bounds[i + 1]],
                                              flat[bounds[i]:bounds[i + 1]])  # a view
            record.events = events
        # states of another mode are dropped: rebuilt lazily from the histories
        if self.mode == "stream" and data["mode"] == "stream" and "layers" in data:
            built = [self.users[u] for u, b in zip(data["users"], data["built"].tolist()) if b]
            rows = _split(_to(data["layers"], self.device), len(built))
            hidden = iter(data["hidden"].to(self.device).unbind())
            for record, row, length, has in zip(built, rows, data["lengths"].tolist(),
                                                data["has_hidden"].tolist()):
                record.row, record.length = row, length
                record.hidden = next(hidden).clone() if has else None
        getLogger().info(f"serve: restored {len(self.users)} users")


def _name(value, what):
    """A raw id as a string (ints accepted)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise BadRequest(f"{what} must be a non-empty string or an integer, got {value!r}.")
    return str(value)


def _interaction(model, seq, lengths):
    from recbole.data.interaction import Interaction

    return Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})


def _training_histories(dataset):
    """``(items, start, end)``: user ``u``'s training history (item ids, in the dataset's time
    order) is ``items[start[u]:end[u]]``.

    ``all_positions``/window datasets keep one row per interaction; ``augmented`` ones one row
    per target with its prefix (``item_id_list``), whose first row holds the first item.
    """
    feat = dataset.inter_feat
    users = feat[dataset.uid_field].numpy()
    items = feat[dataset.iid_field].numpy()
    n_users = max(int(dataset.user_num), int(users.max()) + 1 if len(users) else 0)
    order = np.argsort(users, kind="stable")  # stable: each user's rows keep the time order
    users, items = users[order], items[order]
    list_field = getattr(dataset, "item_id_list_field", None)
    if list_field in feat.interaction:
        first_rows = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) \
            else np.zeros(0, dtype=np.int64)
        firsts = feat[list_field].numpy()[order[first_rows], 0]
        users = np.insert(users, first_rows, users[first_rows])
        items = np.insert(items, first_rows, firsts)
    counts = np.bincount(users, minlength=n_users)
    end = np.cumsum(counts)
    return items.astype(np.int64), end - counts, end
