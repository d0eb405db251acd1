// The reimager workbook: operations, outcomes, durations, health, queue depth, batches, breaker
// suspensions and refusals, read from Application Insights. The queries live in workbook.json and
// use only the telemetry names in shared/adapters/telemetry.py (tests/unit/test_telemetry_workbook.py checks).
param location string
param tags object = {}

@description('Resource id of the Application Insights component the queries read')
param appInsightsId string

param displayName string = 'reimager operations'

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID; this one is stable per resource group and component.
  name: guid(resourceGroup().id, appInsightsId, 'reimager-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    version: 'Notebook/1.0'
    sourceId: appInsightsId
    serializedData: replace(loadTextContent('workbook.json'), '__APP_INSIGHTS_ID__', appInsightsId)
  }
}

output id string = workbook.id
