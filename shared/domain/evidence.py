"""Evidence before the wipe: its names (shared/rules/evidence.py decides, shared/workflow/evidence.py captures)."""

from __future__ import annotations

MODES = ("off", "bootdiagnostics", "snapshot")  # EVIDENCE, captureEvidence: each captures what the one before does
CONTAINER = "reimager-evidence"  # the blob container (infra/core/storage.bicep creates it in Azure)
SERIAL_LOG_MAX_BYTES = 4 * 1024 * 1024  # the end of a longer log is kept (what led up to the failure)
SAS_MINUTES = 15  # lifetime asked for the serial log's read-only SAS URI (1-1440; ARM's default is 120)
OPERATION_TAG, RETAIN_TAG = "reimager-operation", "reimager-retain-until"  # a snapshot's tags
CAPTURED, SKIPPED, FAILED = "captured", "skipped", "failed"
