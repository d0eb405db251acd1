// "reimager operator": only what reimager does. Read targets, their instance views (health
// verification after a reimage) and their operations; reimage.
//
// Action names: Azure RBAC provider operations, Microsoft.Compute
// (learn.microsoft.com/azure/role-based-access-control/permissions/compute; MicrosoftDocs/azure-docs
// articles/role-based-access-control/permissions/compute.md). ARM authorizes a request by its path:
// GET .../{type}/{name}/{child} needs "{type}/{child}/read", a list needs the child type's "read".
// Health verification (shared/adapters/arm/client.py ComputeClient.instance_health) makes three reads:
//   GET .../virtualMachines/{vm}/instanceView                      virtualMachines/instanceView/read
//   GET .../virtualMachineScaleSets/{set}/virtualMachines/{id}/instanceView (one instance)
//                                                                  virtualMachineScaleSets/virtualMachines/instanceView/read
//   GET .../virtualMachineScaleSets/{set}/virtualMachines?$expand=instanceView (several)
//                                                                  virtualMachineScaleSets/virtualMachines/read
// The list is authorized as a list of VMs (the 403 kubernetes/autoscaler#1674 quotes for
// VirtualMachineScaleSetVMsClient.List names virtualMachineScaleSets/virtualMachines/read). Whether
// Compute also checks .../virtualMachines/instanceView/read for $expand=instanceView is not documented;
// AKS's cloud-provider permission list pairs the two, and the one-instance GET needs it anyway.
// The preflight's fleet checks (shared/adapters/arm/fleet.py) make two more reads:
//   GET .../virtualMachineScaleSets/{set}/instanceView (its automatic repairs' state, only when the set's model
//       enables them)                                              virtualMachineScaleSets/instanceView/read
//   GET .../resourceGroups/{group}/providers/Microsoft.Authorization/locks (ReadOnly locks)
//                                                                  Microsoft.Authorization/locks/read ("Gets locks at
//                                                                  the specified scope"; Azure permissions, Authorization)
// A Flexible set's members are listed with GET .../virtualMachines?$filter=... (virtualMachines/read) and reimaged
// with the single-VM reimage (virtualMachines/reimage/action), both granted above for VMs.
// Evidence before the wipe (shared/adapters/arm/evidence.py; research notes arm.md C10-C12):
//   POST .../virtualMachines/{vm}/retrieveBootDiagnosticsData       virtualMachines/retrieveBootDiagnosticsData/action
//   POST .../virtualMachineScaleSets/{set}/virtualMachines/{id}/retrieveBootDiagnosticsData
//                                                                  virtualMachineScaleSets/virtualMachines/retrieveBootDiagnosticsData/action
//   PUT  .../snapshots/{name} (incremental, Copy)                   snapshots/write, and on the source disk (a linked
//        check, 403 LinkedAuthorizationFailed without it) disks/beginGetAccess/action, and, for a scale set's
//        instance disk, virtualMachineScaleSets/disks/beginGetAccess/action (which one Compute checks is not
//        documented: both)
//   GET  .../snapshots/{name} (when ARM names no operation to poll) snapshots/read
//   GET  .../locations/{loc}/DiskOperations/{id}                   locations/diskOperations/read
// The models and views read before the POST are the reads above (virtualMachines/read with $expand=instanceView,
// virtualMachineScaleSets/virtualMachines/read; a Flexible set's members: their VMs' GET, or the VM list filtered on
// the set, and their boot diagnostics and OS disks as any VM's). Not granted: disks/read (the disk id comes from
// the model), snapshots/delete (evidence expires by its retention tag; deleting is an operator's decision).
targetScope = 'subscription'

param roleName string
param assignableScopes array

var actions = [
  'Microsoft.Authorization/locks/read'
  'Microsoft.Compute/virtualMachines/read'
  'Microsoft.Compute/virtualMachines/instanceView/read'
  'Microsoft.Compute/virtualMachines/reimage/action'
  'Microsoft.Compute/virtualMachineScaleSets/read'
  'Microsoft.Compute/virtualMachineScaleSets/instanceView/read'
  'Microsoft.Compute/virtualMachineScaleSets/reimage/action'
  'Microsoft.Compute/virtualMachineScaleSets/reimageall/action'
  'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read'
  'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/instanceView/read'
  'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimage/action'
  'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimageall/action'
  'Microsoft.Compute/locations/operations/read'
  'Microsoft.Compute/virtualMachines/retrieveBootDiagnosticsData/action'
  'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/retrieveBootDiagnosticsData/action'
  'Microsoft.Compute/snapshots/write'
  'Microsoft.Compute/snapshots/read'
  'Microsoft.Compute/disks/beginGetAccess/action'
  'Microsoft.Compute/virtualMachineScaleSets/disks/beginGetAccess/action'
  'Microsoft.Compute/locations/diskOperations/read'
]

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, roleName)
  properties: {
    roleName: roleName
    description: 'Lets reimager read VMs and scale sets (their instance views, a scale set\'s automatic repairs, ARM locks), capture their boot diagnostics and OS disk snapshots, and reimage them; nothing else.'
    type: 'CustomRole'
    permissions: [
      {
        actions: actions
        notActions: []
      }
    ]
    assignableScopes: assignableScopes
  }
}

output id string = role.id
