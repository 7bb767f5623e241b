"""``pushcut bench ingest``: trajectory ingest throughput against raw durable LMDB writes.

In: ``cfg.bench`` (producers, seconds, decisions, cameras, image_size, ingest_in_flight,
ingest_store_mb) and ``cfg.store`` (max_batch, max_batch_mb, map_size_mb). Out: printed
figures and the dict returned by :func:`run`:

1. *raw limit*: this process writes the same payloads straight into a fresh LMDB
   environment with durable commits (``sync=True``, the store's settings), one trajectory
   per transaction and as many per transaction as the store batches them (``max_batch``,
   closed early at ``max_batch_mb``), ``seconds / 4`` each, before and again after the
   ingest (the mean is reported: a shared disk drifts);
2. *ingest*: a ``StoreService`` in its own process and ``producers`` processes, each
   streaming through a :class:`TrajectorySender` (``ingest_in_flight`` unacknowledged at
   most) for ``seconds``: MB/s, trajectories/s, p50/p99 acknowledgement latency, and the
   ratio to the best raw figure; then one producer with one trajectory in flight for
   ``seconds / 4``, the latency of a store that is not saturated.

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

import lmdb
import msgpack
import numpy as np
from rich.console import Console
from rich.table import Table

from common.config import PushcutConfig, StoreConfig
from common.synthetic import make_trajectory
from common.trajectory import encode

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


def _producer(address: str, seed: int, shape: tuple[int, int, int], seconds: float,
              in_flight: int, start, out) -> None:
    """Producer process: stream stamped payloads for ``seconds`` after ``start`` is set."""
    from common.transport import TrajectorySender

    stamper = PayloadStamper(seed, *shape)
    with TrajectorySender(address, max_in_flight=in_flight, resend_after_s=10.0,
                          keep_acked=None) as sender:
        out.put("ready")
        start.wait()
        t0, cpu0 = time.monotonic(), time.process_time()
        group_id = uuid.uuid4().hex
        while time.monotonic() - t0 < seconds:
            if stamper.count % 8 == 0:
                group_id = uuid.uuid4().hex
            trajectory_id, payload = stamper.next(group_id)
            sender.send(payload, trajectory_id, timeout_s=120)
        flushed = sender.flush(120)
        out.put({"elapsed_s": time.monotonic() - t0, "cpu_s": time.process_time() - cpu0,
                 "acked": sender.counters["acked"],
                 "bytes": sender.counters["acked"] * stamper.size, "flushed": flushed,
                 "resent": sender.counters["resent"], "rejected": sum(sender.rejected.values()),
                 "latencies_s": list(sender.ack_latencies_s)})


def _store_process(store_cfg: dict, out, stop) -> None:
    from learner.store_service import StoreService

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
            first_seed: int) -> dict:
    """Run ``producers`` producer processes against the store for ``seconds``."""
    out, start = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_producer, args=(address, first_seed + i, shape, seconds,
                                                 in_flight, start, out))
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
            "p50_ms": float(np.percentile(latencies, 50)) if acked else float("nan"),
            "p99_ms": float(np.percentile(latencies, 99)) if acked else float("nan"),
            "acked": acked, "resent": sum(r["resent"] for r in results),
            "producer_cpu_ms_per_traj": 1000 * sum(r["cpu_s"] for r in results) / max(acked, 1),
            "rejected": sum(r["rejected"] for r in results),
            "all_flushed": all(r["flushed"] for r in results)}


def measure_ingest(cfg: PushcutConfig, root: Path, capacity: int, shape) -> dict:
    """A store process; first ``producers`` saturating it, then one producer with one
    trajectory in flight (the latency of an unloaded store)."""
    b = cfg.bench
    ctx = mp.get_context("spawn")
    store_out, stop = ctx.Queue(), ctx.Event()
    store_cfg = {**asdict(cfg.store), "path": str(root / "store"), "capacity": capacity,
                 "ingest_address": "tcp://127.0.0.1:*", "log_every_s": 3600.0}
    store = ctx.Process(target=_store_process, args=(store_cfg, store_out, stop))
    store.start()
    try:
        address = store_out.get(timeout=120)
        loaded = _stream(ctx, address, b.producers, b.ingest_in_flight, b.seconds, shape, 0)
        light = _stream(ctx, address, 1, 1, max(2.0, b.seconds / 4), shape, b.producers)
    finally:
        stop.set()
    final = store_out.get(timeout=120)
    store.join(60)
    return {"loaded": loaded, "light": light, "stored": final.get("ingest_stored", 0),
            "batches": final.get("ingest_batches", 0), "evicted": final.get("evicted", 0)}


def run(cfg: PushcutConfig) -> dict:
    b, console = cfg.bench, Console()
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
               "ratio": ingest["loaded"]["mb_per_s"] / limit}
    _print(console, figures, raw, ingest)
    return figures


def _print(console: Console, figures: dict, raw: dict[int, dict], ingest: dict) -> None:
    table = Table(title="pushcut bench ingest")
    for col in ("path", "MB/s", "trajectories/s", "p50 ack ms", "p99 ack ms"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for per, r in raw.items():
        table.add_row(f"raw LMDB, durable, {per} per txn", f"{r['mb_per_s']:.1f}",
                      f"{r['traj_per_s']:.1f}", "", "")
    for name, label in (("loaded", f"ingest, {figures['producers']} producers x "
                                   f"{figures['in_flight']} in flight"),
                        ("light", "ingest, 1 producer x 1 in flight")):
        r = ingest[name]
        table.add_row(label, f"{r['mb_per_s']:.1f}", f"{r['traj_per_s']:.1f}",
                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
    console.print(table)
    loaded = ingest["loaded"]
    console.print(f"ratio ingest / best raw = {figures['ratio']:.2f} (goal >= 0.7); p99 ack "
                  f"latency {loaded['p99_ms']:.1f} ms loaded, {ingest['light']['p99_ms']:.1f} ms "
                  f"unloaded (goal < 50); resent {loaded['resent']}, rejected "
                  f"{loaded['rejected']}, evicted {ingest['evicted']}, all flushed "
                  f"{loaded['all_flushed'] and ingest['light']['all_flushed']}")
