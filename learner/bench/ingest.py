"""``pushcut bench ingest``: trajectory ingest throughput against raw durable LMDB writes.

In: ``cfg.bench`` (producers, seconds, decisions, cameras, image_size, ingest_in_flight,
ingest_store_mb, ingest_paced_load) and ``cfg.store`` (max_batch, max_batch_mb,
map_size_mb). Out: printed figures and the dict returned by :func:`run`:

1. *raw limit*: this process writes the same payloads straight into a fresh LMDB
   environment with durable commits (``sync=True``, the store's settings), one trajectory
   per transaction and as many per transaction as the store batches them (``max_batch``,
   closed early at ``max_batch_mb``), ``seconds / 4`` each, before and again after the
   ingest (the mean is reported: a shared disk drifts);
2. *ingest*: a ``StoreService`` in its own process and ``producers`` processes, each
   streaming through a :class:`TrajectorySender` (``ingest_in_flight`` unacknowledged at
   most) as fast as they can for ``seconds`` (*saturated*): MB/s, trajectories/s, p50/p99
   acknowledgement latency, and the ratio to the best raw figure (the throughput goal);
3. *paced*: the same producers offering ``ingest_paced_load`` (0.5) times the saturated
   rate, evenly spaced, for ``seconds / 2``: p50/p99 latency from each trajectory's
   scheduled send time to its ack (the latency goal: actors use a store that keeps up;
   at saturation latency is only queueing, ``in flight / rate``).

Producers stamp fresh trajectory and group ids into pre-encoded realistic payloads
(``common.synthetic``), so the figures measure the ingest path, not image synthesis. The
store's capacity comes from the ``ingest_store_mb`` disk budget (it evicts beyond it); the
raw runs overwrite a small ring of keys (see :func:`measure_raw`). Files go under a
temporary directory (set ``TMPDIR`` to measure another disk).

    pushcut bench ingest bench.seconds=20
"""
from __future__ import annotations

import math
import multiprocessing as mp
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import lmdb
import msgpack
import numpy as np
from rich.console import Console
from rich.table import Table

from common.config import PushcutConfig, StoreConfig
from common.synthetic import make_trajectory
from common.wire.trajectory import encode

_PLACEHOLDER = "0" * 32       # uuid4().hex length: fresh ids are stamped over it
_POOL = 4                     # distinct payloads per producer


class PayloadStamper:
    """Pre-encoded trajectories whose trajectory_id and group_id are overwritten in place.

    ``next(group_id)`` -> (trajectory_id, payload bytes) for a fresh trajectory_id; the
    group_id must have the placeholder's length (32, as ``uuid4().hex``).
    """

    def __init__(self, seed: int, decisions: int, cameras: int, image_size: int,
                 group_size: int = 8):
        rng = np.random.default_rng(seed)
        self.templates = []
        for _ in range(_POOL):
            traj = make_trajectory(rng, length=decisions * 8, cameras=cameras,
                                   image_size=image_size, group_size=group_size,
                                   trajectory_id=_PLACEHOLDER, group_id=_PLACEHOLDER)
            self.templates.append(bytearray(encode(traj)))
        self.offsets = [self._offset(self.templates[0], name)
                        for name in ("trajectory_id", "group_id")]
        self.count = 0

    @staticmethod
    def _offset(raw: bytearray, name: str) -> int:
        marker = msgpack.packb(name) + msgpack.packb(_PLACEHOLDER)
        return raw.index(marker) + len(marker) - len(_PLACEHOLDER)

    @property
    def size(self) -> int:
        return len(self.templates[0])

    def next(self, group_id: str) -> tuple[str, bytes]:
        if len(group_id.encode()) != len(_PLACEHOLDER):
            raise ValueError(f"group_id {group_id!r}: stamped ids need {len(_PLACEHOLDER)} bytes")
        trajectory_id = uuid.uuid4().hex
        buf = self.templates[self.count % _POOL]
        self.count += 1
        for offset, value in zip(self.offsets, (trajectory_id, group_id)):
            buf[offset:offset + 32] = value.encode()
        return trajectory_id, bytes(buf)


def producer(address: str, seed: int, shape: tuple[int, int, int], seconds: float,
              in_flight: int, pace: Optional[tuple[float, float]], start, out) -> None:
    """Producer process: stream stamped payloads for ``seconds`` after ``start`` is set.

    ``pace=None`` sends as fast as the window allows (saturation); ``pace=(interval_s,
    phase_s)`` sends open-loop at ``phase_s + k * interval_s``, and a trajectory's latency
    then counts from its scheduled time, so a send held back by a full window is not
    hidden."""
    from common.transport.trajectories import TrajectorySender

    stamper = PayloadStamper(seed, *shape)
    lag_s: dict[str, float] = {}      # trajectory_id -> send() return minus scheduled time
    with TrajectorySender(address, max_in_flight=in_flight, resend_after_s=10.0,
                          keep_acked=None) as sender:
        out.put("ready")
        start.wait()
        t0, cpu0 = time.monotonic(), time.process_time()
        due = t0 + (pace[1] if pace else 0.0)
        group_id = uuid.uuid4().hex
        while time.monotonic() - t0 < seconds:
            while pace and (wait := due - time.monotonic()) > 0:
                sender.poll(wait)     # handles acks while waiting for the schedule
            if stamper.count % 8 == 0:
                group_id = uuid.uuid4().hex
            trajectory_id, payload = stamper.next(group_id)
            sender.send(payload, trajectory_id, timeout_s=120)
            if pace:
                lag_s[trajectory_id] = time.monotonic() - due
                due += pace[0]
        flushed = sender.flush(120)
        latencies = [lat + lag_s.get(tid, 0.0)
                     for tid, lat in zip(sender.acked_ids, sender.ack_latencies_s)]
        out.put({"elapsed_s": time.monotonic() - t0, "cpu_s": time.process_time() - cpu0,
                 "acked": sender.counters["acked"],
                 "bytes": sender.counters["acked"] * stamper.size, "flushed": flushed,
                 "resent": sender.counters["resent"], "rejected": sum(sender.rejected.values()),
                 "latencies_s": latencies, "max_lag_s": max(lag_s.values(), default=0.0)})


def serve_store(store_cfg: dict, out, stop) -> None:
    from learner.store_process import StoreService

    service = StoreService(StoreConfig(**store_cfg)).start()
    out.put(service.address)
    stop.wait()
    out.put(service.stop())


def measure_raw(path: Path, stamper: PayloadStamper, seconds: float, per_txn: int,
                map_size: int) -> dict:
    """Durable LMDB puts of the stamped payloads: trajectories/s and MB/s.

    The keys form a ring of ``2 * per_txn + 2`` so that after the first transactions LMDB
    reuses freed pages and the file stops growing: the best case of durable writes (a
    growing file costs extra metadata syncs), which makes the ratio a strict one."""
    env = lmdb.open(str(path), map_size=map_size, sync=True, metasync=True)
    ring = 2 * per_txn + 2
    written, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        with env.begin(write=True) as txn:
            for _ in range(per_txn):
                _, payload = stamper.next(_PLACEHOLDER)
                txn.put(str(written % ring).encode(), payload)
                written += 1
    elapsed = time.monotonic() - t0
    env.close()
    return {"traj_per_s": written / elapsed, "mb_per_s": written * stamper.size / elapsed / 1e6}


def _stream(ctx, address: str, producers: int, in_flight: int, seconds: float, shape,
            first_seed: int, rate_per_s: Optional[float] = None) -> dict:
    """Run ``producers`` producer processes against the store for ``seconds``; with
    ``rate_per_s`` they offer that many trajectories per second in all, evenly spaced."""
    out, start = ctx.Queue(), ctx.Event()
    paces = [None if rate_per_s is None else (producers / rate_per_s, i / rate_per_s)
             for i in range(producers)]
    procs = [ctx.Process(target=producer, args=(address, first_seed + i, shape, seconds,
                                                 in_flight, paces[i], start, out))
             for i in range(producers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        assert out.get(timeout=300) == "ready"
    start.set()
    results = [out.get(timeout=seconds + 300) for _ in procs]
    for proc in procs:
        proc.join(60)
    elapsed = max(r["elapsed_s"] for r in results)
    latencies = np.concatenate([r["latencies_s"] for r in results]) * 1000
    acked = sum(r["acked"] for r in results)
    return {"traj_per_s": acked / elapsed,
            "mb_per_s": sum(r["bytes"] for r in results) / elapsed / 1e6,
            "offered_traj_per_s": rate_per_s,
            "p50_ms": float(np.percentile(latencies, 50)) if acked else float("nan"),
            "p99_ms": float(np.percentile(latencies, 99)) if acked else float("nan"),
            "max_send_lag_ms": 1000 * max(r["max_lag_s"] for r in results),
            "acked": acked, "resent": sum(r["resent"] for r in results),
            "producer_cpu_ms_per_traj": 1000 * sum(r["cpu_s"] for r in results) / max(acked, 1),
            "rejected": sum(r["rejected"] for r in results),
            "all_flushed": all(r["flushed"] for r in results)}


def measure_ingest(cfg: PushcutConfig, root: Path, capacity: int, shape) -> dict:
    """A store process; first ``producers`` saturating it, then the same producers offering
    ``ingest_paced_load`` times the saturated rate (the load actors put on a store)."""
    b = cfg.bench
    ctx = mp.get_context("spawn")
    store_out, stop = ctx.Queue(), ctx.Event()
    store_cfg = {**asdict(cfg.store), "path": str(root / "store"), "capacity": capacity,
                 "ingest_address": "tcp://127.0.0.1:*", "log_every_s": 3600.0}
    store = ctx.Process(target=serve_store, args=(store_cfg, store_out, stop))
    store.start()
    try:
        address = store_out.get(timeout=120)
        saturated = _stream(ctx, address, b.producers, b.ingest_in_flight, b.seconds, shape, 0)
        paced = _stream(ctx, address, b.producers, b.ingest_in_flight, max(2.0, b.seconds / 2),
                        shape, b.producers, b.ingest_paced_load * saturated["traj_per_s"])
    finally:
        stop.set()
    final = store_out.get(timeout=120)
    store.join(60)
    return {"saturated": saturated, "paced": paced, "stored": final.get("ingest_stored", 0),
            "batches": final.get("ingest_batches", 0), "evicted": final.get("evicted", 0)}


def run(cfg: PushcutConfig) -> dict:
    b, console = cfg.bench, Console()
    if not b.ingest_paced_load > 0:
        raise ValueError(f"bench.ingest_paced_load {b.ingest_paced_load} must be > 0 (a share "
                         "of the saturated rate, e.g. 0.5)")
    shape = (b.decisions, b.cameras, b.image_size)
    stamper = PayloadStamper(10_000, *shape)
    capacity = max(16, (b.ingest_store_mb << 20) // stamper.size)
    map_size = max(cfg.store.map_size_mb << 20, 2 * capacity * stamper.size)
    console.print(f"ingest bench: {b.producers} producers x {b.ingest_in_flight} in flight, "
                  f"{stamper.size / 1e6:.2f} MB per trajectory ({b.decisions} decisions x "
                  f"{b.cameras} cameras {b.image_size}x{b.image_size}), {b.seconds:.0f}s, "
                  f"store capacity {capacity} trajectories")
    root = Path(tempfile.mkdtemp(prefix="pushcut-bench-ingest-"))
    # the store's batch for these payloads (IngestServer closes a batch at max_batch_mb)
    store_batch = min(cfg.store.max_batch, max(1, math.ceil((cfg.store.max_batch_mb << 20)
                                                            / stamper.size)))
    batches = sorted({1, store_batch})

    def raw_phase(when: str) -> dict[int, dict]:
        return {per: measure_raw(root / f"raw{per}-{when}", stamper, b.seconds / 4, per,
                                 map_size) for per in batches}
    try:   # raw before and after the ingest: a shared disk drifts, the mean is fairer
        before = raw_phase("before")
        ingest = measure_ingest(cfg, root, capacity, shape)
        after = raw_phase("after")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    raw = {per: {k: (before[per][k] + after[per][k]) / 2 for k in before[per]}
           for per in batches}
    limit = max(r["mb_per_s"] for r in raw.values())
    figures = {"payload_mb": stamper.size / 1e6, "producers": b.producers,
               "in_flight": b.ingest_in_flight, "seconds": b.seconds,
               **{f"raw_{per}_per_txn": r for per, r in raw.items()}, "ingest": ingest,
               "ratio": ingest["saturated"]["mb_per_s"] / limit,
               "paced_load": b.ingest_paced_load, "loadavg": loadavg()}
    _print(console, figures, raw, ingest)
    return figures


def loadavg() -> str:
    """The machine's 1/5/15-minute load averages (other jobs skew every figure here)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _print(console: Console, figures: dict, raw: dict[int, dict], ingest: dict) -> None:
    table = Table(title="pushcut bench ingest")
    for col in ("path", "MB/s", "trajectories/s", "p50 ack ms", "p99 ack ms"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for per, r in raw.items():
        table.add_row(f"raw LMDB, durable, {per} per txn", f"{r['mb_per_s']:.1f}",
                      f"{r['traj_per_s']:.1f}", "", "")
    sat, paced = ingest["saturated"], ingest["paced"]
    lanes = f"{figures['producers']} producers x {figures['in_flight']} in flight"
    table.add_row(f"ingest, saturated, {lanes}", f"{sat['mb_per_s']:.1f}",
                  f"{sat['traj_per_s']:.1f}", f"{sat['p50_ms']:.1f}", f"{sat['p99_ms']:.1f}")
    table.add_row(f"ingest, paced at {figures['paced_load']:.0%} of saturated "
                  f"({paced['offered_traj_per_s']:.1f}/s offered)", f"{paced['mb_per_s']:.1f}",
                  f"{paced['traj_per_s']:.1f}", f"{paced['p50_ms']:.1f}",
                  f"{paced['p99_ms']:.1f}")
    console.print(table)
    console.print(f"throughput goal: ratio saturated ingest / best raw = {figures['ratio']:.2f} "
                  f"(goal >= 0.7)")
    console.print(f"latency goal: p99 ack at the paced load = {paced['p99_ms']:.1f} ms "
                  f"(goal < 50; at saturation latency is queueing: {sat['p99_ms']:.1f} ms)")
    console.print(f"resent {sat['resent'] + paced['resent']}, rejected "
                  f"{sat['rejected'] + paced['rejected']}, evicted {ingest['evicted']}, "
                  f"all flushed {sat['all_flushed'] and paced['all_flushed']}, commits "
                  f"{ingest['batches']} for {ingest['stored']} stored; load average "
                  f"{figures['loadavg']} (2 cores shared with other jobs)")
