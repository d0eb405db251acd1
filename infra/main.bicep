// reimager: Flex Consumption Function App (Python 3.11) with a user-assigned identity, storage
// without shared keys, Service Bus without local auth, Key Vault for the chatops secrets,
// monitoring with a workbook, and least-privilege roles.
//
// Every app setting shared/settings.py reads is a parameter here, mapped in
// main.parameters.json from the azd environment variable REIMAGER_<SETTING>
// (`azd env set REIMAGER_COOLDOWN_MINUTES 60`), except the ones that name resources this
// template creates. Bounds mirror shared/settings.py (tests/infra checks both).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; used to name resources')
param environmentName string

@minLength(1)
@description('Primary location for all resources')
@metadata({ azd: { type: 'location' } })
param location string

@description('Object id that gets data-plane access to storage and Service Bus for local runs; empty: the deploying principal (deployer().objectId)')
param principalId string = ''

@description('Give the deploying principal data-plane access (REIMAGER_GRANT_DEPLOYER_ACCESS); turn off for production pipelines')
param grantDeployerAccess bool = true

// ---- reimager settings (shared/settings.py) ---------------------------------------------

@description('ALLOWED_SCOPES: subscription or resource-group ids reimager may act on. Empty allows nothing.')
param allowedScopes array = []

@description('ARM_ENDPOINT: empty means this cloud\'s Resource Manager endpoint')
param armEndpoint string = ''

@description('COMPUTE_API_VERSION')
param computeApiVersion string = '2024-07-01'

@description('ARM_TIMEOUT_SECONDS: seconds to wait for an ARM answer')
@minValue(1)
@maxValue(300)
param armTimeoutSeconds int = 30

@description('PREFLIGHT_CACHE_SECONDS: a target read is shared this many seconds by every request that needs it')
@minValue(0)
@maxValue(60)
param preflightCacheSeconds int = 5

@description('ARM_QUOTA_LOW_WATER: polls and health reads wait while an ARM bucket has this many requests left or fewer')
@minValue(0)
@maxValue(100)
param armQuotaLowWater int = 3

@description('DEFAULT_SUBSCRIPTION_ID: empty means this subscription')
param defaultSubscriptionId string = ''

@description('PROTECT_TAG: name or name=value; a tagged target is never reimaged')
param protectTag string = 'reimager-protect=true'

@description('AUTOMATIC_REPAIRS: refuse (a scale set whose automatic repairs run is not reimaged) or allow')
@allowed(['refuse', 'allow'])
param automaticRepairs string = 'refuse'

@minValue(1)
@maxValue(1000)
param maxInstancesPerRequest int = 10

@description('COOLDOWN_MINUTES: 0 turns cooldowns off')
@minValue(0)
@maxValue(10080)
param cooldownMinutes int = 30

@minValue(1)
param pollMinSeconds int = 1

@minValue(1)
param pollMaxSeconds int = 120

@minValue(1)
param pollDefaultSeconds int = 15

@minValue(1)
@maxValue(10080)
param operationTimeoutMinutes int = 120

@minValue(1)
@maxValue(3600)
param submitTimeoutSeconds int = 300

@minValue(5)
@maxValue(3600)
param claimSeconds int = 30

@minValue(2)
@maxValue(1000)
param pollsPerGeneration int = 10

@minValue(0)
@maxValue(10080)
param healthGraceMinutes int = 10

@minValue(1)
@maxValue(100)
param maxBatchPercent int = 20
@minValue(0)
@maxValue(300)
param batchGatherSeconds int = 5

@minValue(1)
@maxValue(100)
param fleetBudgetPercent int = 30

@minValue(1)
@maxValue(10080)
param fleetWindowMinutes int = 60

@minValue(1)
@maxValue(100000)
param globalMaxReimagesPerHour int = 100

@minValue(1)
@maxValue(100)
param breakerPercent int = 50

@minValue(1)
@maxValue(100)
param breakerFailures int = 3

@description('CANARY_INSTANCES: a storm\'s first batch on a scale set reimages this many instances and waits for them to come back healthy; 0 turns it off')
@minValue(0)
@maxValue(1000)
param canaryInstances int = 1

@minValue(1)
@maxValue(10080)
param queueMaxWaitMinutes int = 240

@description('SWEEP_SCHEDULE: NCRONTAB with six fields')
param sweepSchedule string = '0 */1 * * * *'

@description('APPROVAL_ABOVE_INSTANCES: 0 makes every request wait for approval')
@minValue(0)
@maxValue(1000)
param approvalAboveInstances int = 5

@minValue(1)
@maxValue(10080)
param approvalTimeoutMinutes int = 60

param approvalAllowUnverified bool = false

@description('EASY_AUTH_ENABLED: only with App Service authentication configured on the app')
param easyAuthEnabled bool = false

@description('APPROVER_IDENTITY_MAP: JSON {"slack:<team>/<user>": "entra:<object id>"}, who is who across identity systems')
param approverIdentityMap string = ''

@description('FREEZE_WINDOWS: "; "-separated cron + ISO 8601 duration, or ISO 8601 intervals, in UTC')
param freezeWindows string = ''

@description('FREEZE_TAG: the tag that freezes one target until the time in its value')
param freezeTag string = 'reimager-freeze'

@description('MAX_TARGETS_PER_ALERT: an alert naming more machines is held for approval as one decision')
@minValue(1)
@maxValue(1000)
param maxTargetsPerAlert int = 10

@secure()
@description('SLACK_SIGNING_SECRET: stored in Key Vault; the app setting is a Key Vault reference')
param slackSigningSecret string = ''

@secure()
@description('TEAMS_WEBHOOK_SECRET: stored in Key Vault; the app setting is a Key Vault reference')
param teamsWebhookSecret string = ''

@description('LEDGER_TABLE_PREFIX: a letter, then letters or digits')
param ledgerTablePrefix string = 'reimager'

@description('EVIDENCE: what is captured before a reimage wipes the OS disk')
@allowed(['off', 'bootdiagnostics', 'snapshot'])
param evidence string = 'bootdiagnostics'

@description('EVIDENCE_TIMEOUT_SECONDS: the most evidence capture may delay a reimage')
@minValue(1)
@maxValue(600)
param evidenceTimeoutSeconds int = 60

@description('EVIDENCE_RETENTION_DAYS: snapshots are tagged, and evidence blobs deleted, after this many days')
@minValue(1)
@maxValue(3650)
param evidenceRetentionDays int = 30

@description('Object ids (a group of operators) that may read the evidence container, and nothing else of the storage account')
param evidenceReaderIds array = []

@description('REQUESTS_QUEUE: the Service Bus queue this template creates')
param requestsQueue string = 'reimage-requests'

@description('EVENTS_TOPIC: the Service Bus topic this template creates')
param eventsTopic string = 'reimage-events'

var tags = { 'azd-env-name': environmentName }
// '/subscriptions/{id}' splits into 3 parts, '/subscriptions/{id}/resourceGroups/{rg}' into 5.
var subscriptionScopes = filter(allowedScopes, s => length(split(s, '/')) == 3)
var groupScopes = filter(allowedScopes, s => length(split(s, '/')) == 5)
var token = toLower(uniqueString(subscription().id, environmentName, location))

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'core/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-reimager-${token}'
    location: location
    tags: tags
  }
}

module monitoring 'core/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${token}'
    appInsightsName: 'appi-${token}'
    location: location
    tags: tags
  }
}

module storage 'core/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'streimager${token}'
    location: location
    tags: tags
    evidenceRetentionDays: evidenceRetentionDays
  }
}

module serviceBus 'core/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: 'sb-reimager-${token}'
    location: location
    tags: tags
    requestsQueue: requestsQueue
    eventsTopic: eventsTopic
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.id
  }
}

module keyVault 'core/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${token}'
    location: location
    tags: tags
    slackSigningSecret: slackSigningSecret
    teamsWebhookSecret: teamsWebhookSecret
  }
}

// deployer().objectId, in a module of its own (see app/deployer.bicep).
module deployingPrincipal 'app/deployer.bicep' = {
  name: 'deployer'
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.name
    appInsightsName: monitoring.outputs.name
    keyVaultName: keyVault.outputs.name
    identityPrincipalId: identity.outputs.principalId
    userPrincipalId: grantDeployerAccess ? (empty(principalId) ? deployingPrincipal.outputs.objectId : principalId) : ''
    evidenceContainerName: storage.outputs.evidenceContainer
    evidenceReaderIds: evidenceReaderIds
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  // Key Vault references resolve only once the identity may read the secrets.
  dependsOn: [rbac]
  params: {
    name: 'func-reimager-${token}'
    planName: 'plan-reimager-${token}'
    location: location
    tags: union(tags, { 'azd-service-name': 'api' })
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainer: storage.outputs.deploymentContainer
    appInsightsConnectionString: monitoring.outputs.connectionString
    appSettings: {
      ARM_ENDPOINT: empty(armEndpoint) ? environment().resourceManager : armEndpoint
      COMPUTE_API_VERSION: computeApiVersion
      ARM_TIMEOUT_SECONDS: string(armTimeoutSeconds)
      AZURE_CLIENT_ID: identity.outputs.clientId
      PREFLIGHT_CACHE_SECONDS: string(preflightCacheSeconds)
      ARM_QUOTA_LOW_WATER: string(armQuotaLowWater)
      DEFAULT_SUBSCRIPTION_ID: empty(defaultSubscriptionId) ? subscription().subscriptionId : defaultSubscriptionId
      ALLOWED_SCOPES: join(allowedScopes, ',')
      PROTECT_TAG: protectTag
      AUTOMATIC_REPAIRS: automaticRepairs
      MAX_INSTANCES_PER_REQUEST: string(maxInstancesPerRequest)
      COOLDOWN_MINUTES: string(cooldownMinutes)
      POLL_MIN_SECONDS: string(pollMinSeconds)
      POLL_MAX_SECONDS: string(pollMaxSeconds)
      POLL_DEFAULT_SECONDS: string(pollDefaultSeconds)
      OPERATION_TIMEOUT_MINUTES: string(operationTimeoutMinutes)
      SUBMIT_TIMEOUT_SECONDS: string(submitTimeoutSeconds)
      CLAIM_SECONDS: string(claimSeconds)
      POLLS_PER_GENERATION: string(pollsPerGeneration)
      HEALTH_GRACE_MINUTES: string(healthGraceMinutes)
      MAX_BATCH_PERCENT: string(maxBatchPercent)
      BATCH_GATHER_SECONDS: string(batchGatherSeconds)
      FLEET_BUDGET_PERCENT: string(fleetBudgetPercent)
      FLEET_WINDOW_MINUTES: string(fleetWindowMinutes)
      GLOBAL_MAX_REIMAGES_PER_HOUR: string(globalMaxReimagesPerHour)
      BREAKER_PERCENT: string(breakerPercent)
      BREAKER_FAILURES: string(breakerFailures)
      CANARY_INSTANCES: string(canaryInstances)
      QUEUE_MAX_WAIT_MINUTES: string(queueMaxWaitMinutes)
      SWEEP_SCHEDULE: sweepSchedule
      APPROVAL_ABOVE_INSTANCES: string(approvalAboveInstances)
      APPROVAL_TIMEOUT_MINUTES: string(approvalTimeoutMinutes)
      APPROVAL_ALLOW_UNVERIFIED: string(approvalAllowUnverified)
      EASY_AUTH_ENABLED: string(easyAuthEnabled)
      APPROVER_IDENTITY_MAP: approverIdentityMap
      FREEZE_WINDOWS: freezeWindows
      FREEZE_TAG: freezeTag
      MAX_TARGETS_PER_ALERT: string(maxTargetsPerAlert)
      SLACK_SIGNING_SECRET: keyVault.outputs.slackSigningSecretSetting
      TEAMS_WEBHOOK_SECRET: keyVault.outputs.teamsWebhookSecretSetting
      AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
      LEDGER_TABLE_PREFIX: ledgerTablePrefix
      EVIDENCE: evidence
      EVIDENCE_TIMEOUT_SECONDS: string(evidenceTimeoutSeconds)
      EVIDENCE_RETENTION_DAYS: string(evidenceRetentionDays)
      AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
      REQUESTS_QUEUE: requestsQueue
      EVENTS_TOPIC: eventsTopic
      ServiceBusConnection__fullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
      ServiceBusConnection__credential: 'managedidentity'
      ServiceBusConnection__clientId: identity.outputs.clientId
    }
  }
}

// The custom role lives in this subscription and may be assigned at every allowed scope.
module operatorRole 'core/operator-role.bicep' = {
  name: 'operator-role'
  params: {
    roleName: 'reimager operator (${environmentName})'
    assignableScopes: empty(allowedScopes) ? [subscription().id] : allowedScopes
  }
}

// One assignment per allowed scope: a subscription id, or a resource group id.
module subscriptionAssignments 'core/role-assignment-subscription.bicep' = [for scope in subscriptionScopes: {
  name: 'reimager-sub-${uniqueString(scope)}'
  scope: subscription(split(scope, '/')[2])
  params: {
    principalId: identity.outputs.principalId
    roleDefinitionId: operatorRole.outputs.id
  }
}]

module groupAssignments 'core/role-assignment-group.bicep' = [for scope in groupScopes: {
  name: 'reimager-rg-${uniqueString(scope)}'
  scope: resourceGroup(split(scope, '/')[2], split(scope, '/')[4])
  params: {
    principalId: identity.outputs.principalId
    roleDefinitionId: operatorRole.outputs.id
  }
}]

// azd writes these into .azure/<env>/.env; the names follow the azd templates' convention.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_SUBSCRIPTION_ID string = subscription().subscriptionId
output AZURE_RESOURCE_GROUP string = rg.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output AZURE_FUNCTION_NAME string = api.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.endpoint
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.blobEndpoint
output AZURE_SERVICEBUS_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output AZURE_USER_ASSIGNED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.connectionString
