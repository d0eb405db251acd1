"""Azure Monitor common alert schema -> reimage requests, parsed leniently.

Only Fired alerts act; only VM, scale-set and scale-set-instance targets act; Resource Health
events a user (or a reimage) caused are ignored, because acting on them would loop. Every
target that does not act is listed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.errors import ErrorDetail, ReimagerError
from shared.targets import Target, TargetError, TargetKind, parse_target

SCHEMA_ID = "azureMonitorCommonAlertSchema"
OPTION_PREFIX = "reimage."
BOOL_OPTIONS = {"tempDisk", "forceUpdateOSDiskForEphemeral", "dryRun", "allInstances"}
TEXT_OPTIONS = {"exactVersion"}


@dataclass
class AlertTarget:
    target: Target
    idempotency_key: str
    request: dict[str, Any]


@dataclass
class ParsedAlert:
    alert_id: str
    rule: str | None
    accepted: list[AlertTarget] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)


def _norm(value: Any) -> str:
    return "".join(str(value or "").split()).lower()


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"customProperties {OPTION_PREFIX}{name} must be true or false")


def _options(custom: Any) -> dict[str, Any]:
    if not isinstance(custom, dict):
        return {}
    options: dict[str, Any] = {}
    problems = []
    for key, value in custom.items():
        if not isinstance(key, str) or not key.lower().startswith(OPTION_PREFIX):
            continue
        name = key[len(OPTION_PREFIX):]
        match = next((o for o in BOOL_OPTIONS | TEXT_OPTIONS if o.lower() == name.lower()), None)
        try:
            if match is None:
                raise ValueError(f"customProperties {key} is not a reimage option")
            options[match] = _as_bool(match, value) if match in BOOL_OPTIONS else str(value)
        except ValueError as exc:
            problems.append(ErrorDetail(code="InvalidValue", message=str(exc), target=f"customProperties.{key}"))
    if problems:
        raise ReimagerError(400, "InvalidRequest", "The alert's reimage options are not valid.", details=problems)
    return options


def parse_alert(doc: Any) -> ParsedAlert:
    if not isinstance(doc, dict) or str(doc.get("schemaId", "")) != SCHEMA_ID:
        raise ReimagerError(400, "InvalidRequest", f"The body is not an Azure Monitor alert in the common schema "
                            f"(schemaId {SCHEMA_ID}); enable the common alert schema on the action.",
                            target="schemaId")
    data = doc.get("data")
    essentials = data.get("essentials") if isinstance(data, dict) else None
    if not isinstance(essentials, dict):
        raise ReimagerError(400, "InvalidRequest", "The alert has no data.essentials.", target="data.essentials")
    alert_id = essentials.get("alertId")
    if not isinstance(alert_id, str) or not alert_id.strip():
        raise ReimagerError(400, "InvalidRequest", "The alert has no alertId.", target="data.essentials.alertId")
    targets = essentials.get("alertTargetIDs") or []
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list):
        raise ReimagerError(400, "InvalidRequest", "alertTargetIDs must be a list.",
                            target="data.essentials.alertTargetIDs")
    parsed = ParsedAlert(alert_id=alert_id, rule=essentials.get("alertRule") if isinstance(
        essentials.get("alertRule"), str) else None)
    options = _options(data.get("customProperties") if isinstance(data, dict) else None)
    condition = str(essentials.get("monitorCondition") or "")
    skip_all = None
    if condition.lower() != "fired":
        skip_all = f"monitorCondition is {condition or 'missing'}; only Fired alerts act"
    elif _user_initiated_health_event(essentials, data.get("alertContext") if isinstance(data, dict) else None):
        skip_all = "Resource Health event caused by a user-initiated action (such as a reimage); acting would loop"
    seen: set[str] = set()
    for raw in targets:
        raw_text = str(raw)
        if skip_all:
            parsed.ignored.append({"target": raw_text, "reason": skip_all})
            continue
        try:
            target = parse_target(raw_text)
        except TargetError as exc:
            parsed.ignored.append({"target": raw_text, "reason": str(exc)})
            continue
        if target.key in seen:
            continue
        seen.add(target.key)
        if target.kind is TargetKind.VMSS and not options.get("allInstances"):
            parsed.ignored.append({"target": target.id, "reason": "the alert names a whole scale set and no "
                                   "instance; set customProperties reimage.allInstances=true to reimage every "
                                   "instance"})
            continue
        request: dict[str, Any] = {"target": target.id, **{k: v for k, v in options.items()
                                                              if not (k == "allInstances" and target.kind
                                                                      is not TargetKind.VMSS)}}
        request["requestedBy"] = f"azure-monitor:{parsed.rule or 'alert'}"[:256]
        request["reason"] = _reason(essentials)[:256]
        request["correlationId"] = alert_id[-256:]
        parsed.accepted.append(AlertTarget(target, f"alert|{alert_id}|{target.key}", request))
    return parsed


def _user_initiated_health_event(essentials: dict[str, Any], context: Any) -> bool:
    service = _norm(essentials.get("monitoringService"))
    signal = _norm(essentials.get("signalType"))
    if "resourcehealth" not in service and "resourcehealth" not in signal:
        return False
    props = context.get("properties") if isinstance(context, dict) else None
    cause = props.get("cause") if isinstance(props, dict) else None
    return _norm(cause) == "userinitiated"


def _reason(essentials: dict[str, Any]) -> str:
    parts = [str(essentials.get("alertRule") or "alert")]
    if essentials.get("severity"):
        parts.append(f"({essentials['severity']})")
    parts.append(f"{essentials.get('signalType') or 'signal'} alert fired")
    if essentials.get("firedDateTime"):
        parts.append(f"at {essentials['firedDateTime']}")
    return " ".join(parts)
