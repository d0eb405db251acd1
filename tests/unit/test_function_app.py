"""function_app registers every function under the names shared/ uses, and imports nothing heavy."""

import subprocess
import sys
from pathlib import Path

from devhost.host import function_index
from shared.workflow import orchestration as monitor

ROOT = Path(__file__).resolve().parents[2]


def test_functions_and_names() -> None:
    index = function_index()
    by_type = {e.name: e.trigger_type for e in index.entries.values()}
    assert by_type == {
        "reimage_submit": "httpTrigger", "reimage_status": "httpTrigger", "reimage_alert": "httpTrigger",
        "reimage_queue": "serviceBusTrigger",
        monitor.MONITOR: "orchestrationTrigger", monitor.POLL_ACTIVITY: "activityTrigger",
        monitor.FINISH_ACTIVITY: "activityTrigger", monitor.SUBMIT_ACTIVITY: "activityTrigger",
        monitor.HEALTH_ACTIVITY: "activityTrigger", "reimage_sweeper": "timerTrigger",
        "reimage_history": "httpTrigger", "chatops_slack": "httpTrigger", "chatops_teams": "httpTrigger",
        "reimage_cancel": "httpTrigger", "reimage_approve": "httpTrigger", "reimage_reject": "httpTrigger",
        "target_status": "httpTrigger", "target_resume": "httpTrigger",
    }
    http = sorted((e.route or "", e.methods, e.auth_level) for e in index.of_type("httpTrigger"))
    assert http == [("alerts", ["POST"], "FUNCTION"), ("chatops/slack", ["POST"], "FUNCTION"),
                    ("chatops/teams", ["POST"], "FUNCTION"), ("reimage", ["GET"], "FUNCTION"),
                    ("reimage", ["POST"], "FUNCTION"), ("reimage/{operationId}", ["GET"], "FUNCTION"),
                    ("reimage/{operationId}/approve", ["POST"], "FUNCTION"),
                    ("reimage/{operationId}/cancel", ["POST"], "FUNCTION"),
                    ("reimage/{operationId}/reject", ["POST"], "FUNCTION"),
                    ("targets", ["GET"], "FUNCTION"), ("targets/resume", ["POST"], "FUNCTION")]
    assert index.entries["reimage_queue"].queue_name == "%REQUESTS_QUEUE%"


def test_cold_import_loads_no_network_client_or_heavy_module() -> None:
    code = ("import sys, function_app; heavy = [m for m in ('azure.identity', 'azure.servicebus', 'azure.core', "
            "'pydantic_settings', 'azure.mgmt.compute', 'shared.adapters.arm.client') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
