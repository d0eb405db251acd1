"""Small test helpers shared by the suites (fixture paths and well-known ids)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
SUB = "11111111-2222-3333-4444-555555555555"
RG = "fleet-rg"
VM_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/vm1"
VMSS_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/ss1"
SENTINEL_PASSWORD = "Sentinel-Pa55-9f3c"
# Characters whose Unicode case mapping lands on ASCII: look-alikes that must not fold into an ASCII name.
KELVIN = "\u212a"  # KELVIN SIGN: str.lower() turns it into an ASCII "k"
LONG_S = "\u017f"  # LATIN SMALL LETTER LONG S: str.upper() turns it into an ASCII "S"
DOTTED_I = "\u0130"  # LATIN CAPITAL LETTER I WITH DOT ABOVE: lower() gives "i" + a combining dot


def load_json(relative: str) -> Any:
    return json.loads((FIXTURES / relative).read_text())
