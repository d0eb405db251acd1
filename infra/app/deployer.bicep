// The object id of whoever runs the deployment (a user, or a pipeline's service principal).
// deployer() is a Bicep function (Bicep 0.32+). checkov's pinned Bicep parser (pycep-parser
// 0.5.1) does not know it and would skip the whole file that calls it, so the call lives alone
// here, with nothing to lint; infra/.checkov.yaml skips exactly this file.
targetScope = 'subscription'

output objectId string = deployer().objectId
