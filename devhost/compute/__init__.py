"""ARM Compute simulator (aiohttp): VMs, scale sets, their instances, instance views, and the reimage LROs.

Faithful where reimager and azure-mgmt-compute look, and never kinder than Azure (sources are
cited where each behaviour is implemented; the project's fidelity table lists them all):
- paths matched case-insensitively; api-version and bearer tokens required;
- a reimage answers 202 + Azure-AsyncOperation + Location (`monitor=true`) and, like the
  recorded exchange, no Retry-After unless the constructor or a fault asks for one;
- a newer operation on a VM / scale set preempts the running one (scale-set and instance
  operations on one set preempt each other): the old one ends Canceled/OperationPreempted;
- an empty or missing `instanceIds` reimages every instance (the API's dangerous rule);
- a Location poll after a failure answers the failure's status code with its CloudError;
- instance views with ProvisioningState / PowerState / vmHealth, which faults can bend.

Per-request work does not grow with the number of operations, finished or running: operations
are indexed by id and by resource, and a heap of end times says which ones ended since. With `state_dir` the
resources, instances, operations and request log persist (one atomically replaced file per
resource and per operation, the request log appended as JSON lines), and a new simulator on
the same directory carries on, on the port it was bound to before (`preferred_port`), so
operation URLs handed out earlier stay valid.

The parts, each a module of this package:
- `app`: `ComputeSimulator`, the switches and state, the aiohttp app and the routing of each request;
- `arm`: paths, resource ids, the api-version rule, CloudError bodies, quota headers;
- `resources`: the VM / scale set / instance models (PUT/PATCH semantics, sizing, seeding) and each
  machine's power and health state;
- `operations`: the reimage LROs, preemption, the end-time heap, the async-operation and Location answers;
- `resource_api`: GET, the paged VM list and PUT/PATCH of resources;
- `views`: instance views and health states;
- `faults`: the fault queue and which requests a fault matches;
- `persistence`: the files under `state_dir` and the request log.
"""

from devhost.compute.app import ComputeSimulator
from devhost.compute.faults import Fault
from devhost.compute.operations import Operation

__all__ = ["ComputeSimulator", "Fault", "Operation"]
