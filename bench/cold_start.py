"""Cold start: what a fresh worker pays before it answers its first reimage request, against the peer.

Fresh interpreters, interleaved (the order rotates each run), median of BENCH_RUNS each:
- `floor`: `import azure.functions, azure.durable_functions`, which every durable v2 app pays;
- `import`: `import function_app` (the host's indexing import);
- `first_call`: `import function_app`, then the worker's indexing and one invocation of the HTTP
  trigger `reimage_submit` in-process (through the `azure.functions` converters, as the worker
  does), against devhost's ARM simulator, identity endpoint, durable stand-in and Azurite, until
  the 202 is in hand;
- `peer`: `import azure.mgmt.compute` + azure-identity, client construction and the first call,
  `begin_reimage(..., polling=False)` (the POST), against the same simulator.

Each `first_call` and `peer` run reimages a VM of its own, so no run finds another's cooldown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from bench._host import ROOT, ThreadedDevhost, median_ms

RUNS = int(os.environ.get("BENCH_RUNS", "7"))
VM_BODY = {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}}

FLOOR = "import azure.functions, azure.durable_functions"
IMPORT = "import function_app"
# The worker's first invocation: index the app, decode the trigger and the durable client binding through
# azure.functions' converters, await the function, encode its answer (devhost.bindings mirrors the worker).
FIRST_CALL = """
import asyncio, json, os, sys
import function_app
from devhost.bindings import http_datum, http_response_parts
from devhost.functions import index_app
entry = index_app(function_app.app).entries["reimage_submit"]
body = json.dumps({"target": os.environ["BENCH_TARGET"]}).encode()
url = os.environ["BENCH_FUNCTIONS"] + "/api/reimage"
datum = http_datum(method="POST", url=url, headers={"content-type": "application/json"}, query={}, route_params={},
                   body=body)
status, _, answer = http_response_parts(asyncio.run(entry.invoke(datum, client_binding=os.environ["BENCH_BINDING"])))
if status != 202:
    sys.exit(f"first call answered {status}: {answer[:300]!r}")
"""
PEER = """
import os
import azure.mgmt.compute
from azure.identity import ManagedIdentityCredential
client = azure.mgmt.compute.ComputeManagementClient(ManagedIdentityCredential(), os.environ["BENCH_SUB"],
                                                    base_url=os.environ["ARM_ENDPOINT"])
# polling=False: the POST only (a 4xx/5xx raises); what the runbook does before it starts waiting
client.virtual_machines.begin_reimage("reimager-demo", os.environ["BENCH_VM"], polling=False, enforce_https=False)
"""
CASES = {"floor": FLOOR, "import": IMPORT, "first_call": FIRST_CALL, "peer": PEER, "python": "pass"}


def app_env(dh: Any) -> dict[str, str]:
    """What the Functions host would give the worker: app settings and the platform's identity variables."""
    settings = dh.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "MSI_"))}
    env.update({
        "ARM_ENDPOINT": dh.arm_url, "ALLOWED_SCOPES": f"/subscriptions/{dh.endpoints()['subscriptionId']}",
        "DEFAULT_SUBSCRIPTION_ID": dh.endpoints()["subscriptionId"], "EVENTS_FILE": str(dh.events_file),
        "AzureWebJobsStorage": settings.storage_connection_string.get_secret_value(),
        "IDENTITY_ENDPOINT": dh.identity_url, "IDENTITY_HEADER": dh.issuer.header_secret,
        "BENCH_FUNCTIONS": dh.functions_url, "BENCH_BINDING": dh.client_binding(),
        "BENCH_SUB": dh.endpoints()["subscriptionId"],
    })
    return env


def main() -> None:
    times: dict[str, list[float]] = {name: [] for name in CASES}
    names = list(CASES)
    with ThreadedDevhost(operation_seconds=600) as dh:
        env = app_env(dh)
        sub = dh.endpoints()["subscriptionId"]
        for run in range(RUNS):
            ours_vm, peer_vm = f"cold-ours-{run}", f"cold-peer-{run}"
            for name in (ours_vm, peer_vm):
                dh.sim.upsert(f"/subscriptions/{sub}/resourceGroups/reimager-demo/providers/Microsoft.Compute/"
                              f"virtualMachines/{name}", VM_BODY)
            run_env = {**env, "BENCH_TARGET": f"/subscriptions/{sub}/resourceGroups/reimager-demo/providers/"
                       f"Microsoft.Compute/virtualMachines/{ours_vm}", "BENCH_VM": peer_vm}
            for name in names[run % len(names):] + names[: run % len(names)]:  # rotate the order each run
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", CASES[name]], cwd=ROOT, env=run_env,
                                      capture_output=True, text=True)
                elapsed = time.perf_counter() - start
                if done.returncode != 0:
                    raise SystemExit(f"cold start case {name} failed:\n{done.stderr[-2000:]}")
                times[name].append(elapsed)
    med = {name: median_ms(v) for name, v in times.items()}
    low = {name: min(v) for name, v in times.items()}  # the least disturbed run: steadier on a loaded machine
    print(f"cold start, median of {RUNS} fresh interpreters, interleaved (ms; interpreter start alone "
          f"{med['python']:.0f} ms). The machine is shared: read the ratios, not the absolute times.")
    for name in CASES:
        print(f"  {name:<11} {med[name]:8.1f}   (min {min(times[name]) * 1000:.1f})")
    import_ratio = med["import"] / med["floor"]
    first_ratio = med["first_call"] / med["peer"]
    print(f"RESULT cold_start import_ratio_to_floor={import_ratio:.3f} first_call_ratio_to_peer={first_ratio:.3f} "
          f"import_ms={med['import']:.1f} floor_ms={med['floor']:.1f} first_call_ms={med['first_call']:.1f} "
          f"peer_ms={med['peer']:.1f} ratio_to_floor={import_ratio:.3f} ratio_to_peer={first_ratio:.3f} "
          f"function_app_ms={med['import']:.1f} import_ratio_min={low['import'] / low['floor']:.3f} "
          f"first_call_ratio_min={low['first_call'] / low['peer']:.3f}")


if __name__ == "__main__":
    main()
