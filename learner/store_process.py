"""``pushcut store``: the ingest service, a ZeroMQ ROUTER in front of the LMDB trajectory store.

In: trajectories from any number of actors on ``store.ingest_address`` (see
common/transport/trajectories.py for the frames). Out: the LMDB environment at ``store.path``, which the
learner opens (same path, other process) to read complete groups and mark them consumed.
Every ``store.log_every_s`` it logs throughput, rejections by reason and the store's size;
SIGINT/SIGTERM stop it cleanly (last batch acknowledged, final stats line, LMDB closed); a
second signal leaves at once (unacknowledged trajectories are resent by their actors).

    pushcut store store.path=runs/store store.ingest_address=tcp://0.0.0.0:5555
    pushcut store stats store.path=runs/store      # print the store's figures and exit

:class:`StoreService` is the reusable shell (socket + logging + lifetime) for ``pushcut run``
and the learner's ``host_store`` mode: ``StoreService(cfg.store).start()`` serves from a
thread until ``.stop()``; ``.run(stop_event)`` serves in the calling thread.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Optional

from common.config import StoreConfig
from common.process import USAGE_ERROR, StopSignals, setup_logging, unexpected_arguments
from common.transport.curve import CurveServerKeys
from common.transport.trajectories import IngestServer
from learner.store import TrajectoryStore

log = logging.getLogger("pushcut.store")


def format_progress(window: dict[str, float], elapsed_s: float, server: IngestServer,
                    stats: dict) -> str:
    """One log line: throughput over the last window, rejections, size of the store."""
    rejected = ", ".join(f"{k}={v}" for k, v in sorted(server.rejected.items())) or "none"
    rate = window["stored"] / max(elapsed_s, 1e-9)
    mbps = window["bytes"] / max(elapsed_s, 1e-9) / 1e6
    return (f"{rate:.1f} traj/s {mbps:.1f} MB/s | stored {server.counters['stored']} "
            f"duplicate {server.counters['duplicate']} dropped {server.counters['dropped']} | "
            f"rejected {rejected} | store {stats['trajectories']} trajectories, "
            f"{stats['groups']} groups ({stats['complete_groups']} complete, "
            f"{stats['consumed_groups']} consumed), {stats['bytes_used'] / 2**20:.0f} MiB of "
            f"{stats['map_size'] / 2**20:.0f} MiB map")


class StoreService:
    """Bind the ingest socket, serve it into a TrajectoryStore, log, stop on request.

    Pass ``store`` to serve into an instance the caller already has open (LMDB allows one
    per process); otherwise the service opens ``cfg.path`` and closes it at the end.
    """

    def __init__(self, cfg: StoreConfig, store: Optional[TrajectoryStore] = None):
        self.cfg = cfg
        self._store = store
        self._owns_store = store is None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self.address: Optional[str] = None       # the bound endpoint (resolves port 0 / *)
        self.final_stats: dict = {}

    def start(self, timeout_s: float = 30.0) -> "StoreService":
        """Serve from a background thread; returns once the socket is bound."""
        self._thread = threading.Thread(target=self._run_in_thread, name="store-ingest",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"store service did not bind {self.cfg.ingest_address} "
                               f"within {timeout_s}s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float = 30.0) -> dict:
        """Stop serving (the batch in hand is committed and acknowledged) and return the
        final stats."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.final_stats

    def run(self, stop: Optional[threading.Event] = None) -> dict:
        """Serve in this thread until ``stop`` (or :meth:`stop`) is set; returns final stats."""
        stop = stop or self._stop
        if self._store is None:
            self._store = TrajectoryStore(self.cfg.path, capacity=self.cfg.capacity,
                                          map_size_mb=self.cfg.map_size_mb,
                                          accept_expert=self.cfg.accept_expert)
        try:
            server = IngestServer(self.cfg.ingest_address, self._store.commit,
                                  max_message_bytes=self.cfg.max_message_mb << 20,
                                  max_batch=self.cfg.max_batch,
                                  max_batch_bytes=self.cfg.max_batch_mb << 20,
                                  curve=self._curve())
        except BaseException:
            self._close_store()
            raise
        self.address = server.address
        self._ready.set()
        log.info("store ingest on %s, LMDB at %s (capacity %d trajectories)", server.address,
                 self.cfg.path, self.cfg.capacity)
        try:
            self._serve(server, lambda: stop.is_set() or self._stop.is_set())
        finally:
            server.close()
            self.final_stats = {**self._store.stats(), **{f"ingest_{k}": v for k, v in
                                                            server.counters.items()},
                                **{f"rejected_{k}": v for k, v in server.rejected.items()}}
            self._close_store()
        return self.final_stats

    def _serve(self, server: IngestServer, should_stop) -> None:
        last_t, last = time.monotonic(), {"stored": 0, "bytes": 0}
        while not should_stop():
            server.serve_once(0.1)
            now = time.monotonic()
            if now - last_t >= self.cfg.log_every_s:
                current = {"stored": server.counters["stored"], "bytes": server.counters["bytes"]}
                window = {k: current[k] - last[k] for k in current}
                log.info(format_progress(window, now - last_t, server, self._store.stats()))
                last_t, last = now, current

    def _curve(self) -> Optional[CurveServerKeys]:
        if self.cfg.curve_secret_key is None:
            return None
        return CurveServerKeys(self.cfg.curve_secret_key, self.cfg.curve_authorized_dir)

    def _close_store(self) -> None:
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:   # surfaced by start()
            self._error = exc
            self._ready.set()


def main(cfg, args: list[str]) -> int:
    """``pushcut store [stats]``."""
    if args == ["stats"]:
        with TrajectoryStore(cfg.store.path, readonly=True) as store:
            print(json.dumps(store.stats()))
        return 0
    if unexpected_arguments("store", args, expected="nothing, or `stats`"):
        return USAGE_ERROR
    setup_logging()
    # nothing here waits long once stopped, so a second signal leaves at once
    signals = StopSignals(log, exit_on_hurry=True).install()
    final = StoreService(cfg.store).run(signals.stop)
    print("store stopped: " + json.dumps(final), flush=True)
    return 0
