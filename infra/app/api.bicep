// The Function App on the Flex Consumption plan, Python 3.11, running as the user-assigned identity.
param name string
param planName string
param location string
param tags object = {}
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainer string
param appInsightsConnectionString string
@description('reimager settings (shared/settings.py), already as strings')
param appSettings object

@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@allowed([2048, 4096])
param instanceMemoryMB int = 2048

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy is regional; enable it where the region offers it
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: { reserved: true }
}

var hostSettings = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // The worker continues the host's trace context (host.json telemetryMode: OpenTelemetry);
  // shared/adapters/telemetry.py configures the exporter itself.
  PYTHON_ENABLE_OPENTELEMETRY: 'true'
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Azure Monitor action groups and chatops bots call in over the internet; function keys guard every route
  // checkov:skip=CKV_AZURE_17: action group webhooks cannot present client certificates
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero; Service Bus and Durable Functions carry work across instances
  // checkov:skip=CKV_AZURE_213: Functions on Flex Consumption have no App Service health-check path
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: { name: 'python', version: '3.11' }
    }
  }

  resource settings 'config' = {
    // This is the appsettings config, not a web config: the checks below read it as one.
    // checkov:skip=CKV_AZURE_63: logs go to Application Insights, not App Service HTTP logs
    // checkov:skip=CKV_AZURE_65: same: detailed errors are in Application Insights
    // checkov:skip=CKV_AZURE_66: same: failed-request tracing is in Application Insights
    // checkov:skip=CKV_AZURE_80: a Python app has no .NET Framework version
    // checkov:skip=CKV_AZURE_13: callers authenticate with function keys (action groups cannot do Easy Auth)
    // checkov:skip=CKV_AZURE_88: Flex Consumption deploys from blob storage, not Azure Files
    // checkov:skip=CKV_AZURE_222: see the site: the endpoints are public by design
    name: 'appsettings'
    properties: union(hostSettings, appSettings)
  }
}

resource basicAuthFtp 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: app
  name: 'ftp'
  properties: { allow: false }
}

resource basicAuthScm 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: app
  name: 'scm'
  properties: { allow: false }
}

output name string = app.name
output uri string = 'https://${app.properties.defaultHostName}'
