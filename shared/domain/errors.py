"""Errors in ARM's shape: {"error": {"code", "message", "target", "details": [...]}}."""

from __future__ import annotations

import difflib
import types
import typing
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    pass


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


class ReimagerError(Exception):
    """A decision to refuse or fail a request, carrying its HTTP status and ARM-style body.

    `transient` means a retry later may succeed (throttling, ARM unavailable).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        target: str | None = None,
        details: list[ErrorDetail] | None = None,
        retry_after: int | None = None,
        transient: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.error = ApiError(code=code, message=message, target=target, details=details or [])
        self.retry_after = retry_after
        self.transient = transient
        self.extra = extra or {}

    @property
    def code(self) -> str:
        return self.error.code

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
                details.append(ErrorDetail(code="InvalidValue", message=message,
                                           target=_loc_to_path((*loc, field))))
            continue
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            msg = _unknown_field_message(model, loc)
        details.append(ErrorDetail(code=_code_for(err["type"]), message=msg, target=_loc_to_path(loc) or None))
    return details


def _code_for(pydantic_type: str) -> str:
    if pydantic_type == "extra_forbidden":
        return "UnknownField"
    if pydantic_type == "missing":
        return "MissingField"
    return "InvalidValue"


def invalid_request(exc: ValidationError, message: str = "The request is not valid.",
                    model: type[BaseModel] | None = None) -> ReimagerError:
    details = details_from_validation(exc, model)
    target = details[0].target if len(details) == 1 else None
    return ReimagerError(400, "InvalidRequest", message, target=target, details=details)


class ComputeError(ReimagerError):
    """ARM refused or failed a call. Carries ARM's status, code, message and target."""

    def __init__(self, status: int, code: str, message: str, *, arm_status: int, arm_code: str | None,
                 arm_message: str | None, arm_target: str | None = None, retry_after: int | None = None,
                 transient: bool = False) -> None:
        detail = ErrorDetail(code=arm_code or f"Http{arm_status}", message=arm_message or "", target=arm_target)
        super().__init__(status, code, message, target=arm_target, details=[detail], retry_after=retry_after,
                         transient=transient)
        self.arm_status, self.arm_code, self.arm_message = arm_status, arm_code, arm_message
        self.arm_target = arm_target


class TargetNotFound(ComputeError):
    pass


class ComputeConflict(ComputeError):
    pass


class ComputeUnavailable(ComputeError):
    pass


class ComputeThrottled(ComputeUnavailable):
    pass


class UntrustedOperationUrl(ReimagerError):
    def __init__(self, url: str) -> None:
        host = urlsplit(url).netloc or "(none)"
        super().__init__(502, "UntrustedOperationUrl",
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
            return cls(error.status, error.code, error.error.message, arm_status=error.arm_status,
                       arm_code=error.arm_code, arm_message=error.arm_message, arm_target=error.arm_target,
                       retry_after=error.retry_after, transient=error.transient)
        return cls(error.status, error.code, f"{what}: {error.error.message}", arm_status=0, arm_code=error.code,
                   arm_message=error.error.message, transient=error.transient)
