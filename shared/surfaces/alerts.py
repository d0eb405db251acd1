"""Azure Monitor common alert schema -> reimage requests.

The schema's shape is parsed leniently (type drift between Azure's samples is normal), the reimage
options strictly: an option that is mistyped, mis-cased or has a value that is not exactly valid
refuses the whole alert, because ignoring it could turn an intended dry run into a real reimage.

Only Fired alerts act; only VM, scale-set and scale-set-instance targets act. Events that a reimage
itself causes are ignored, because acting on them would loop: Resource Health events a user (or a
reimage) initiated, and Activity Log events of a reimage operation. Every target that does not act
is listed with the reason.
"""

from __future__ import annotations

import asyncio
import difflib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from shared import runtime
from shared.domain.errors import DetailCode, ErrorCode, ErrorDetail, ReimagerError
from shared.domain.ids import group_id, operation_id
from shared.domain.records import ApprovalGroup
from shared.domain.targets import Target, TargetError, TargetKind, parse_target
from shared.surfaces import responses
from shared.surfaces.http import Outcome, answer, guarded
from shared.surfaces.json_body import parse_json
from shared.surfaces.requests import submit_request
from shared.workflow import approvals
from shared.workflow.intake import Result

SCHEMA_ID = "azureMonitorCommonAlertSchema"
OPTION_PREFIX = "reimage."
BOOL_OPTIONS = ("dryRun", "tempDisk", "forceUpdateOSDiskForEphemeral", "allInstances")
TEXT_OPTIONS = ("exactVersion", "captureEvidence")
EVIDENCE_MODES = ("off", "bootdiagnostics", "snapshot")
VALID_KEYS = tuple(OPTION_PREFIX + name for name in (*BOOL_OPTIONS, *TEXT_OPTIONS))
_EXACT_VERSION = re.compile(r"[0-9]{1,10}(\.[0-9]{1,10}){0,3}")
# The Activity Log operations of a reimage (ARM's operation names, compared after case folding).
REIMAGE_OPERATIONS = frozenset(
    f"microsoft.compute/{resource}/{action}/action"
    for resource, actions in (
        ("virtualmachines", ("reimage",)),
        ("virtualmachinescalesets", ("reimage", "reimageall")),
        ("virtualmachinescalesets/virtualmachines", ("reimage", "reimageall")),
    )
    for action in actions
)


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


def _fold(value: Any) -> str:
    """Compatibility-normalised, accents dropped, case-folded, and only letters and digits kept.

    "Reimage_DryRun", "reimage:dryRun", " REIMAGE.DRYRUN" and its full-width form all fold to
    "reimagedryrun"; used to recognise what was meant, never to accept it.
    """
    text = unicodedata.normalize("NFKD", str(value if value is not None else ""))
    return "".join(c for c in text.casefold() if c.isalnum() and not unicodedata.combining(c))


_OPTION_WORDS = tuple(_fold(name) for name in (*BOOL_OPTIONS, *TEXT_OPTIONS, "whatIf"))
_LOOK_ALIKES = (_fold(OPTION_PREFIX), *_OPTION_WORDS, *(_fold(OPTION_PREFIX) + w for w in _OPTION_WORDS))


def _looks_like_option(key: str) -> bool:
    """True for a key that a person probably meant as a reimage option (a variant, a typo, no prefix)."""
    folded = _fold(key)
    if not folded:
        return False
    if "reimage" in folded or any(word in folded for word in _OPTION_WORDS):
        return True
    # A typo: one or two characters off (mostly equal, nearly as long), e.g. "dryRn", "reimgae.dryRun".
    return any(abs(len(folded) - len(known)) <= 1 and difflib.SequenceMatcher(None, folded, known).ratio() >= 0.8
               for known in _LOOK_ALIKES)


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"customProperties {key} must be true or false (a boolean, or the string \"true\" or "
                     "\"false\" in any case)")


def _as_version(key: str, value: Any) -> str:
    if isinstance(value, str) and _EXACT_VERSION.fullmatch(value):
        return value
    raise ValueError(f"customProperties {key} must be 1-4 dot-separated non-negative integers, such as 10.0.14393.0")


def _as_mode(key: str, value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in EVIDENCE_MODES:
        return value.strip().lower()
    raise ValueError(f"customProperties {key} must be one of {', '.join(EVIDENCE_MODES)}")


def _options(custom: Any) -> dict[str, Any]:
    """The reimage options in customProperties. Anything that looks like one but is not exactly valid refuses
    the alert, naming the key and listing the valid keys: a silently ignored "reimage.dryrun" would reimage."""
    if custom is None:
        return {}
    if not isinstance(custom, dict):
        raise ReimagerError(ErrorCode.INVALID_REQUEST, f"data.customProperties must be a JSON object (or null), not "
                            f"a {type(custom).__name__}; reimage options are keys such as {VALID_KEYS[0]}.",
                            target="data.customProperties")
    options: dict[str, Any] = {}
    problems = []
    for key, value in custom.items():
        try:
            if key in VALID_KEYS:
                name = key[len(OPTION_PREFIX):]
                options[name] = (_as_bool(key, value) if name in BOOL_OPTIONS else _as_mode(key, value)
                                 if name == "captureEvidence" else _as_version(key, value))
            elif _looks_like_option(key):
                shown = key if len(key) <= 80 else key[:77] + "..."
                raise ValueError(f"customProperties key {shown!r} looks like a reimage option but is not one; "
                                 f"the valid keys are exactly (case-sensitive): {', '.join(VALID_KEYS)}")
        except ValueError as exc:
            problems.append(ErrorDetail(code=DetailCode.INVALID_VALUE, message=str(exc),
                                        target=f"data.customProperties.{key}"))
    if problems:
        raise ReimagerError(ErrorCode.INVALID_REQUEST, "The alert's reimage options are not valid, so it was not "
                            "acted on.", target=problems[0].target if len(problems) == 1 else None, details=problems)
    return options


def _essentials(doc: Any) -> tuple[dict[str, Any], dict[str, Any], str, list[Any]]:
    """data, data.essentials, the alertId and the alertTargetIDs of a common-schema alert; 400 otherwise."""
    def bad(message: str, target: str) -> ReimagerError:
        return ReimagerError(ErrorCode.INVALID_REQUEST, message, target=target)

    if not isinstance(doc, dict) or str(doc.get("schemaId", "")) != SCHEMA_ID:
        raise bad(f"The body is not an Azure Monitor alert in the common schema (schemaId {SCHEMA_ID}); enable the "
                  "common alert schema on the action.", "schemaId")
    data = doc.get("data")
    essentials = data.get("essentials") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(essentials, dict):
        raise bad("The alert has no data.essentials.", "data.essentials")
    alert_id = essentials.get("alertId")
    if not isinstance(alert_id, str) or not alert_id.strip():
        raise bad("The alert has no alertId.", "data.essentials.alertId")
    targets = essentials.get("alertTargetIDs") or []
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list):
        raise bad("alertTargetIDs must be a list.", "data.essentials.alertTargetIDs")
    return data, essentials, alert_id, targets


def _why_not_act(data: dict[str, Any], essentials: dict[str, Any]) -> str | None:
    """Why none of the alert's targets acts (not Fired; an event a reimage itself causes), or None."""
    condition = str(essentials.get("monitorCondition") or "")
    if condition.lower() != "fired":
        return f"monitorCondition is {condition or 'missing'}; only Fired alerts act"
    if _user_initiated_health_event(essentials, data.get("alertContext")):
        return "Resource Health event caused by a user-initiated action (such as a reimage); acting would loop"
    if (operation := _reimage_operation(data.get("alertContext"), essentials.get("description"))) is not None:
        return (f"Activity Log event of a reimage ({operation}): a reimage, reimager's own writes included, "
                "never triggers another; acting would loop")
    return None


def parse_alert(doc: Any) -> ParsedAlert:
    data, essentials, alert_id, targets = _essentials(doc)
    parsed = ParsedAlert(alert_id=alert_id, rule=essentials.get("alertRule") if isinstance(
        essentials.get("alertRule"), str) else None)
    options = _options(data.get("customProperties"))
    skip_all = _why_not_act(data, essentials)
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
    service = _fold(essentials.get("monitoringService"))
    signal = _fold(essentials.get("signalType"))
    if "resourcehealth" not in service and "resourcehealth" not in signal:
        return False
    props = context.get("properties") if isinstance(context, dict) else None
    cause = props.get("cause") if isinstance(props, dict) else None
    return _fold(cause) == "userinitiated"


def _strings(value: Any) -> list[str]:
    """Every string value in a JSON document (iteratively: the body's nesting is already bounded)."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _reimage_operation(*parts: Any) -> str | None:
    """The reimage operation an event is about, if any string in it names one (any case or spacing).

    Activity Log alerts name it in operationName (a string, or {value, localizedValue}), authorization.action
    and properties.message; a log search alert over the AzureActivity table names it in a dimension
    (OperationNameValue, upper case) or its query. Ignoring too much is safe here; acting on one is a loop.
    """
    for text in (t for part in parts for t in _strings(part)):
        folded = "".join(unicodedata.normalize("NFKC", text).casefold().split())
        if "/reimage" in folded:
            found = [op for op in REIMAGE_OPERATIONS if op in folded]
            if found:
                return max(found, key=len)
    return None


def _reason(essentials: dict[str, Any]) -> str:
    parts = [str(essentials.get("alertRule") or "alert")]
    if essentials.get("severity"):
        parts.append(f"({essentials['severity']})")
    parts.append(f"{essentials.get('signalType') or 'signal'} alert fired")
    if essentials.get("firedDateTime"):
        parts.append(f"at {essentials['firedDateTime']}")
    return " ".join(parts)


async def open_group(parsed: ParsedAlert) -> ApprovalGroup | None:
    """An alert that would reimage more than MAX_TARGETS_PER_ALERT machines is held for approval as one decision:
    its group record first (a redelivery finds it), then every member names the group. A dry run reimages
    nothing, so it is never held."""
    rt = runtime.get()
    limit = rt.settings.max_targets_per_alert
    acting = [t for t in parsed.accepted if not t.request.get("dryRun")]
    if len(acting) <= limit:
        return None
    group = ApprovalGroup(group_id=group_id(f"alert|{parsed.alert_id}"), size=len(acting), reason=(
        f"the alert names {len(acting)} machines, more than MAX_TARGETS_PER_ALERT ({limit}); they are held as "
        "one decision: one approval releases them all, one rejection ends them all"))
    record = approvals.group_record(group, [operation_id(t.idempotency_key) for t in acting],
                                    target=acting[0].target.id, requested_by=acting[0].request.get("requestedBy"),
                                    runtime=rt)
    stored = await approvals.open_group(rt, record)
    return stored.approval_group or group


async def post_alert(body: bytes, client: Any, base_url: str) -> Outcome:
    """Azure Monitor action group webhook: 202 when anything acted, 200 when all was ignored.

    A transient failure on any target answers 503, so the action group retries; targets that were
    already accepted are found again by their key and not submitted twice.
    """
    group: ApprovalGroup | None = None

    async def one(target: Any) -> tuple[Any, Result | ReimagerError]:
        held = group if group is not None and not target.request.get("dryRun") else None
        try:
            return target, await submit_request(target.request, client, trigger="alert",
                                                default_key=target.idempotency_key,
                                                group=held.model_copy(update={"members": None}) if held else None)
        except ReimagerError as exc:
            return target, exc

    async def work() -> Outcome:
        nonlocal group
        parsed = parse_alert(parse_json(body))
        group = await open_group(parsed)
        results = await asyncio.gather(*(one(t) for t in parsed.accepted))
        accepted: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        transient: ReimagerError | None = None
        for target, result in results:
            if isinstance(result, ReimagerError) and result.code is ErrorCode.AUTOMATIC_REPAIRS_ACTIVE:
                # Azure's own repairs look after this set: the alert is theirs (docs/operations.md "Automatic repairs")
                parsed.ignored.append({"target": target.target.id, "reason": result.error.message})
            elif isinstance(result, ReimagerError):
                if result.transient and "operationId" not in result.extra:
                    transient = result
                entry: dict[str, Any] = {"target": target.target.id, "error": result.body()["error"]}
                if "operationId" in result.extra:
                    entry["operationId"] = result.extra["operationId"]
                refused.append(entry)
            else:
                out = answer(result, base_url).body
                shown = ("operationId", "status", "statusUrl", "dryRun", "passed", "plan", "checks", "calls",
                         "duplicate", *(("error", "freeze") if out.get("status") == "AwaitingApproval" else ()))
                accepted.append({"target": target.target.id, **{k: out[k] for k in shown if k in out}})
        if transient is not None:
            raise transient
        doc: dict[str, Any] = {"alertId": parsed.alert_id, "accepted": accepted, "refused": refused,
                               "ignored": parsed.ignored}
        if group is not None:
            doc["approvalGroup"] = group.view()
        body_out = responses.AlertResult.model_validate(doc).body()
        return Outcome(202 if accepted else 200, body_out)

    return await guarded(work(), "alert")
