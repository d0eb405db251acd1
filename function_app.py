"""Azure Functions entry point (v2 programming model): registers the blueprints in handlers/."""

import azure.durable_functions as df
import azure.functions as func

from handlers import BLUEPRINTS

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in BLUEPRINTS:
    app.register_functions(blueprint)
