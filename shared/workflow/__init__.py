"""Use cases: they take the runtime (and the durable client), write the ledger, call ARM, send events."""
