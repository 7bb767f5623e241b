"""``pushcut bench ingest``: trajectory ingest throughput against raw durable LMDB writes.

In: ``cfg.bench`` (producers, seconds, decisions, cameras, image_size, ingest_in_flight,
ingest_store_mb) and ``cfg.store`` (max_batch, map_size_mb). Out: printed figures and the
dict returned by :func:`run`:

1. *raw limit*: this process writes the same payloads straight into a fresh LMDB
   environment with durable commits (``sync=True``), one trajectory per transaction and
   ``store.max_batch`` per transaction, for ``seconds / 2`` each;
2. *ingest*: a ``StoreService`` in its own process and ``producers`` processes, each
   streaming through a :class:`TrajectorySender` (``ingest_in_flight`` unacknowledged at
   most) for ``seconds``: MB/s, trajectories/s, p50/p99 acknowledgement latency, and the
   ratio to the best raw figure.

Producers stamp fresh trajectory and group ids into pre-encoded realistic payloads
(``common.synthetic``), so the figures measure the ingest path, not image synthesis. Both
stores are bounded by the same ``ingest_store_mb`` budget (the store evicts, the raw run
overwrites a ring of keys), so a long run does not fill the disk. Files go under a temporary
directory (set ``TMPDIR`` to measure another disk).

    pushcut bench ingest bench.seconds=20
"""
from __future__ import annotations

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

    ``next(group_id)`` -> (trajectory_id, payload bytes) for a fresh trajectory_id.
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
        t0 = time.monotonic()
        group_id = uuid.uuid4().hex
        while time.monotonic() - t0 < seconds:
            if stamper.count % 8 == 0:
                group_id = uuid.uuid4().hex
            trajectory_id, payload = stamper.next(group_id)
            sender.send(payload, trajectory_id, timeout_s=120)
        flushed = sender.flush(120)
        out.put({"elapsed_s": time.monotonic() - t0, "acked": sender.counters["acked"],
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
                capacity: int, map_size: int) -> dict:
    """Durable LMDB puts of the stamped payloads: trajectories/s and MB/s."""
    env = lmdb.open(str(path), map_size=map_size, sync=True, metasync=True)
    written, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        with env.begin(write=True) as txn:
            for _ in range(per_txn):
                _, payload = stamper.next("raw")
                txn.put(str(written % capacity).encode(), payload)   # a ring: bounded file
                written += 1
    elapsed = time.monotonic() - t0
    env.close()
    return {"traj_per_s": written / elapsed, "mb_per_s": written * stamper.size / elapsed / 1e6}


def measure_ingest(cfg: PushcutConfig, root: Path, capacity: int, shape) -> dict:
    b = cfg.bench
    ctx = mp.get_context("spawn")
    store_out, prod_out, stop, start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    store_cfg = {**asdict(cfg.store), "path": str(root / "store"), "capacity": capacity,
                 "ingest_address": "tcp://127.0.0.1:*", "log_every_s": 3600.0}
    store = ctx.Process(target=_store_process, args=(store_cfg, store_out, stop))
    store.start()
    address = store_out.get(timeout=120)
    producers = [ctx.Process(target=_producer, args=(address, seed, shape, b.seconds,
                                                     b.ingest_in_flight, start, prod_out))
                 for seed in range(b.producers)]
    for p in producers:
        p.start()
    for _ in producers:
        assert prod_out.get(timeout=300) == "ready"
    start.set()
    results = [prod_out.get(timeout=b.seconds + 300) for _ in producers]
    stop.set()
    final = store_out.get(timeout=120)
    for p in [*producers, store]:
        p.join(60)
    elapsed = max(r["elapsed_s"] for r in results)
    latencies = np.concatenate([r["latencies_s"] for r in results]) * 1000
    return {"traj_per_s": sum(r["acked"] for r in results) / elapsed,
            "mb_per_s": sum(r["bytes"] for r in results) / elapsed / 1e6,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
            "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
            "acked": sum(r["acked"] for r in results),
            "resent": sum(r["resent"] for r in results),
            "rejected": sum(r["rejected"] for r in results),
            "all_flushed": all(r["flushed"] for r in results),
            "stored": final.get("ingest_stored", 0), "batches": final.get("ingest_batches", 0),
            "evicted": final.get("evicted", 0)}


def run(cfg: PushcutConfig) -> dict:
    b, console = cfg.bench, Console()
    shape = (b.decisions, b.cameras, b.image_size)
    stamper = PayloadStamper(10_000, *shape)
    capacity = max(4 * cfg.store.max_batch, (b.ingest_store_mb << 20) // stamper.size)
    map_size = max(cfg.store.map_size_mb << 20, 2 * capacity * stamper.size)
    console.print(f"ingest bench: {b.producers} producers, {stamper.size / 1e6:.2f} MB per "
                  f"trajectory ({b.decisions} decisions x {b.cameras} cameras "
                  f"{b.image_size}x{b.image_size}), {b.seconds:.0f}s, store capacity {capacity}")
    root = Path(tempfile.mkdtemp(prefix="pushcut-bench-ingest-"))
    try:
        raw_one = measure_raw(root / "raw1", stamper, b.seconds / 2, 1, capacity, map_size)
        raw_batch = measure_raw(root / "rawN", stamper, b.seconds / 2, cfg.store.max_batch,
                                capacity, map_size)
        ingest = measure_ingest(cfg, root, capacity, shape)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    limit = max(raw_one["mb_per_s"], raw_batch["mb_per_s"])
    figures = {"payload_mb": stamper.size / 1e6, "producers": b.producers,
               "raw_1_per_txn": raw_one, f"raw_{cfg.store.max_batch}_per_txn": raw_batch,
               "ingest": ingest, "ratio": ingest["mb_per_s"] / limit}
    _print(console, figures, raw_one, raw_batch, ingest, cfg.store.max_batch)
    return figures


def _print(console: Console, figures: dict, raw_one: dict, raw_batch: dict, ingest: dict,
           max_batch: int) -> None:
    table = Table(title="pushcut bench ingest")
    for col in ("path", "MB/s", "trajectories/s", "p50 ack ms", "p99 ack ms"):
        table.add_column(col, justify="right" if col != "path" else "left")
    table.add_row("raw LMDB, durable, 1 per txn", f"{raw_one['mb_per_s']:.1f}",
                  f"{raw_one['traj_per_s']:.1f}", "", "")
    table.add_row(f"raw LMDB, durable, {max_batch} per txn", f"{raw_batch['mb_per_s']:.1f}",
                  f"{raw_batch['traj_per_s']:.1f}", "", "")
    table.add_row(f"ingest ({figures['producers']} producers -> ZeroMQ -> store)",
                  f"{ingest['mb_per_s']:.1f}", f"{ingest['traj_per_s']:.1f}",
                  f"{ingest['p50_ms']:.1f}", f"{ingest['p99_ms']:.1f}")
    console.print(table)
    console.print(f"ratio ingest / best raw = {figures['ratio']:.2f}  (goal >= 0.7); "
                  f"p99 ack latency {ingest['p99_ms']:.1f} ms (goal < 50); "
                  f"resent {ingest['resent']}, rejected {ingest['rejected']}, "
                  f"evicted {ingest['evicted']}, all flushed: {ingest['all_flushed']}")
