"""Cold start: `import function_app` vs the floor every durable v2 app pays vs the peer.

Fresh interpreters, interleaved, median of N runs each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench._host import ROOT, median_ms

RUNS = int(os.environ.get("BENCH_RUNS", "15"))
CASES = {
    "function_app": "import function_app",
    "floor": "import azure.functions, azure.durable_functions, pydantic",
    "peer": ("import azure.mgmt.compute\nfrom azure.identity import ManagedIdentityCredential\n"
             "azure.mgmt.compute.ComputeManagementClient(ManagedIdentityCredential(), "
             "'00000000-0000-0000-0000-000000000000')"),
    "python": "pass",
}


def main() -> None:
    times: dict[str, list[float]] = {name: [] for name in CASES}
    names = list(CASES)
    for run in range(RUNS):
        for name in names[run % len(names):] + names[: run % len(names)]:  # rotate the order each run
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", CASES[name]], cwd=ROOT, check=True)
            times[name].append(time.perf_counter() - start)
    med = {name: median_ms(v) for name, v in times.items()}
    print(f"cold start, median of {RUNS} fresh interpreters (ms, including interpreter start {med['python']:.0f} ms)")
    for name in CASES:
        print(f"  {name:<13} {med[name]:8.1f}")
    print(f"RESULT cold_start ratio_to_floor={med['function_app'] / med['floor']:.3f} "
          f"ratio_to_peer={med['function_app'] / med['peer']:.3f} function_app_ms={med['function_app']:.1f} "
          f"floor_ms={med['floor']:.1f} peer_ms={med['peer']:.1f}")


if __name__ == "__main__":
    main()
