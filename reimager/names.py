"""Short names for ARM ids, as operators read them (the CLI's display and devhost's terminal lines)."""

from __future__ import annotations


def short_target(target: str | None) -> str:
    """`web-linux-01` for a VM, `workers` for a scale set, `workers/3` for one of its instances."""
    parts = (target or "-").rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2].lower() == "virtualmachines" and parts[-4].lower() == "virtualmachinescalesets":
        return f"{parts[-3]}/{parts[-1]}"
    return parts[-1]
