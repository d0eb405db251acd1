"""Deterministic durable instance ids: the claim (idempotency), the per-target lock and cooldowns."""

from __future__ import annotations

import hashlib


def _h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def operation_id(idempotency_key: str) -> str:
    return f"op-{_h(idempotency_key)}"


def lock_id(lock_key: str) -> str:
    return f"lock-{_h(lock_key)}"


def cooldown_id(target_key: str) -> str:
    return f"cool-{_h(target_key)}"
