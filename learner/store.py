"""The trajectory store: durable, bounded, idempotent storage of trajectories in LMDB.

In: trajectories (with their wire bytes) from the ingest service (``pushcut store``,
learner/store_process.py) or from the learner's own ingest. Out: complete groups for the
dynamic-sampling filter and the learner, which marks what it has used as consumed.

One LMDB environment (a directory), named sub-databases:

=============  ====================================  =====================================
``traj``       trajectory_id -> wire bytes            the record exactly as the actor sent it
``groups``     group_id -> msgpack group record        learner/store_groups.py
``complete``   group_id -> b""                         complete and not consumed
``consumed``   group_id -> reason                      persisted consumption marks
``order``      eviction key -> group_id                consumed first, then stalest
``info``       name -> msgpack value                   eviction counters, the declaration
=============  ====================================  =====================================

Guarantees (docs/design.md): a write is durable when the call returns (``sync=True``);
writes are idempotent by trajectory_id (the same record again is a ``duplicate``, another
under a known id a ``conflict``); a consumed or evicted group never comes back; beyond
``capacity`` whole groups are evicted, consumed first, then the stalest (lowest
policy_version, then oldest created_at), an unconsumed one marked consumed as ``evicted``;
a full map is doubled and the transaction retried; a record that breaks its batch's
transaction is rejected alone (:meth:`TrajectoryStore.commit` retries record by record).
Group members agree on task, initial state, size, temperature and policy kind; expert
records (``policy_version == -1``) need ``accept_expert``. Once the learner has declared what
it trains on (:meth:`TrajectoryStore.declare`), the ingest's ``commit`` refuses what it could
not (common/wire/declaration.py); ``put``/``put_many`` store what local writers give them.
Other processes may open the same path (readers, or writers such as the learner marking
groups consumed); one process opens a path once and shares the instance between threads.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

import lmdb
import msgpack

from common.wire.declaration import TrainingDeclaration, read_declaration
from common.wire.trajectory import Trajectory, WireError, decode, encode
from learner.store_groups import GroupInfo, group_conflict, order_key, to_group_info

__all__ = ["EVICTED", "GroupInfo", "TrajectoryStore"]

T = TypeVar("T")
log = logging.getLogger(__name__)
EVICTED = "evicted"                   # consumption reason of groups evicted before use
_DB_NAMES = ("traj", "groups", "complete", "consumed", "order", "info")
_NO_LIMIT = 1 << 62                   # decode() limit for records already validated on ingest
# failures of the environment, not of a record: commit() raises them (senders resend)
_ENVIRONMENT_ERRORS = (OSError, MemoryError, lmdb.DiskError, lmdb.PanicError, lmdb.ReadonlyError,
                       lmdb.CorruptedError, lmdb.InvalidError, lmdb.LockError,
                       lmdb.ReadersFullError, lmdb.MemoryError, lmdb.VersionMismatchError)
_VALUE_ERRORS = (struct.error, OverflowError, ValueError, TypeError)   # -> bad_value
_DECLARATION = b"declaration"         # info key of the learner's TrainingDeclaration


def _same_record(stored: bytes, raw: Any, traj: Trajectory) -> bool:
    """Is the stored record the one being put? Same bytes, or the same fields."""
    try:
        return stored == raw or decode(stored, _NO_LIMIT).equals(traj)
    except WireError:   # written by another build: not this record
        return False


class TrajectoryStore:
    """LMDB-backed store of trajectories and their groups. See the module docstring."""

    def __init__(self, path: str, capacity: int = 20000, map_size_mb: int = 256,
                 readonly: bool = False, accept_expert: bool = False):
        if capacity < 1 or map_size_mb < 1:
            raise ValueError(f"capacity {capacity} and map_size_mb {map_size_mb} must be >= 1")
        if readonly and not os.path.exists(os.path.join(path, "data.mdb")):
            raise FileNotFoundError(f"no trajectory store at {path!r} (data.mdb missing)")
        self.path, self.capacity, self.readonly = path, capacity, readonly
        self.accept_expert = accept_expert   # False: expert records are refused (expert_record)
        self._lock = threading.RLock()
        try:
            self._env = lmdb.open(path, map_size=map_size_mb << 20, subdir=True, max_dbs=8,
                                  readonly=readonly, sync=True, metasync=True,
                                  readahead=False, lock=True)
        except lmdb.Error as exc:
            if "already open" in str(exc):
                raise RuntimeError(f"trajectory store {path!r} is already open in this process; "
                                   "share that TrajectoryStore (LMDB allows one per process)") \
                    from None
            raise
        self._env.reader_check()   # free slots of readers that died (e.g. SIGKILL)
        self._db = self._open_dbs()

    def _open_dbs(self) -> dict:
        """Named databases, outside a txn (a read txn's handles die with it); a map another
        process grew since lmdb.open (a restart) is adopted."""
        while True:
            try:
                return {name: self._env.open_db(name.encode(), create=not self.readonly)
                        for name in _DB_NAMES}
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)

    # ------------------------------------------------------------------ writing
    def put(self, traj: Trajectory, raw: Optional[bytes] = None) -> bool:
        """Store one trajectory durably; True if it is new. Raises WireError on a group
        conflict (see :meth:`commit`)."""
        return self.put_many([(traj, encode(traj) if raw is None else raw)])[0]

    def put_many(self, items: Sequence[tuple[Trajectory, bytes]]) -> list[bool]:
        """Store several trajectories in one durable transaction; True for each new one.
        On a rejection (see :meth:`commit`) nothing is written and the WireError is raised."""
        outcomes = self._write(lambda txn: self._commit_txn(txn, items, ingest=False))
        return [o == "stored" for o in outcomes]

    def commit(self, items: Sequence[tuple[Trajectory, Any]]) -> list[str | WireError]:
        """The ingest's commit: one durable transaction; per item ``"stored"``,
        ``"duplicate"`` (the same record is already present), ``"dropped"`` (its group was
        consumed or evicted) or a WireError (``conflict``: another record under that
        trajectory_id; ``expert_record``: an expert record and not ``accept_expert``;
        ``group_conflict``: task_id, init_state_id, group_size, temperature or policy kind
        differ from the group's first member; ``group_full``: more than group_size members;
        ``shape_mismatch``, ``future_version``, ``temperature_mismatch``: against the
        declaration in force, see :meth:`declare`).

        If the batch's transaction raises, each item is retried in a transaction of its own
        and one that raises again is rejected (``bad_value`` for a value the store cannot
        encode, ``store_error`` otherwise), so the rest are still stored. Failures of the
        environment (disk, LMDB itself) are raised: nothing is acknowledged, senders resend."""
        try:
            return self._write(lambda txn: self._commit_txn(txn, items, ingest=True))
        except _ENVIRONMENT_ERRORS:
            raise
        except Exception as exc:   # one record broke the batch: isolate it
            log.warning("commit of %d trajectories failed (%s: %s); retrying one by one",
                        len(items), type(exc).__name__, exc)
        return [self._commit_one(item) for item in items]

    def _commit_one(self, item: tuple[Trajectory, Any]) -> str | WireError:
        """One item in its own transaction -> its outcome, or the rejection of a record the
        store cannot hold."""
        try:
            return self._write(lambda txn: self._commit_txn(txn, [item], ingest=True))[0]
        except _ENVIRONMENT_ERRORS:
            raise
        except Exception as exc:
            reason = "bad_value" if isinstance(exc, _VALUE_ERRORS) else "store_error"
            return WireError(reason, f"trajectory {item[0].trajectory_id} cannot be stored: "
                                     f"{type(exc).__name__}: {exc}"[:300])

    def mark_consumed(self, group_ids: Iterable[str], reason: str = "trained") -> None:
        """Persist that these groups are used up: complete_groups() never returns them again
        (in any process, after any restart) and eviction takes them first."""
        marks = {gid: reason for gid in group_ids}
        self._write(lambda txn: self._mark_txn(txn, marks))

    def restore_consumption_marks(self, marks: dict[str, str]) -> None:
        """Add marks saved by :meth:`consumption_marks` (e.g. from a learner checkpoint);
        marks already present keep their reason."""
        self._write(lambda txn: self._mark_txn(txn, dict(marks)))

    def declare(self, declaration: TrainingDeclaration) -> None:
        """Persist what the learner trains on; from the next commit on, the ingest refuses
        records it could not train on (common/wire/declaration.py)."""
        self._write(lambda txn: txn.put(_DECLARATION, declaration.encode(), db=self._db["info"]))

    # ------------------------------------------------------------------ reading
    def declaration(self) -> Optional[TrainingDeclaration]:
        """The declaration in force, None before any (or one this build cannot read)."""
        return self._read(self._declared)

    def get(self, trajectory_id: str) -> Optional[Trajectory]:
        raw = self.get_raw(trajectory_id)
        return None if raw is None else decode(raw, _NO_LIMIT)

    def get_raw(self, trajectory_id: str) -> Optional[bytes]:
        """The stored wire bytes, exactly as received."""
        return self._read(lambda txn: txn.get(trajectory_id.encode(), db=self._db["traj"]))

    def __contains__(self, trajectory_id: object) -> bool:
        if not isinstance(trajectory_id, str):
            return False
        return self._read(lambda txn: self._has(txn, "traj", trajectory_id.encode()))

    def __len__(self) -> int:
        return self._read(lambda txn: txn.stat(self._db["traj"])["entries"])

    def complete_groups(self, include_consumed: bool = False) -> list[GroupInfo]:
        """Groups whose group_size members have all arrived, oldest first (by created_at,
        then by arrival)."""
        def read(txn) -> list[GroupInfo]:
            groups = txn.cursor(db=self._db["groups"])
            if include_consumed:
                found = [(k, msgpack.unpackb(v)) for k, v in groups]
                found = [(k, r) for k, r in found if len(r["members"]) >= r["group_size"]]
            else:
                found = [(k, msgpack.unpackb(groups.get(k)))
                         for k in txn.cursor(db=self._db["complete"]).iternext(values=False)]
            found.sort(key=lambda item: (item[1]["created_at"], item[1]["seq"]))
            return [to_group_info(k, r) for k, r in found]
        return self._read(read)

    def read_group(self, group_id: str) -> list[Trajectory]:
        """The group's trajectories in arrival order; empty if the group is unknown or was
        evicted."""
        def read(txn) -> list[bytes]:
            record = txn.get(group_id.encode(), db=self._db["groups"])
            if record is None:
                return []
            return [txn.get(m[0].encode(), db=self._db["traj"])
                    for m in msgpack.unpackb(record)["members"]]
        return [decode(raw, _NO_LIMIT) for raw in self._read(read)]

    def group_info(self, group_id: str) -> Optional[GroupInfo]:
        record = self._read(lambda txn: txn.get(group_id.encode(), db=self._db["groups"]))
        return None if record is None else to_group_info(group_id.encode(), msgpack.unpackb(record))

    def is_consumed(self, group_id: str) -> bool:
        return self._read(lambda txn: self._has(txn, "consumed", group_id.encode()))

    def consumption_marks(self) -> dict[str, str]:
        """group_id -> reason for every consumed (or evicted) group."""
        return self._read(lambda txn: {k.decode(): v.decode() for k, v in
                                       txn.cursor(db=self._db["consumed"])})

    def stats(self) -> dict[str, int | float]:
        def read(txn) -> dict[str, int | float]:
            entries = {name: txn.stat(self._db[name])["entries"] for name in _DB_NAMES}
            info = {k.decode(): msgpack.unpackb(v) for k, v in txn.cursor(db=self._db["info"])}
            env_info, psize = self._env.info(), self._env.stat()["psize"]
            return {"trajectories": entries["traj"], "groups": entries["groups"],
                    "complete_groups": entries["complete"],
                    "consumed_groups": entries["consumed"] - info.get("evicted_unconsumed", 0),
                    "evicted": info.get("evicted", 0),
                    "evicted_groups": info.get("evicted_groups", 0),
                    "bytes_used": (env_info["last_pgno"] + 1) * psize,
                    "map_size": env_info["map_size"]}
        return self._read(read)

    def close(self) -> None:
        with self._lock:
            self._env.close()

    def __enter__(self) -> "TrajectoryStore":
        return self
    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions
    def _read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        with self._lock:
            while True:
                try:
                    with self._env.begin(write=False) as txn:
                        return fn(txn)
                except lmdb.MapResizedError:   # another process grew the map: adopt it
                    self._env.set_mapsize(0)

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        if self.readonly:
            raise PermissionError(f"trajectory store {self.path!r} was opened readonly")
        with self._lock:
            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapResizedError:
                    self._env.set_mapsize(0)
                except lmdb.MapFullError:      # the aborted transaction is simply redone
                    self._env.set_mapsize(2 * self._env.info()["map_size"])

    def _has(self, txn: lmdb.Transaction, db: str, key: bytes) -> bool:
        with txn.cursor(db=self._db[db]) as cursor:   # set_key does not copy the value
            return cursor.set_key(key)

    def _declared(self, txn) -> Optional[TrainingDeclaration]:
        raw = txn.get(_DECLARATION, db=self._db["info"])
        return None if raw is None else read_declaration(raw)

    def _commit_txn(self, txn, items, ingest: bool) -> list[str | WireError]:
        """``ingest``: check the declaration, reject per item; else a rejection aborts."""
        outcomes, declared = [], self._declared(txn) if ingest else None
        for traj, raw in items:
            try:
                if declared is not None and (problem := self._refused(txn, traj, declared)):
                    raise problem
                outcomes.append(self._put_txn(txn, traj, raw))
            except WireError as err:
                if not ingest:
                    raise
                outcomes.append(err)
        self._evict_txn(txn)
        return outcomes

    def _refused(self, txn, traj: Trajectory, declared: TrainingDeclaration
                 ) -> Optional[WireError]:
        """Why the declared learner could not train on ``traj``; None for a record already
        stored (a resend is answered as before, duplicate or conflict)."""
        problem = declared.check(traj)
        return None if problem is None or self._has(txn, "traj", traj.trajectory_id.encode()) \
            else problem

    def _put_txn(self, txn, traj: Trajectory, raw) -> str:
        key, gkey = traj.trajectory_id.encode(), traj.group_id.encode()
        if traj.is_expert and not self.accept_expert:
            raise WireError("expert_record", f"trajectory {traj.trajectory_id}: an expert "
                            "record (policy_version -1) and this store holds RL rollouts "
                            "(store.accept_expert=false)")
        stored = txn.get(key, db=self._db["traj"])
        if stored is not None:
            if _same_record(stored, raw, traj):
                return "duplicate"
            raise WireError("conflict", f"trajectory {traj.trajectory_id} is already stored "
                            "with a different payload")
        if self._has(txn, "consumed", gkey):
            return "dropped"
        packed = txn.get(gkey, db=self._db["groups"])
        record = msgpack.unpackb(packed) if packed is not None else {
            "task_id": traj.task_id, "init_state_id": traj.init_state_id,
            "group_size": traj.group_size, "temperature": traj.temperature,
            "expert": traj.is_expert, "policy_version": traj.policy_version,
            "created_at": traj.created_at, "seq": self._next_seq(txn), "members": []}
        conflict = group_conflict(record, traj)
        if conflict is not None:
            raise conflict
        if len(record["members"]) >= record["group_size"]:
            raise WireError("group_full", f"trajectory {traj.trajectory_id}: group "
                            f"{traj.group_id} already has its {record['group_size']} members")
        if packed is not None:
            txn.delete(order_key(record, gkey, consumed=False), db=self._db["order"])
        record["members"].append([traj.trajectory_id, traj.success, traj.policy_version])
        record["policy_version"] = min(record["policy_version"], traj.policy_version)
        record["created_at"] = min(record["created_at"], traj.created_at)
        txn.put(key, raw, db=self._db["traj"])
        txn.put(gkey, msgpack.packb(record), db=self._db["groups"])
        txn.put(order_key(record, gkey, consumed=False), gkey, db=self._db["order"])
        if len(record["members"]) == record["group_size"]:
            txn.put(gkey, b"", db=self._db["complete"])
        return "stored"

    def _next_seq(self, txn) -> int:
        """Arrival number of a new group (ties of created_at are broken by it)."""
        packed = txn.get(b"next_seq", db=self._db["info"])
        seq = 0 if packed is None else msgpack.unpackb(packed)
        txn.put(b"next_seq", msgpack.packb(seq + 1), db=self._db["info"])
        return seq

    def _mark_txn(self, txn, marks: dict[str, str]) -> None:
        for group_id, reason in marks.items():
            gkey = group_id.encode()
            if not txn.put(gkey, reason.encode(), db=self._db["consumed"], overwrite=False):
                continue   # already consumed: the first reason stays
            txn.delete(gkey, db=self._db["complete"])
            packed = txn.get(gkey, db=self._db["groups"])
            if packed is not None:
                record = msgpack.unpackb(packed)
                txn.delete(order_key(record, gkey, consumed=False), db=self._db["order"])
                txn.put(order_key(record, gkey, consumed=True), gkey, db=self._db["order"])

    def _evict_txn(self, txn) -> None:
        """Drop whole groups, in order-key order, until at most ``capacity`` remain."""
        count = txn.stat(self._db["traj"])["entries"]
        if count <= self.capacity:
            return
        info = {k.decode(): msgpack.unpackb(v) for k, v in txn.cursor(db=self._db["info"])}
        with txn.cursor(db=self._db["order"]) as order:
            while count > self.capacity and order.first():
                okey, gkey = order.item()
                record = msgpack.unpackb(txn.get(gkey, db=self._db["groups"]))
                for member in record["members"]:
                    txn.delete(member[0].encode(), db=self._db["traj"])
                count -= len(record["members"])
                order.delete()
                txn.delete(gkey, db=self._db["groups"])
                txn.delete(gkey, db=self._db["complete"])
                if okey[0] == 1:   # evicted before anyone used it: never let it come back
                    txn.put(gkey, EVICTED.encode(), db=self._db["consumed"])
                    info["evicted_unconsumed"] = info.get("evicted_unconsumed", 0) + 1
                info["evicted"] = info.get("evicted", 0) + len(record["members"])
                info["evicted_groups"] = info.get("evicted_groups", 0) + 1
        for name, value in info.items():
            txn.put(name.encode(), msgpack.packb(value), db=self._db["info"])
