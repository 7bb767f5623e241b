"""``pushcut bench ingest-bad``: the valid stream's ack latency alone and beside a sender of
bad records, the cost a bad record puts on everyone else.

In: ``cfg.bench`` (seconds: each phase; decisions, cameras, image_size: the valid records;
ingest_in_flight, ingest_store_mb, ingest_bad_rate, ingest_bad_every_s) and ``cfg.store``.
Out: printed figures and the dict returned by :func:`run`.

A ``StoreService`` in its own process on a temporary LMDB (``pushcut bench ingest``'s, at the
capacity that ``ingest_store_mb`` holds, evicting beyond it) and one valid producer process
(``pushcut bench ingest``'s, paced open-loop at ``ingest_bad_rate`` trajectories/s; a
trajectory's latency counts from its scheduled send time to its ack, so a store that stalls
shows in every trajectory scheduled during the stall, not only in the few in flight):

1. *alone*, for ``seconds``;
2. *beside a bad sender*, for ``seconds``: a second process sends a 12 MB record whose
   ``timings`` map has a million keys (:func:`common.synthetic.oversized_timings_record`)
   every ``ingest_bad_every_s``, each under a fresh id, and counts the replies by reason.

Figures: p50/p99 ack latency of each phase and their ratio (near 1: a bad record costs the
valid stream nothing), what the bad records got, and the store process's RSS after each
phase and at its peak (all of it, and the anonymous part, the heap a bad record could leave
grown; the rest is mostly LMDB's mapped file).

    pushcut bench ingest-bad bench.seconds=20 bench.ingest_bad_every_s=5
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.config import PushcutConfig
from learner.bench.ingest import PayloadStamper, loadavg, producer, serve_store

BAD_KEYS = 1_000_000


def bad_sender(address: str, every_s: float, start, stop, out) -> None:
    """Process body: after ``start``, send the bad record every ``every_s`` until ``stop``;
    report what came back."""
    from common.synthetic import oversized_timings_record
    from common.transport.trajectories import TrajectorySender

    logging.getLogger(TrajectorySender.__module__).setLevel(logging.ERROR)  # refusals expected
    raw = oversized_timings_record("bad-record", BAD_KEYS)
    # never resent: each copy goes under its own id, on the schedule
    with TrajectorySender(address, max_in_flight=1 << 20, resend_after_s=3600.0) as sender:
        out.put("ready")
        start.wait()
        t0, sent = time.monotonic(), 0
        while not stop.is_set():
            wait = t0 + sent * every_s - time.monotonic()
            if wait > 0:
                sender.poll(min(wait, 0.1))
                continue
            sender.send(raw, f"bad-{sent:06d}")
            sent += 1
        flushed = sender.flush(60)
        out.put({"sent": sent, "bytes": len(raw), "keys": BAD_KEYS, "flushed": flushed,
                 "acked": sender.counters["acked"], "rejected": dict(sender.rejected),
                 "detail": sender.rejections[0][2] if sender.rejections else ""})


def store_memory(pid: int) -> dict[str, Optional[float]]:
    """MiB of a process's resident memory (``rss``), of its anonymous part (``anon``) and
    its peak (``peak``), from /proc; None where it cannot be read."""
    keys = {"VmRSS": "rss", "RssAnon": "anon", "VmHWM": "peak"}
    found: dict[str, Optional[float]] = dict.fromkeys(keys.values())
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in keys:
                found[keys[name]] = int(value.split()[0]) / 1024   # kB
    except (OSError, ValueError, IndexError):
        pass
    return found


def _await(out, proc, tick: Callable[[], None], timeout_s: float):
    """The next item of ``out``, calling ``tick`` about twice a second meanwhile; an error
    if ``proc`` dies first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return out.get(timeout=0.5)
        except queue.Empty:
            if not proc.is_alive() and out.empty():
                raise RuntimeError(f"benchmark process {proc.name} exited with "
                                   f"{proc.exitcode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result from {proc.name} in {timeout_s:.0f}s") from None
            tick()


def _latency(result: dict, rate: float) -> dict:
    ms = np.asarray(result["latencies_s"]) * 1000
    acked = result["acked"]
    return {"acked": acked, "offered_traj_per_s": rate,
            "traj_per_s": acked / result["elapsed_s"],
            "p50_ms": float(np.percentile(ms, 50)) if acked else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if acked else float("nan"),
            "max_ms": float(ms.max()) if acked else float("nan"),
            "rejected": result["rejected"], "all_flushed": result["flushed"]}


def measure_phase(ctx, cfg: PushcutConfig, address: str, seed: int, bad: bool,
                  progress: Progress, title: str, seconds: float) -> dict:
    """One phase: the valid producer for ``seconds``, with the bad sender if ``bad``."""
    b = cfg.bench
    out, bad_out, start, stop = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    shape = (b.decisions, b.cameras, b.image_size)
    valid = ctx.Process(target=producer, name="valid sender",
                        args=(address, seed, shape, seconds, b.ingest_in_flight,
                              (1 / b.ingest_bad_rate, 0.0), start, out))
    procs = [valid] + ([ctx.Process(target=bad_sender, name="bad sender",
                                    args=(address, b.ingest_bad_every_s, start, stop, bad_out))]
                       if bad else [])
    for proc in procs:
        proc.start()
    try:
        for proc, q in zip(procs, (out, bad_out)):
            if _await(q, proc, lambda: None, 300) != "ready":
                raise RuntimeError(f"{proc.name} did not start")
        task = progress.add_task(title, total=seconds)
        start.set()
        t0 = time.monotonic()
        result = _await(out, valid, lambda: progress.update(
            task, completed=min(time.monotonic() - t0, seconds)), seconds + 300)
        progress.update(task, completed=seconds)
        stop.set()
        figures = _latency(result, b.ingest_bad_rate)
        if bad:
            figures["bad"] = _await(bad_out, procs[1], lambda: None, 120)
        return figures
    finally:
        stop.set()
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()


def measure(cfg: PushcutConfig, root: Path, capacity: int, progress: Progress) -> dict:
    """Both phases on one store process, after a warm-up whose figures are not kept (the
    first commits create the LMDB file); the store's memory after each phase."""
    ctx = mp.get_context("spawn")
    store_out, stop = ctx.Queue(), ctx.Event()
    store_cfg = {**asdict(cfg.store), "path": str(root / "store"), "capacity": capacity,
                 "ingest_address": "tcp://127.0.0.1:*", "log_every_s": 3600.0}
    store = ctx.Process(target=serve_store, name="store", args=(store_cfg, store_out, stop))
    store.start()
    try:
        address = _await(store_out, store, lambda: None, 120)
        seconds = cfg.bench.seconds
        warm_s = min(2.0, seconds / 4)
        warm = measure_phase(ctx, cfg, address, 0, False, progress, "warm-up", warm_s)
        alone = measure_phase(ctx, cfg, address, 1, False, progress, "valid sender alone",
                              seconds)
        alone["store_mib"] = store_memory(store.pid)
        beside = measure_phase(ctx, cfg, address, 2, True, progress, "beside a bad sender",
                               seconds)
        beside["store_mib"] = store_memory(store.pid)
    finally:
        stop.set()
    final = _await(store_out, store, lambda: None, 120)
    store.join(60)
    return {"alone": alone, "with_bad": beside, "stored": final.get("ingest_stored", 0),
            "warmup": {"seconds": warm_s, "acked": warm["acked"]},
            "store_rejected": {k[len("rejected_"):]: v for k, v in final.items()
                               if k.startswith("rejected_")}}


def run(cfg: PushcutConfig) -> dict:
    b, console = cfg.bench, Console()
    size = PayloadStamper(10_000, b.decisions, b.cameras, b.image_size).size
    capacity = max(16, (b.ingest_store_mb << 20) // size)
    console.print(f"ingest-bad bench: a valid sender offering {b.ingest_bad_rate:g} "
                  f"trajectories/s of {size / 1e3:,.0f} kB ({b.decisions} decisions x "
                  f"{b.cameras} cameras {b.image_size}x{b.image_size}, {b.ingest_in_flight} "
                  f"in flight at most), {b.seconds:g} s alone, then {b.seconds:g} s beside a "
                  f"sender of a 12 MB record of {BAD_KEYS:,} timings every "
                  f"{b.ingest_bad_every_s:g} s")
    root = Path(tempfile.mkdtemp(prefix="pushcut-bench-ingest-bad-"))
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            phases = measure(cfg, root, capacity, progress)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    alone, beside = phases["alone"], phases["with_bad"]
    figures = {"payload_mb": size / 1e6, "seconds": b.seconds, "rate": b.ingest_bad_rate,
               "every_s": b.ingest_bad_every_s, **phases,
               "ratio_p50": beside["p50_ms"] / alone["p50_ms"],
               "ratio_p99": beside["p99_ms"] / alone["p99_ms"], "loadavg": loadavg()}
    _print(console, figures)
    return figures


def _mib(memory: dict) -> str:
    def one(value):
        return "?" if value is None else f"{value:.0f}"
    return f"{one(memory['rss'])} ({one(memory['anon'])} anon)"


def _print(console: Console, figures: dict) -> None:
    table = Table(title="pushcut bench ingest-bad")
    for col in ("phase", "acked", "trajectories/s", "p50 ack ms", "p99 ack ms", "max ack ms",
                "store RSS MiB after"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for name, phase in (("valid sender alone", figures["alone"]),
                        ("beside a bad sender", figures["with_bad"])):
        table.add_row(name, str(phase["acked"]), f"{phase['traj_per_s']:.1f}",
                      f"{phase['p50_ms']:.1f}", f"{phase['p99_ms']:.1f}",
                      f"{phase['max_ms']:.1f}", _mib(phase["store_mib"]))
    console.print(table)
    console.print(f"ratio beside a bad sender / alone: p50 {figures['ratio_p50']:.2f}x, p99 "
                  f"{figures['ratio_p99']:.2f}x (near 1: the bad records cost the valid stream "
                  f"nothing)")
    bad = figures["with_bad"]["bad"]
    replies = ", ".join(f"{k} {v}" for k, v in sorted(bad["rejected"].items())) or "none"
    console.print(f"bad records: {bad['sent']} sent ({bad['bytes'] / 1e6:.1f} MB, "
                  f"{bad['keys']:,} timings), rejected: {replies}, acked {bad['acked']}; "
                  f"first reason: {bad['detail'] or '-'}")
    peak = figures["with_bad"]["store_mib"]["peak"]
    console.print(f"store RSS peak {'?' if peak is None else f'{peak:.0f}'} MiB; valid "
                  f"records stored {figures['stored']}, rejected by the store "
                  f"{figures['store_rejected'] or 'none'}; all flushed "
                  f"{figures['alone']['all_flushed'] and figures['with_bad']['all_flushed']}; "
                  f"load average {figures['loadavg']}")
