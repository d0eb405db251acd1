// Key Vault for the chatops signing secrets. RBAC mode (no access policies), soft delete and
// purge protection on. The app reads the secrets through Key Vault references in its app
// settings, resolved by the platform with the app's user-assigned identity.
param name string
param location string
param tags object = {}

@secure()
@description('Slack signing secret (SLACK_SIGNING_SECRET); empty: no secret is stored')
param slackSigningSecret string = ''

@secure()
@description('Teams outgoing-webhook security token (TEAMS_WEBHOOK_SECRET); empty: no secret is stored')
param teamsWebhookSecret string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: Flex Consumption without VNet integration resolves Key Vault references over the public endpoint; access is Entra ID + RBAC only
  // checkov:skip=CKV_AZURE_189: same reason: public network access stays on, data-plane access needs an RBAC role
  // checkov:skip=CKV2_AZURE_32: no private endpoint without VNet integration (see above)
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource slack 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(slackSigningSecret)) {
  // checkov:skip=CKV_AZURE_41: a signing secret is rotated by the chat platform, not on a Key Vault schedule
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'slack-signing-secret'
  properties: {
    value: slackSigningSecret
    contentType: 'text/plain'
  }
}

resource teams 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(teamsWebhookSecret)) {
  // checkov:skip=CKV_AZURE_41: a webhook token is rotated in Teams, not on a Key Vault schedule
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'teams-webhook-secret'
  properties: {
    value: teamsWebhookSecret
    contentType: 'text/plain'
  }
}

output name string = vault.name
output endpoint string = vault.properties.vaultUri
// App-setting values: a Key Vault reference to the latest version, or '' when no secret was given.
// The reference has no version, so a rotated secret is picked up without a redeploy.
output slackSigningSecretSetting string = empty(slackSigningSecret) ? '' : '@Microsoft.KeyVault(SecretUri=${slack.properties.secretUri})'
output teamsWebhookSecretSetting string = empty(teamsWebhookSecret) ? '' : '@Microsoft.KeyVault(SecretUri=${teams.properties.secretUri})'
