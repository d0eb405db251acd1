"""Errors in ARM's shape: {"error": {"code", "message", "target", "details": [...]}}."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


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


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + part
    return path


def details_from_validation(exc: ValidationError) -> list[ErrorDetail]:
    """One detail per Pydantic error, with camelCase field paths and never the input value."""
    details = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        details.append(ErrorDetail(code=_code_for(err["type"]), message=msg, target=_loc_to_path(loc) or None))
    return details


def _code_for(pydantic_type: str) -> str:
    if pydantic_type == "extra_forbidden":
        return "UnknownField"
    if pydantic_type == "missing":
        return "MissingField"
    return "InvalidValue"


def invalid_request(exc: ValidationError, message: str = "The request is not valid.") -> ReimagerError:
    details = details_from_validation(exc)
    target = details[0].target if len(details) == 1 else None
    return ReimagerError(400, "InvalidRequest", message, target=target, details=details)
