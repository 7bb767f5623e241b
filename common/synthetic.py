"""Realistic synthetic trajectory records, for the ingest benchmark and tests.

Images are smooth gradients plus noise (compressible like camera frames, not constant),
the rest random within each field's contract. :func:`oversized_timings_record` is the
opposite: the wire bytes of a record built to be expensive to decode.
"""
from __future__ import annotations

import math
import uuid

import msgpack
import numpy as np

from common.wire.trajectory import Trajectory, encode


def make_trajectory(rng: np.random.Generator, *, group_id: str | None = None, group_size: int = 8,
                    length: int = 100, chunk_size: int = 8, action_dim: int = 7,
                    cameras: int = 1, image_size: int = 64, proprio_dim: int = 8,
                    policy_version: int = 0, success: bool | None = None,
                    task_id: str = "spatial/0", init_state_id: int = 0,
                    actor_id: str = "synthetic", trajectory_id: str | None = None,
                    num_bins: int = 256, temperature: float = 1.6) -> Trajectory:
    T = math.ceil(length / chunk_size)
    K = chunk_size * action_dim
    ramp = np.linspace(0, 255, image_size, dtype=np.float32)
    base = (ramp[None, :, None] + ramp[:, None, None]) / 2
    noise = rng.integers(0, 32, size=(T, cameras, image_size, image_size, 3))
    images = np.clip(base + noise, 0, 255).astype(np.uint8)
    valid = np.zeros((T, chunk_size), dtype=bool)
    valid.reshape(-1)[:length] = True
    expert = policy_version < 0
    return Trajectory(
        trajectory_id=trajectory_id or uuid.uuid4().hex,
        group_id=group_id or uuid.uuid4().hex,
        actor_id=actor_id, task_id=task_id,
        instruction="put the red cube on the plate",
        init_state_id=init_state_id, policy_version=policy_version, group_size=group_size,
        success=bool(rng.random() < 0.5) if success is None else success,
        length=length, temperature=temperature, num_bins=num_bins,
        images=images,
        proprio=rng.standard_normal((T, proprio_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (T, chunk_size, action_dim)).astype(np.float32),
        action_tokens=rng.integers(0, num_bins, (T, 0 if expert else K)).astype(np.int16),
        behaviour_log_probs=-rng.exponential(3.0, (T, 0 if expert else K)).astype(np.float32),
        valid_mask=np.repeat(valid, action_dim, axis=1),
        created_at=1.7e9, timings={"env_s": 1.0, "inference_s": 0.5, "wait_s": 0.0},
    )


def oversized_timings_record(trajectory_id: str, keys: int = 1_000_000) -> bytes:
    """The wire bytes of a small valid record whose ``timings`` map holds ``keys`` entries
    (``"000000"``: 0.0 as float32, 12 bytes each: 12 MB for a million), an actor bug or an
    attack that a receiver must refuse cheaply. Built as bytes, not as a dict, since a
    million-key dict takes seconds to build and pack."""
    msg = msgpack.unpackb(encode(make_trajectory(np.random.default_rng(0), image_size=8,
                                                 length=16, trajectory_id=trajectory_id)))
    msg["timings"] = {}
    raw = msgpack.packb(msg, use_bin_type=True)
    empty = msgpack.packb("timings") + msgpack.packb({})
    digits = np.arange(keys)[:, None] // 10 ** np.arange(5, -1, -1) % 10 + ord("0")
    entries = np.zeros((keys, 12), np.uint8)
    entries[:, 0] = 0xa6                    # fixstr of 6 bytes: the key
    entries[:, 1:7] = digits
    entries[:, 7] = 0xca                    # float32; its 4 bytes stay 0 (0.0)
    header = msgpack.packb("timings") + b"\xdf" + keys.to_bytes(4, "big")   # map32
    return raw.replace(empty, header + entries.tobytes(), 1)
