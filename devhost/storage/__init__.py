"""Table Storage as hostile as Azure: a proxy in front of Azurite that enforces Azure's entity limits and
injects Azure's failures (timeouts after the write, dropped connections, ServerBusy, empty and short pages)."""

from devhost.storage.faults import Chaos, StorageFault
from devhost.storage.proxy import StorageProxy

__all__ = ["Chaos", "StorageFault", "StorageProxy"]
