"""Rank 0 of ``pushcut learner`` (learner/learner_process.py): the loop
filter -> batch -> GRPO update -> publish -> log -> checkpoint, and the I/O it owns.

In: a :class:`~learner.trainer.Trainer` whose other ranks run
:func:`learner.learner_process.follow`; the trajectory store at ``store.path``. Out: one
policy_version per update, published to actors; ``<run_dir>/learner.jsonl`` with an
``event: start`` line (the version it starts or resumed at), one ``event: update`` line per
version (GRPO stats, the group_ids trained on, filter counts, queue depth, rates, timings)
and an ``event: stop`` line; checkpoints.

Consumption: dropped groups are marked at once by the filter; trained groups are marked
after their update. Marks are never taken back, so after a crash the groups used by
updates newer than the last checkpoint are not trained on again (at most once; the
checkpoint's marks are re-applied on resume in case the store lost some).
``mode=sync``: the weight publisher is paused while the learner updates, so actors hold
their next round until the new version is out; only groups of the current version are used.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from common.config.schema import PushcutConfig
from common.health import HealthMonitor
from common.metrics import MetricsLogger
from common.security import CurveServerKeys
from learner.broadcast import WeightPublisher
from learner.checkpoint import Checkpoint, save_checkpoint
from learner.filter import DynamicSamplingFilter, Selection
from learner.learner_process import effective_algo, send_command
from learner.store import TrajectoryStore
from learner.store_service import StoreService
from learner.trainer import Trainer

log = logging.getLogger("pushcut.learner")


class Learner:
    """Owns the store handle, filter, publisher, heartbeat monitor and metrics of rank 0."""

    def __init__(self, cfg: PushcutConfig, trainer: Trainer, template: Any,
                 stop: threading.Event, checkpoint: Checkpoint | None):
        self.cfg, self.trainer, self.template, self.stop = cfg, trainer, template, stop
        lc = cfg.learner
        curve = CurveServerKeys(lc.curve_secret_key, lc.curve_authorized_dir) \
            if lc.curve_secret_key else None
        self.store = TrajectoryStore(cfg.store.path, cfg.store.capacity, cfg.store.map_size_mb)
        self._closers = [self.store.close]
        if checkpoint is not None:
            self.store.restore_consumption_marks(checkpoint.consumption_marks)
        self.service = None
        if lc.host_store:
            self.service = StoreService(cfg.store, store=self.store).start()
            self._closers.insert(0, self.service.stop)
        self.filter = DynamicSamplingFilter(self.store, effective_algo(cfg))
        self.publisher = WeightPublisher(lc.weights_address, lc.announce_address,
                                         lc.weight_chunk_mb, curve=curve)
        self._closers.insert(0, self.publisher.close)
        self.health = HealthMonitor(lc.heartbeat_address, lc.heartbeat_timeout_s, lc.stall_s,
                                    curve=curve)
        self._closers.insert(0, self.health.close)
        self.metrics = MetricsLogger(cfg.run_dir, "learner", cfg.wandb,
                                     config=dataclasses.asdict(cfg))
        self._closers.insert(0, self.metrics.close)
        self.resumed_from = checkpoint.policy_version if checkpoint else None
        self.last_checkpoint = self.resumed_from
        self.model_sd: dict | None = None
        self.updates = 0
        self._last_update_end = time.monotonic()
        self._env_steps = (time.monotonic(), self._actor_env_steps())

    def __enter__(self) -> "Learner":
        return self

    def __exit__(self, *exc: object) -> None:
        for close in self._closers:
            try:
                close()
            except Exception as err:   # keep closing the rest
                log.warning("while closing: %s", err)

    @property
    def version(self) -> int:
        return self.trainer.policy_version

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        send_command("state", self.trainer.device)
        self.model_sd = self.trainer.full_state_dict()
        self.publisher.publish(self.version, self.model_sd)
        self.metrics.log({"event": "start", "policy_version": self.version,
                          "resumed_from": self.resumed_from, "mode": self.cfg.mode},
                         step=self.version)
        log.info("learner at policy_version %d (%s), %d rank(s), mode %s", self.version,
                 f"resumed from checkpoint {self.resumed_from}" if self.resumed_from is not None
                 else "fresh start", self.trainer.world_size, self.cfg.mode)
        try:
            while not self.stop.is_set() and not self._done():
                selection = self._wait_for_batch()
                if selection is None:
                    break
                self._update(selection)
                if self.version % max(1, self.cfg.learner.checkpoint_every) == 0:
                    self._checkpoint()
            if self.last_checkpoint != self.version:
                self._checkpoint()
        finally:
            send_command("stop", self.trainer.device)
        summary = {"policy_version": self.version, "updates": self.updates,
                   "resumed_from": self.resumed_from, **self.filter.report()}
        self.metrics.log({"event": "stop", **summary}, step=self.version)
        return summary

    def _done(self) -> bool:
        target = self.cfg.learner.max_versions
        return target is not None and self.version >= target

    def _wait_for_batch(self) -> Selection | None:
        """Poll the filter until a batch forms or we are told to stop."""
        next_log = time.monotonic() + 10.0
        while not self.stop.is_set():
            selection = self.filter.poll(self.version)
            if selection is not None:
                return selection
            self.stop.wait(self.cfg.learner.poll_s)
            self.health.poll(0)
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + 10.0
                s = self.store.stats()
                log.info("v%d waiting for groups: %d complete in store, filter %s, actors %s",
                         self.version, s["complete_groups"], self.filter.report(),
                         self.health.counts())
        return None

    def _update(self, selection: Selection) -> None:
        sync = self.cfg.mode == "sync"
        t0 = time.monotonic()
        wait_s = t0 - self._last_update_end
        if sync:
            self.publisher.pause()
        send_command("train", self.trainer.device)
        stats = self.trainer.train(selection.groups)
        self.filter.mark_trained(selection)
        t1 = time.monotonic()
        self.model_sd = self.trainer.full_state_dict()
        self.publisher.publish(self.version, self.model_sd)
        if sync:
            self.publisher.resume()
        t2 = time.monotonic()
        self.updates += 1
        self._log_update(selection, stats, wait_s, t1 - t0, t2 - t1, t2)
        self._last_update_end = t2

    def _log_update(self, selection: Selection, stats: dict, wait_s: float, update_s: float,
                    publish_s: float, now: float) -> None:
        self.health.poll(0)
        steps = self._actor_env_steps()
        t_prev, steps_prev = self._env_steps
        self._env_steps = (now, steps)
        store = self.store.stats()
        record = {
            "event": "update", **stats, **self.filter.report(),
            "group_ids": selection.group_ids,
            "task_ids": [info.task_id for info in selection.infos],
            "batch_env_steps": sum(t.length for g in selection.groups for t in g),
            "queue_groups": store["complete_groups"], "store_trajectories": store["trajectories"],
            "wait_s": wait_s, "update_s": update_s, "publish_s": publish_s,
            "learner_steps_per_s": 1.0 / max(now - self._last_update_end, 1e-9),
            "env_steps_per_s": max(steps - steps_prev, 0) / max(now - t_prev, 1e-9),
            **{f"actors_{k}": v for k, v in self.health.counts().items()},
        }
        self.metrics.log(record, step=self.version)
        log.info("v%d loss %.4f | %d groups (%s) | success %.2f | staleness %.1f/%d | "
                 "grad %.3f | wait %.1fs update %.1fs | queue %d | filter %s", self.version,
                 stats["loss"], len(selection.groups), ",".join(sorted(set(record["task_ids"]))),
                 stats["success_rate"], stats["staleness_mean"], int(stats["staleness_max"]),
                 stats["grad_norm"], wait_s, update_s, store["complete_groups"],
                 self.filter.report())

    def _actor_env_steps(self) -> int:
        return sum(h.env_steps for h in self.health.report())

    def _checkpoint(self) -> None:
        t0 = time.monotonic()
        send_command("checkpoint", self.trainer.device)
        optim = self.trainer.optimizer_state_dict()
        path = save_checkpoint(self.cfg.learner.checkpoint_dir, self.version, self.template,
                               self.model_sd, optim, self.store.consumption_marks(),
                               extra={"filter": self.filter.report()},
                               keep=self.cfg.learner.keep_checkpoints)
        self.last_checkpoint = self.version
        log.info("checkpoint %s (%.1fs)", path, time.monotonic() - t0)
