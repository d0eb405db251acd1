// Every data-plane role assignment in one place: what the app's identity needs to run, and
// what the deploying developer needs to run the app locally against the same resources.
param storageAccountName string
param serviceBusNamespaceName string
param appInsightsName string
param keyVaultName string

@description('Principal id of the app\'s user-assigned identity')
param identityPrincipalId string

@description('Object id of the deploying user or service principal; empty: no developer access')
param userPrincipalId string = ''

@description('The evidence container (core/storage.bicep)')
param evidenceContainerName string

@description('Object ids that may read the evidence container (operators), and nothing else of the account')
param evidenceReaderIds array = []

// Built-in role definition ids.
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var serviceBusDataReceiver = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
var serviceBusDataSender = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

// The Functions host and the Durable Functions Azure Storage provider need blobs (owner: leases),
// queues and tables; the ledger lives in tables of the same account.
var identityStorageRoles = [storageBlobDataOwner, storageQueueDataContributor, storageTableDataContributor]
var identityServiceBusRoles = [serviceBusDataReceiver, serviceBusDataSender]
var userStorageRoles = [storageBlobDataContributor, storageQueueDataContributor, storageTableDataContributor]
var userServiceBusRoles = [serviceBusDataReceiver, serviceBusDataSender]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource evidenceContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${storageAccountName}/default/${evidenceContainerName}'
}

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource identityStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in identityStorageRoles: {
  name: guid(storage.id, identityPrincipalId, role)
  scope: storage
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

// Evidence before the wipe: the app writes the container (explicitly, not only through the host's account-wide role),
// and operators may read it without any other access to the account (it also holds the task hub and the ledger).
resource identityEvidence 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(evidenceContainer.id, identityPrincipalId, storageBlobDataContributor)
  scope: evidenceContainer
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

resource evidenceReaders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for reader in evidenceReaderIds: {
  name: guid(evidenceContainer.id, reader, storageBlobDataReader)
  scope: evidenceContainer
  properties: {
    principalId: reader
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
  }
}]

resource identityServiceBus 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in identityServiceBusRoles: {
  name: guid(namespace.id, identityPrincipalId, role)
  scope: namespace
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

// Lets the identity send telemetry without a key (Application Insights has local auth off).
resource identityTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identityPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

// Reads the chatops secrets behind the app settings' Key Vault references.
resource identitySecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identityPrincipalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

// The developer: storage data (task hub, ledger) and Service Bus send/receive, so that
// `func start` or devhost can run against these resources with `az login` credentials.
// No principalType: the deployer may be a user or a pipeline's service principal.
resource userStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in (empty(userPrincipalId) ? [] : userStorageRoles): {
  name: guid(storage.id, userPrincipalId, role)
  scope: storage
  properties: {
    principalId: userPrincipalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

// ...and telemetry from such a run (Application Insights has local auth off; shared/adapters/telemetry.py).
resource userTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(appInsights.id, userPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: userPrincipalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

resource userServiceBus 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in (empty(userPrincipalId) ? [] : userServiceBusRoles): {
  name: guid(namespace.id, userPrincipalId, role)
  scope: namespace
  properties: {
    principalId: userPrincipalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]
