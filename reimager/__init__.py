"""`reimager`: the operators' command line for the reimager Function App (docs/cli.md).

It talks only to the app's public HTTP API (docs/openapi.yaml), as any client would: it never imports the
app's own packages. `client` is the HTTP API, `render` what a person sees, `app` the commands.
"""
