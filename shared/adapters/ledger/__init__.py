"""The ledger (Azure Table Storage): operations, targets and their queues, the global budget. docs/ledger.md."""

from shared.adapters.ledger.entities import Page, target_partition
from shared.adapters.ledger.errors import LedgerConflict, LedgerUnavailable, RecordChanged
from shared.adapters.ledger.operations import OPEN
from shared.adapters.ledger.slots import GLOBAL_SLOTS
from shared.adapters.ledger.store import Ledger, make_ledger

__all__ = ["GLOBAL_SLOTS", "OPEN", "Ledger", "LedgerConflict", "LedgerUnavailable", "Page", "RecordChanged",
           "make_ledger", "target_partition"]
