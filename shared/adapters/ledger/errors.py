"""What can go wrong with a ledger write, in the ledger's terms."""

from __future__ import annotations

from shared.domain.errors import ErrorCode, ReimagerError

STORAGE_RETRY_AFTER = 5  # seconds: a hot partition answers 503 for a while; Table Storage retries take ~5 s


class LedgerConflict(RuntimeError):
    """A compare-and-swap kept losing; the caller may retry later."""


class RecordChanged(LedgerConflict):
    """A compare-and-swap found the record changed (or gone) since it was read, and the change was not ours."""


class LedgerUnavailable(ReimagerError):
    """Table Storage failed a write or a read (500/503, a timeout, a dropped connection), and a read-back could not
    tell whether the write landed. Nothing that such a write may hold is freed; the caller answers 503."""

    def __init__(self, what: str) -> None:
        super().__init__(ErrorCode.STORAGE_UNAVAILABLE, f"The ledger's storage did not answer while {what}; ask "
                         "again shortly with the same requestId (nothing is done twice).",
                         retry_after=STORAGE_RETRY_AFTER)
