"""ZeroMQ transport of trajectories: :class:`TrajectorySender` (actor side, DEALER) and
:class:`IngestServer` (store side, ROUTER).

Messages, sender -> server: ``[trajectory_id, payload]`` where payload is
:func:`common.wire.trajectory.encode` bytes; the id travels in its own frame so a rejection can
name it even when the payload does not decode. Replies, server -> sender:
``[b"ack", trajectory_id, outcome]`` (outcome ``stored`` | ``duplicate`` | ``dropped``) once
the store's transaction holding it has committed, or ``[b"reject", trajectory_id, reason,
detail]`` for a message that will never be accepted (a :class:`WireError` reason,
``bad_frames`` (not two frames, or an id frame outside 1..128 bytes), ``id_mismatch``, or the
store's: ``group_conflict``, ``group_full``, ``conflict``, ``expert_record``, ``bad_value`` /
``store_error`` for a record its transaction cannot hold; the other records of that batch are
still acknowledged).

Guarantees: a sender keeps every unacknowledged trajectory and resends it after
``resend_after_s`` (doubling up to 4x per attempt), so nothing acknowledged is lost and
nothing unacknowledged is forgotten across store restarts; the store is idempotent by
trajectory_id, so resends are harmless. ``send`` blocks while ``max_in_flight``
trajectories are unacknowledged (backpressure instead of memory growth).

Neither class is thread-safe (ZeroMQ sockets are not): use each from one thread.
The server side is launched by ``pushcut store`` (learner/store_process.py).
"""
from __future__ import annotations

import collections
import logging
import math
import time
from typing import Callable, Optional, Union

import zmq

from common.transport.group_commit import CommitFn, GroupCommitter, Outcome  # noqa: F401 (Outcome: API)
from common.transport.curve import CurveClientKeys, CurveServerKeys, apply_client_keys, apply_server_keys
from common.wire.trajectory import (DEFAULT_MAX_BYTES, MAX_ID_LEN, Trajectory, WireError,
                                    decode, encode)

log = logging.getLogger(__name__)

ACK, REJECT = b"ack", b"reject"
ACK_OUTCOMES = ("stored", "duplicate", "dropped")
_ZERO_COPY_BYTES = 64 << 10          # below this pyzmq copying is cheaper than tracking
_MAX_BACKOFF = 4.0                   # resend interval grows to at most 4x resend_after_s


class _Pending:
    __slots__ = ("payload", "first_sent", "last_sent", "attempts")

    def __init__(self, payload: bytes):
        self.payload = payload
        self.first_sent = time.monotonic()
        self.last_sent: Optional[float] = None   # None: waiting for a connected store
        self.attempts = 0


class TrajectorySender:
    """Actor-side stream of trajectories to one store, acknowledged and resent.

    ``acked_ids`` and ``ack_latencies_s`` keep the last ``keep_acked`` entries (None: all).
    """

    def __init__(self, address: str, *, max_in_flight: int = 64, resend_after_s: float = 5.0,
                 max_message_bytes: int = DEFAULT_MAX_BYTES,
                 curve: Optional[CurveClientKeys] = None, keep_acked: Optional[int] = 100_000,
                 context: Optional[zmq.Context] = None):
        if max_in_flight < 1 or resend_after_s <= 0:
            raise ValueError(f"max_in_flight {max_in_flight} must be >= 1 and resend_after_s "
                             f"{resend_after_s} > 0")
        self.address = address
        self.max_in_flight = max_in_flight
        self.resend_after_s = resend_after_s
        self.max_message_bytes = max_message_bytes
        self._pending: collections.OrderedDict[str, _Pending] = collections.OrderedDict()
        self.counters: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()
        self.rejections: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=100)
        self.acked_ids: collections.deque[str] = collections.deque(maxlen=keep_acked)
        self.ack_latencies_s: collections.deque[float] = collections.deque(maxlen=keep_acked)
        self._sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
        # IMMEDIATE: no queueing towards a store that is not connected; resends handle it
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.SNDHWM, max_in_flight + 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        if curve is not None:
            apply_client_keys(self._sock, curve)
        self._sock.connect(address)

    # ------------------------------------------------------------------ public verbs
    @property
    def in_flight(self) -> int:
        """Trajectories handed to send() and neither acknowledged nor rejected."""
        return len(self._pending)

    def send(self, traj: Union[Trajectory, bytes], trajectory_id: Optional[str] = None,
             timeout_s: Optional[float] = None) -> None:
        """Queue one trajectory (a Trajectory, or encoded bytes with its trajectory_id).

        Blocks, servicing acks and resends, while ``max_in_flight`` are unacknowledged;
        raises TimeoutError if that lasts ``timeout_s``, WireError if the record is invalid
        or larger than ``max_message_bytes``.
        """
        if isinstance(traj, Trajectory):
            payload, trajectory_id = encode(traj), traj.trajectory_id
        elif trajectory_id is None:
            raise ValueError("send(bytes) needs the trajectory_id")
        else:
            payload = bytes(traj)
        if len(payload) > self.max_message_bytes:
            raise WireError("too_large", f"trajectory {trajectory_id}: {len(payload)} bytes > "
                                         f"limit {self.max_message_bytes}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while len(self._pending) >= self.max_in_flight and trajectory_id not in self._pending:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"store {self.address} left {len(self._pending)} trajectories "
                                   f"unacknowledged for {timeout_s:.1f}s")
            self.poll(self._wait_s(remaining))
        self._pending[trajectory_id] = entry = _Pending(payload)
        self.counters["sent"] += 1
        self._transmit(trajectory_id, entry)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Handle the replies that arrive within ``timeout_s`` and resend what is overdue.
        Returns the number of replies handled."""
        handled = 0
        events = zmq.POLLIN | (zmq.POLLOUT if self._has_unsent() else 0)
        if self._sock.poll(max(0, math.ceil(timeout_s * 1000)), events):
            while True:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_reply(frames)
                handled += 1
        self._resend_overdue()
        return handled

    def flush(self, timeout_s: float, give_up: Optional[Callable[[], bool]] = None) -> bool:
        """Wait until every trajectory is acknowledged or rejected; False on timeout, or as
        soon as ``give_up()`` is true (checked at least once a second: each poll is short)."""
        deadline = time.monotonic() + timeout_s
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (give_up is not None and give_up()):
                return False
            self.poll(self._wait_s(remaining))
        return True

    def stats(self) -> dict[str, int]:
        return {"in_flight": len(self._pending), **self.counters,
                **{f"rejected_{k}": v for k, v in self.rejected.items()}}

    def close(self) -> None:
        """Close the socket; unacknowledged trajectories are dropped (flush() first)."""
        self._sock.close(linger=0)

    def __enter__(self) -> "TrajectorySender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _wait_s(self, remaining: Optional[float]) -> float:
        """How long a poll may sleep: until the next resend is due, never past the caller's
        deadline (unsent messages wake the poll through POLLOUT once a store connects)."""
        now = time.monotonic()
        due = min((self._due(e) for e in self._pending.values()), default=now + 1.0)
        wait = min(max(due - now, 0.0), 1.0)
        return wait if remaining is None else max(0.0, min(wait, remaining))

    def _due(self, entry: _Pending) -> float:
        if entry.last_sent is None:
            return math.inf
        backoff = min(2.0 ** max(entry.attempts - 1, 0), _MAX_BACKOFF)
        return entry.last_sent + self.resend_after_s * backoff

    def _has_unsent(self) -> bool:
        return any(e.last_sent is None for e in self._pending.values())

    def _transmit(self, trajectory_id: str, entry: _Pending) -> None:
        copy = len(entry.payload) < _ZERO_COPY_BYTES
        try:
            self._sock.send_multipart([trajectory_id.encode(), entry.payload],
                                      flags=zmq.NOBLOCK, copy=copy)
        except zmq.Again:    # no store connected, or its queue is full: poll() retries on POLLOUT
            entry.last_sent = None
            return
        if entry.attempts:
            self.counters["resent"] += 1
        entry.attempts += 1
        entry.last_sent = time.monotonic()

    def _resend_overdue(self) -> None:
        now = time.monotonic()
        for trajectory_id, entry in list(self._pending.items()):
            if entry.last_sent is None or now >= self._due(entry):
                self._transmit(trajectory_id, entry)
                if entry.last_sent is None:   # not writable: the rest would fail alike
                    break

    def _on_reply(self, frames: list[bytes]) -> None:
        if len(frames) < 3 or frames[0] not in (ACK, REJECT):
            self.counters["bad_replies"] += 1
            return
        trajectory_id = frames[1].decode(errors="replace")
        entry = self._pending.pop(trajectory_id, None)
        if entry is None:    # the ack of an earlier copy already arrived
            return
        if frames[0] == ACK:
            outcome = frames[2].decode(errors="replace")
            self.counters["acked"] += 1
            self.counters[outcome] += 1
            self.acked_ids.append(trajectory_id)
            self.ack_latencies_s.append(time.monotonic() - entry.first_sent)
        else:
            reason = frames[2].decode(errors="replace")
            detail = frames[3].decode(errors="replace") if len(frames) > 3 else ""
            self.rejected[reason] += 1
            self.rejections.append((trajectory_id, reason, detail))
            log.warning("store rejected trajectory %s: %s: %s", trajectory_id, reason, detail)


class IngestServer:
    """Store-side ROUTER: receive, decode and validate, commit a batch, then acknowledge.

    ``commit`` gets the valid messages of one batch as (trajectory, payload) pairs, the
    payload being the received frame's memory (the wire bytes, stored as they are), and
    must return one :data:`Outcome` per item after its transaction is durable; if it
    raises, nothing of the batch is acknowledged (the senders resend) and the server keeps
    going.

    Commits run in one worker thread (LMDB releases the GIL while it writes and syncs), so
    the next batch is received and validated while the previous one commits; acks are sent
    from the socket's own thread when a commit has finished. A batch is what arrived while
    the previous commit ran, at most ``max_batch`` messages or about ``max_batch_bytes``:
    many small records share one sync, while multi-MB records go one per transaction
    (measured faster: README, ``pushcut bench ingest``). While the waiting batch is full
    the socket is not read, so ZeroMQ and then the senders' windows hold the rest
    (backpressure).
    """

    def __init__(self, address: str, commit: CommitFn, *,
                 max_message_bytes: int = DEFAULT_MAX_BYTES, max_batch: int = 64,
                 max_batch_bytes: int = 4 << 20, curve: Optional[CurveServerKeys] = None):
        self.max_message_bytes = max_message_bytes
        self.counters: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()
        # Own context: a CURVE authenticator is one per context.
        self._ctx = zmq.Context()
        self._wake_rx, self._wake_tx = self._wake_pair()
        self._committer = GroupCommitter(commit, self._wake, max(1, max_batch), max_batch_bytes)
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        # Far beyond the contract's limit a peer is cut off instead of buffered; between the
        # limit and this, it gets a proper too_large rejection.
        self._sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_bytes + (1 << 20))
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        self._auth = apply_server_keys(self._sock, curve) if curve is not None else None
        try:
            self._sock.bind(address)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(f"cannot bind the ingest socket to {address}: {exc}") from None
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve_once(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for messages or a finished commit; receive and validate
        what is waiting, hand it to the committer, acknowledge what is committed. Returns
        the number of messages received."""
        poller = zmq.Poller()
        poller.register(self._wake_rx, zmq.POLLIN)
        room, room_bytes = self._committer.room()
        if room > 0 and room_bytes > 0:
            poller.register(self._sock, zmq.POLLIN)
        events = dict(poller.poll(int(timeout_s * 1000)))
        if self._wake_rx in events:
            while self._wake_rx.poll(0):
                self._wake_rx.recv()
        received = self._receive(room, room_bytes) if self._sock in events else 0
        self._acknowledge()
        return received

    def serve(self, should_stop: Callable[[], bool], poll_s: float = 0.1) -> None:
        """Serve until ``should_stop()`` is true (checked at least every ``poll_s``)."""
        while not should_stop():
            self.serve_once(poll_s)

    def close(self) -> None:
        """Commit and acknowledge what was received and validated, then close."""
        self._committer.close()
        self._acknowledge()
        for sock in (self._sock, self._wake_rx, self._wake_tx):
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    # ------------------------------------------------------------------ internals
    def _wake_pair(self) -> tuple[zmq.Socket, zmq.Socket]:
        """inproc PAIR: the committer thread (the only user of ``tx``) wakes the socket
        thread."""
        endpoint = f"inproc://ingest-wake-{id(self)}"
        rx = self._ctx.socket(zmq.PAIR)
        rx.bind(endpoint)
        tx = self._ctx.socket(zmq.PAIR)
        tx.connect(endpoint)
        return rx, tx

    def _wake(self) -> None:
        try:
            self._wake_tx.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:   # a wake is already queued, or we are closing
            pass

    def _receive(self, room: int, room_bytes: int) -> int:
        """Receive and validate up to the committer's room; hand the valid ones over at
        once, so that messages that arrived together are committed together."""
        received, valid = 0, []
        while room > 0 and room_bytes > 0:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            received += 1
            room -= 1
            self.counters["received"] += 1
            item = self._validate(frames)
            if item is not None:
                valid.append(item)
                room_bytes -= item[3].nbytes
        self._committer.add(valid)
        return received

    def _validate(self, frames: list[zmq.Frame]):
        """Checks that need no decoding first (frames, the id's length; decode then checks
        the size and the schema before it unpacks): a message built to be expensive is
        refused for the price of receiving it."""
        identity = frames[0].bytes
        # replies echo at most 200 bytes of the id frame, which is never copied whole
        tid = bytes(frames[1].buffer[:200]) if len(frames) > 1 else b""
        if len(frames) != 3:
            return self._reject(identity, tid, WireError(
                "bad_frames", f"{len(frames) - 1} frames (expected trajectory_id, payload)"))
        if not 1 <= len(frames[1]) <= MAX_ID_LEN:
            return self._reject(identity, tid, WireError(
                "bad_frames", f"trajectory_id frame of {len(frames[1])} bytes (expected "
                              f"1..{MAX_ID_LEN})"))
        payload = frames[2].buffer
        self.counters["bytes"] += payload.nbytes
        try:
            traj = decode(payload, self.max_message_bytes)
        except WireError as err:
            return self._reject(identity, tid, err)
        if traj.trajectory_id.encode() != tid:
            return self._reject(identity, tid, WireError(
                "id_mismatch", f"frame names {tid!r}, payload {traj.trajectory_id!r}"))
        return identity, tid, traj, payload

    def _acknowledge(self) -> None:
        """Reply to every message of the batches committed since the last call."""
        while self._committer.done:
            batch, outcomes = self._committer.done.popleft()
            if isinstance(outcomes, Exception):   # the store failed: senders will resend
                self.counters["commit_errors"] += 1
                log.error("commit of %d trajectories failed; nothing acknowledged",
                          len(batch), exc_info=outcomes)
                continue
            self.counters["batches"] += 1
            for (identity, tid, _, _), outcome in zip(batch, outcomes):
                if isinstance(outcome, WireError):
                    self._reject(identity, tid, outcome)
                else:
                    self.counters[outcome] += 1
                    self._reply(identity, [ACK, tid, outcome.encode()])

    def _reject(self, identity: bytes, tid: bytes, err: WireError) -> None:
        self.rejected[err.reason] += 1
        self._reply(identity, [REJECT, tid, err.reason.encode(), err.detail[:500].encode()])
        return None

    def _reply(self, identity: bytes, frames: list[bytes]) -> None:
        try:   # a vanished sender is not an error: it resends and gets a duplicate ack
            self._sock.send_multipart([identity, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            self.counters["replies_dropped"] += 1
