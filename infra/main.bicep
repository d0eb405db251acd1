// reimager: Flex Consumption Function App (Python 3.11) with a user-assigned identity, storage
// without shared keys, Service Bus without local auth, monitoring, and least-privilege roles.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; used to name resources')
param environmentName string

@minLength(1)
@description('Primary location for all resources')
param location string

@description('Subscription or resource-group ids reimager may act on (ALLOWED_SCOPES). Empty allows nothing.')
param allowedScopes array = []

@description('Tag that protects a target from reimage: name or name=value (PROTECT_TAG)')
param protectTag string = 'reimager-protect=true'

@minValue(1)
@maxValue(1000)
param maxInstancesPerRequest int = 10

@minValue(0)
param cooldownMinutes int = 30

@minValue(1)
param pollMinSeconds int = 5

@minValue(1)
param pollMaxSeconds int = 120

@minValue(1)
param pollDefaultSeconds int = 15

@minValue(1)
param operationTimeoutMinutes int = 120

@minValue(1)
param submitTimeoutSeconds int = 300

@minValue(2)
param pollsPerGeneration int = 50

param computeApiVersion string = '2024-07-01'

@description('Seconds to wait for an ARM answer before giving up on a call')
param armTimeoutSeconds int = 30

@description('Default subscription for requests that give resourceGroupName without subscriptionId')
param defaultSubscriptionId string = subscription().subscriptionId

var tags = { 'azd-env-name': environmentName }
// '/subscriptions/{id}' splits into 3 parts, '/subscriptions/{id}/resourceGroups/{rg}' into 5.
var subscriptionScopes = filter(allowedScopes, s => length(split(s, '/')) == 3)
var groupScopes = filter(allowedScopes, s => length(split(s, '/')) == 5)
var token = toLower(uniqueString(subscription().id, environmentName, location))
var requestsQueue = 'reimage-requests'
var eventsTopic = 'reimage-events'

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
    principalId: identity.outputs.principalId
  }
}

module storage 'core/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'streimager${token}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
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
    principalId: identity.outputs.principalId
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
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
      ARM_ENDPOINT: environment().resourceManager
      COMPUTE_API_VERSION: computeApiVersion
      ARM_TIMEOUT_SECONDS: string(armTimeoutSeconds)
      ALLOWED_SCOPES: join(allowedScopes, ',')
      DEFAULT_SUBSCRIPTION_ID: defaultSubscriptionId
      PROTECT_TAG: protectTag
      MAX_INSTANCES_PER_REQUEST: string(maxInstancesPerRequest)
      COOLDOWN_MINUTES: string(cooldownMinutes)
      POLL_MIN_SECONDS: string(pollMinSeconds)
      POLL_MAX_SECONDS: string(pollMaxSeconds)
      POLL_DEFAULT_SECONDS: string(pollDefaultSeconds)
      OPERATION_TIMEOUT_MINUTES: string(operationTimeoutMinutes)
      SUBMIT_TIMEOUT_SECONDS: string(submitTimeoutSeconds)
      POLLS_PER_GENERATION: string(pollsPerGeneration)
      REQUESTS_QUEUE: requestsQueue
      EVENTS_TOPIC: eventsTopic
      ServiceBusConnection__fullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
      ServiceBusConnection__credential: 'managedidentity'
      ServiceBusConnection__clientId: identity.outputs.clientId
      AZURE_CLIENT_ID: identity.outputs.clientId
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

output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = rg.name
output FUNCTION_APP_NAME string = api.outputs.name
output SERVICEBUS_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output REIMAGER_IDENTITY_CLIENT_ID string = identity.outputs.clientId
