// Optional demo target: a small Linux scale set with an ephemeral OS disk, after the seed 003
// model (sku.capacity, upgradePolicy, virtualMachineProfile with osProfile, storageProfile
// imageReference/osDisk/diffDiskSettings, networkProfile). Deploy it into an allowed scope:
//   az deployment group create -g <rg> -f infra/demo/vmss.bicep -p sshPublicKey="$(cat ~/.ssh/id_rsa.pub)"
param location string = resourceGroup().location
param name string = 'reimager-demo'
@minValue(1)
@maxValue(10)
param capacity int = 2
param adminUsername string = 'azureuser'
@description('SSH public key for adminUsername; password login is disabled')
param sshPublicKey string

resource vnet 'Microsoft.Network/virtualNetworks@2024-01-01' = {
  name: '${name}-vnet'
  location: location
  properties: {
    addressSpace: { addressPrefixes: ['10.42.0.0/16'] }
    subnets: [
      {
        name: 'default'
        properties: { addressPrefix: '10.42.0.0/24' }
      }
    ]
  }
}

resource vmss 'Microsoft.Compute/virtualMachineScaleSets@2024-07-01' = {
  // checkov:skip=CKV_AZURE_95: automatic OS image upgrades would reimage instances behind reimager's back; this demo shows reimager doing it
  name: name
  location: location
  sku: {
    name: 'Standard_D2ds_v5'
    tier: 'Standard'
    capacity: capacity
  }
  properties: {
    orchestrationMode: 'Uniform'
    overprovision: false
    singlePlacementGroup: true
    upgradePolicy: { mode: 'Manual' }
    virtualMachineProfile: {
      osProfile: {
        computerNamePrefix: 'demo'
        adminUsername: adminUsername
        linuxConfiguration: {
          disablePasswordAuthentication: true
          ssh: {
            publicKeys: [
              {
                path: '/home/${adminUsername}/.ssh/authorized_keys'
                keyData: sshPublicKey
              }
            ]
          }
        }
      }
      securityProfile: { encryptionAtHost: true }
      storageProfile: {
        imageReference: {
          publisher: 'Canonical'
          offer: 'ubuntu-24_04-lts'
          sku: 'server'
          version: 'latest'
        }
        osDisk: {
          createOption: 'FromImage'
          caching: 'ReadOnly'
          diffDiskSettings: { option: 'Local', placement: 'ResourceDisk' }
          managedDisk: { storageAccountType: 'Standard_LRS' }
        }
      }
      networkProfile: {
        networkInterfaceConfigurations: [
          {
            name: 'nic'
            properties: {
              primary: true
              ipConfigurations: [
                {
                  name: 'ipconfig'
                  properties: { subnet: { id: vnet.properties.subnets[0].id } }
                }
              ]
            }
          }
        ]
      }
    }
  }
}

output id string = vmss.id
