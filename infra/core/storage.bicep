// Storage for the Functions host, Durable Functions (blobs, queues, tables) and Flex deployments.
// Shared keys are disabled: everything connects with Entra ID (roles: app/rbac.bicep).
@minLength(3)
@maxLength(24)
@description('3-24 lower-case letters and digits (main.bicep: streimager + a 13-character token)')
param name string
param location string
param tags object = {}

@minValue(1)
@maxValue(3650)
@description('Evidence blobs are deleted this many days after they were written (EVIDENCE_RETENTION_DAYS)')
param evidenceRetentionDays int = 30

var deploymentContainer = 'app-package'
// What reimager captured before a reimage wiped an OS disk (shared/workflow/evidence.py): serial console logs and
// instance views, under each operation's id. Read with Storage Blob Data Reader on this container (app/rbac.bicep).
var evidenceContainer = 'reimager-evidence'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Flex Consumption without VNet integration reaches storage over its public endpoint; access is Entra ID only (shared keys off)
  // checkov:skip=CKV_AZURE_59: same reason; blob public access is off and anonymous access impossible without keys
  // checkov:skip=CKV_AZURE_206: ZRS survives a zone loss; geo-replicating short-lived durable state adds cost, not safety
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_ZRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: { enabled: true, days: 7 }
  }
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: deploymentContainer
  properties: { publicAccess: 'None' }
}

resource evidence 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: evidenceContainer
  properties: { publicAccess: 'None' }
}

// Evidence is kept EVIDENCE_RETENTION_DAYS, as the snapshots' retention tag says.
resource retention 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'evidence-retention'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: ['blockBlob']
              prefixMatch: ['${evidenceContainer}/']
            }
            actions: {
              baseBlob: {
                delete: { daysAfterCreationGreaterThan: evidenceRetentionDays }
              }
            }
          }
        }
      ]
    }
  }
}

output name string = storage.name
output deploymentContainer string = deploymentContainer
output tableEndpoint string = storage.properties.primaryEndpoints.table
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output evidenceContainer string = evidence.name
