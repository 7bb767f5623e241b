"""The one error class of the wire contracts (:mod:`common.wire`).

Every message that does not satisfy its contract raises :class:`WireError` (or a subclass,
such as :class:`common.wire.weights.WeightWireError`) with a machine-readable ``reason`` and a
human-readable ``detail``; receivers count and reject by ``reason``, never by message text.
"""
from __future__ import annotations


class WireError(ValueError):
    """A message that does not satisfy its contract. ``reason`` is one of:
    too_large, not_msgpack, not_a_map, unknown_version, missing_field, extra_field,
    wrong_type, bad_dtype, bad_shape, length_mismatch, bad_value (and, for weight requests,
    bad_request; from the trajectory store's commit: group_conflict, group_full, conflict,
    expert_record, store_error, and against the learner's declaration
    (common/wire/declaration.py): shape_mismatch, future_version, temperature_mismatch)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
