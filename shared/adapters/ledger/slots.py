"""The global budget: GLOBAL_MAX_REIMAGES_PER_HOUR slots, one entity each, one POST per slot per hour.

A slot is taken by insert-if-absent or by an ETag compare-and-swap on one whose last use is over an hour old, so
no rolling hour sees more POSTs than slots; concurrent POSTs pick random slots instead of all writing one hot
entity (one counter record made every POST in a burst retry its CAS: p99 intake 2.4 s against 0.36). Each take
carries the owner and a token, so a take answered 500 but applied is recognised as ours.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from shared.adapters.ledger.base import CAS_ATTEMPTS, Tables, backoff
from shared.adapters.ledger.entities import WRITE, etag_of, may_have_landed, new_token
from shared.adapters.ledger.errors import LedgerConflict

GLOBAL_SLOTS = "global-slots"  # targets-table partition of the global budget's slots


class Slots(Tables):
    async def take_global_slot(self, owner: str, now: datetime, limit: int) -> tuple[str | None, datetime | None]:
        """(slot, None) when a slot was taken for `owner`; (None, when one frees) when all are in use."""
        await self.ensure_tables()
        hour_ago = now - timedelta(hours=1)
        for key in {f"{random.randrange(limit):07d}" for _ in range(3)}:  # noqa: S311 - spreading, not secrecy
            if await self._try_slot(key, owner, now, hour_ago):
                return key, None
        for _ in range(CAS_ATTEMPTS):  # crowded: list the slots, try the free ones
            used = await self._slots()
            busy = {k: at for k, at in used.items() if at > hour_ago and int(k) < limit}
            if len(busy) >= limit:
                return None, min(busy.values()) + timedelta(hours=1)
            free = [f"{i:07d}" for i in range(limit) if f"{i:07d}" not in busy]
            for key in random.sample(free, min(8, len(free))):
                if await self._try_slot(key, owner, now, hour_ago):
                    return key, None
            await backoff(1)
        raise LedgerConflict("could not take a global-budget slot")

    async def global_slots_free(self, now: datetime, limit: int) -> bool:
        await self.ensure_tables()
        hour_ago = now - timedelta(hours=1)
        return sum(1 for k, at in (await self._slots()).items() if at > hour_ago and int(k) < limit) < limit

    async def give_back_global_slot(self, key: str, owner: str) -> None:
        """Nothing was sent: the slot serves another POST (only if `owner` still holds it)."""
        table = self._table(self.tables[2])
        try:
            entity = await self._read("reading a budget slot", table.get_entity(GLOBAL_SLOTS, key))
            if entity.get("owner") == owner:
                await self._read("freeing a budget slot", table.delete_entity(
                    GLOBAL_SLOTS, key, etag=etag_of(entity), match_condition=MatchConditions.IfNotModified))
        except (ResourceModifiedError, ResourceNotFoundError):
            pass

    async def _slots(self) -> dict[str, datetime]:
        query = self._table(self.tables[2]).query_entities(
            "PartitionKey eq @pk", parameters={"pk": GLOBAL_SLOTS}, select=["RowKey", "at"])

        async def read() -> dict[str, datetime]:
            return {e["RowKey"]: e["at"] async for e in query if isinstance(e.get("at"), datetime)}

        slots: dict[str, datetime] = await self._read("listing budget slots", read())
        return slots

    async def _try_slot(self, key: str, owner: str, now: datetime, hour_ago: datetime) -> bool:
        table = self._table(self.tables[2])
        token = new_token()
        entity: dict[str, Any] = {"PartitionKey": GLOBAL_SLOTS, "RowKey": key, "at": now, "owner": owner,
                                  WRITE: token}
        try:
            current = await self._read("reading a budget slot", table.get_entity(GLOBAL_SLOTS, key))
        except ResourceNotFoundError:
            current = None
        if current is not None:
            at = current.get("at")
            if isinstance(at, datetime) and at > hour_ago:
                return False
        try:
            if current is None:
                await table.create_entity(entity)
            else:
                await table.update_entity(entity, mode="replace", etag=etag_of(current),
                                          match_condition=MatchConditions.IfNotModified)
            return True
        except Exception as exc:
            if not may_have_landed(exc):
                raise
            try:
                stored = await self._read("reading a budget slot", table.get_entity(GLOBAL_SLOTS, key))
            except ResourceNotFoundError:
                return False
            return bool(stored.get(WRITE) == token)  # ours landed, or someone else's did (try another)
