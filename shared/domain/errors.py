"""Errors in ARM's shape ({"error": {"code", "message", "target", "details": [...]}}), and the closed list of
codes reimager itself gives them.

A `ReimagerError` says what happened, by its code; it carries no HTTP status. Entry surfaces turn a code into
their caller's terms in one place each (shared/surfaces/http.py: HTTP status codes; chat: text; the queue:
a settlement), as azure-core maps wire codes to exception types in one place.
"""

from __future__ import annotations

import difflib
import types
import typing
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ErrorCode(StrEnum):
    """Every `error.code` reimager gives (ARM's own codes pass through in `details` and in terminal errors).
    docs/operations.md lists each one (a test compares the two)."""

    # A request refused before anything was stored or sent
    INVALID_REQUEST = "InvalidRequest"
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    MISSING_IDEMPOTENCY_KEY = "MissingIdempotencyKey"
    SIGNATURE_INVALID = "SignatureInvalid"
    SCOPE_NOT_ALLOWED = "ScopeNotAllowed"
    TARGET_PROTECTED = "TargetProtected"
    INSTANCE_PROTECTED = "InstanceProtected"
    TARGET_LOCKED = "TargetLocked"
    AUTOMATIC_REPAIRS_ACTIVE = "AutomaticRepairsActive"
    TARGET_NOT_FOUND = "TargetNotFound"
    OPERATION_NOT_FOUND = "OperationNotFound"
    REQUEST_ID_CONFLICT = "RequestIdConflict"
    NO_INSTANCES = "NoInstances"
    OPERATION_IN_PROGRESS = "OperationInProgress"
    TARGET_SUSPENDED = "TargetSuspended"
    COOLDOWN_ACTIVE = "CooldownActive"
    FLEET_BUDGET_EXHAUSTED = "FleetBudgetExhausted"
    GLOBAL_BUDGET_EXHAUSTED = "GlobalBudgetExhausted"
    # Operator actions refused
    NOT_AWAITING_APPROVAL = "NotAwaitingApproval"
    NOT_CANCELLABLE = "NotCancellable"
    NOT_SUSPENDED = "NotSuspended"
    SELF_APPROVAL_NOT_ALLOWED = "SelfApprovalNotAllowed"
    APPROVER_NOT_VERIFIED = "ApproverNotVerified"
    IDENTITIES_NOT_COMPARABLE = "IdentitiesNotComparable"
    # ARM refused, failed or could not be reached
    COMPUTE_ERROR = "ComputeError"
    COMPUTE_UNAVAILABLE = "ComputeUnavailable"
    SUBMISSION_UNCERTAIN = "SubmissionUncertain"
    UNTRUSTED_OPERATION_URL = "UntrustedOperationUrl"
    # Ours, transient or unexpected
    CLAIM_LOST = "ClaimLost"
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    INTERNAL_ERROR = "InternalError"
    # On waiting or terminal operations (the `error` of a status document or completion event)
    APPROVAL_REQUIRED = "ApprovalRequired"
    APPROVAL_REJECTED = "ApprovalRejected"
    APPROVAL_TIMED_OUT = "ApprovalTimedOut"
    CANCELED_BY_OPERATOR = "CanceledByOperator"
    QUEUE_EXPIRED = "QueueExpired"
    QUEUE_LOST = "QueueLost"
    BATCH_LOST = "BatchLost"
    NOTHING_TO_SEND = "NothingToSend"
    NOT_SUBMITTED = "NotSubmitted"
    SUBMISSION_LOST = "SubmissionLost"
    NO_OPERATION_URL = "NoOperationUrl"
    OPERATION_FAILED = "OperationFailed"
    OPERATION_CANCELED = "OperationCanceled"
    TIMED_OUT = "TimedOut"


class DetailCode(StrEnum):
    """The codes of `error.details[]` that reimager writes (ARM's own come through as ARM sent them)."""

    INVALID_VALUE = "InvalidValue"
    UNKNOWN_FIELD = "UnknownField"
    MISSING_FIELD = "MissingField"
    TOO_MANY_INSTANCES = "TooManyInstances"
    INSTANCE_NOT_FOUND = "InstanceNotFound"
    CONNECTION_FAILED = "ConnectionFailed"
    NO_RESPONSE = "NoResponse"
    INVALID_RESPONSE = "InvalidResponse"
    UNREADABLE_STATUS = "UnreadableStatus"


# A retry later may succeed: ARM throttled or unreachable, the ledger's storage failing, or a same-key request
# took the claim over.
TRANSIENT = frozenset({ErrorCode.COMPUTE_UNAVAILABLE, ErrorCode.CLAIM_LOST, ErrorCode.STORAGE_UNAVAILABLE})


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    target: str | None = None


class ApiError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    target: str | None = None
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ApiError
    rule: str | None = Field(None, description="An approval refused by four eyes: the rule that refused it "
                             "(verified, sameName, sameIdentity, notComparable, mixedScript)")


class ReimagerError(Exception):
    """A refusal or failure, with what the caller needs: an ARM-style body, a Retry-After, and `extra` fields
    for the answer (`operationId`; `completed` when the operation was accepted and has already ended, with its
    own event)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        target: str | None = None,
        details: list[ErrorDetail] | None = None,
        retry_after: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.error = ApiError(code=code, message=message, target=target, details=details or [])
        self.retry_after = retry_after
        self.extra = extra or {}

    @property
    def code(self) -> ErrorCode:
        return ErrorCode(self.error.code)

    @property
    def transient(self) -> bool:
        """A retry later may succeed (throttling, ARM unavailable, a claim taken over)."""
        return self.code in TRANSIENT

    def error_dict(self) -> dict[str, Any]:
        return self.error.model_dump(exclude_none=True)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error.model_dump(exclude_none=True)}
        out.update(self.extra)
        return out


class FieldErrors(ValueError):
    """Raised from a model validator for rules across fields, so that each detail still names its field.

    `problems` is a list of (camelCase field, message); the fields are relative to the model raising it.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + part
    return path


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The Pydantic models an annotation can hold (through Optional, unions and lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose field set applies at loc (the location of an unknown field's parent)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = next((f for name, f in current.model_fields.items() if part in (f.alias, name)), None)
        models = _models_in(field.annotation) if field is not None else []
        current = models[0] if models else None
    return current


def _unknown_field_message(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> str:
    name = str(loc[-1]) if loc else ""
    shown = name if len(name) <= 64 else name[:61] + "..."
    parent = _model_at(model, loc[:-1]) if model is not None else None
    if parent is None:
        return f"unknown field {shown!r}"
    allowed = [f.alias or n for n, f in parent.model_fields.items()]
    by_fold = {a.casefold(): a for a in allowed}
    close = difflib.get_close_matches(name.casefold(), list(by_fold), n=1, cutoff=0.75)
    hint = f"; did you mean {by_fold[close[0]]!r}?" if close else "."
    return f"unknown field {shown!r}{hint} Allowed fields: {', '.join(allowed)}"


def details_from_validation(exc: ValidationError, model: type[BaseModel] | None = None) -> list[ErrorDetail]:
    """One detail per Pydantic error, with camelCase field paths and never the input value.

    Rules across fields (FieldErrors) become one detail per field they name; an unknown field's
    detail lists the fields allowed where it was found.
    """
    details = []
    for err in exc.errors(include_input=False, include_url=False, include_context=True):
        loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldErrors):
            for field, message in cause.problems:
                details.append(ErrorDetail(code=DetailCode.INVALID_VALUE, message=message,
                                           target=_loc_to_path((*loc, field))))
            continue
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            msg = _unknown_field_message(model, loc)
        details.append(ErrorDetail(code=_code_for(err["type"]), message=msg, target=_loc_to_path(loc) or None))
    return details


def _code_for(pydantic_type: str) -> DetailCode:
    if pydantic_type == "extra_forbidden":
        return DetailCode.UNKNOWN_FIELD
    if pydantic_type == "missing":
        return DetailCode.MISSING_FIELD
    return DetailCode.INVALID_VALUE


def invalid_request(exc: ValidationError, message: str = "The request is not valid.",
                    model: type[BaseModel] | None = None) -> ReimagerError:
    details = details_from_validation(exc, model)
    target = details[0].target if len(details) == 1 else None
    return ReimagerError(ErrorCode.INVALID_REQUEST, message, target=target, details=details)


class ComputeError(ReimagerError):
    """ARM refused or failed a call. Carries ARM's status, code, message and target (also as `details[0]`)."""

    def __init__(self, code: ErrorCode, message: str, *, arm_status: int, arm_code: str | None,
                 arm_message: str | None, arm_target: str | None = None, retry_after: int | None = None) -> None:
        detail = ErrorDetail(code=arm_code or f"Http{arm_status}", message=arm_message or "", target=arm_target)
        super().__init__(code, message, target=arm_target, details=[detail], retry_after=retry_after)
        self.arm_status, self.arm_code, self.arm_message = arm_status, arm_code, arm_message
        self.arm_target = arm_target

    @property
    def maybe_applied(self) -> bool:
        """ARM answered 5xx or 408 to a write: it may have been applied before the answer went wrong."""
        return self.arm_status >= 500 or self.arm_status == 408


class TargetNotFound(ComputeError):
    pass


class ComputeConflict(ComputeError):
    pass


class ComputeUnavailable(ComputeError):
    """Nothing was applied: ARM throttled past our retries, or could not be reached."""


class ComputeThrottled(ComputeUnavailable):
    pass


class UntrustedOperationUrl(ReimagerError):
    def __init__(self, url: str) -> None:
        host = urlsplit(url).netloc or "(none)"
        super().__init__(ErrorCode.UNTRUSTED_OPERATION_URL,
                         f"ARM returned an operation URL on host '{host}', which is not the configured ARM "
                         "host; it was not fetched.")


class SubmissionUncertain(ComputeError):
    """The POST was sent but no answer came back: it may or may not have been applied."""


class InstanceViewUnavailable(ComputeError):
    """An instance-view read failed: ARM refused it or did not answer (after the usual GET retries), answered
    something that is not a view, or pointed the next page at another host (not fetched). Health is Unknown
    for this read; `transient` says whether a later read may do better."""

    @classmethod
    def from_error(cls, error: ReimagerError, what: str) -> InstanceViewUnavailable:
        if isinstance(error, ComputeError):
            return cls(error.code, error.error.message, arm_status=error.arm_status, arm_code=error.arm_code,
                       arm_message=error.arm_message, arm_target=error.arm_target, retry_after=error.retry_after)
        return cls(error.code, f"{what}: {error.error.message}", arm_status=0, arm_code=error.code,
                   arm_message=error.error.message)
