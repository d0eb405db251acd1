"""Deterministic operation ids: the same idempotency key always names the same operation."""

from __future__ import annotations

import hashlib


def _h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def operation_id(idempotency_key: str) -> str:
    return f"op-{_h(idempotency_key)}"
