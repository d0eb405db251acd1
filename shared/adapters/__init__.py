"""I/O to Azure: the ARM client, the ledger (Table Storage), publishers, telemetry, credentials."""
