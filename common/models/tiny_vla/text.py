"""Instruction tokenisation for the tiny VLA: UTF-8 bytes, nothing downloaded.

Token ids are ``byte + 1`` (1..256); 0 is padding. Every instruction is padded to the same
``max_len`` so that a sample's tokens, and therefore its logits, do not depend on which
other instructions share its batch (the actor's batch and the learner's differ).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

PAD_ID = 0
VOCAB_SIZE = 257   # 256 byte values + padding


@lru_cache(maxsize=4096)
def _encode_one(text: str, max_len: int) -> np.ndarray:
    raw = text.strip().lower().encode("utf-8")
    if len(raw) > max_len:
        raise ValueError(f"instruction is {len(raw)} bytes, longer than max_text_len={max_len}: "
                         f"{text[:80]!r}...; raise the model's max_text_len")
    ids = np.zeros(max_len, dtype=np.int64)
    ids[:len(raw)] = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) + 1
    ids.setflags(write=False)   # cached: shared between calls
    return ids


def encode_instructions(instructions: Sequence[str], max_len: int) -> np.ndarray:
    """list of B strings -> int64 ids [B, max_len] (0 = padding). Case and outer spaces are
    dropped (an instruction means the same in any case)."""
    if isinstance(instructions, str):
        raise TypeError("encode_instructions: expected a list of strings, got one str")
    if len(instructions) == 0:
        return np.zeros((0, max_len), dtype=np.int64)
    return np.stack([_encode_one(str(t), int(max_len)) for t in instructions])
