"""Process-wide clients, created lazily on first use and reused (cold start: nothing at import)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.settings import get_settings

if TYPE_CHECKING:
    from shared.compute import ComputeClient
    from shared.events import Publisher

_compute: ComputeClient | None = None
_publisher: Publisher | None = None


def _wall_clock() -> datetime:
    return datetime.now(UTC)


_clock: Callable[[], datetime] = _wall_clock


def now() -> datetime:
    """Current UTC time for decisions outside orchestrations (devhost swaps in its clock)."""
    return _clock()


def set_clock(clock: Callable[[], datetime]) -> None:
    global _clock
    _clock = clock


def compute() -> ComputeClient:
    global _compute
    if _compute is None:
        from shared.compute import ComputeClient

        settings = get_settings()
        _compute = ComputeClient(settings, read_timeout=settings.arm_timeout_seconds)
    return _compute


def publisher() -> Publisher:
    global _publisher
    if _publisher is None:
        from shared.events import make_publisher

        _publisher = make_publisher(get_settings())
    return _publisher


async def reset() -> None:
    """Close and forget the clients (devhost and tests: new event loop, new settings)."""
    global _compute, _publisher
    if _compute is not None:
        await _compute.close()
    if _publisher is not None:
        await _publisher.close()
    _compute = _publisher = None
    get_settings.cache_clear()
