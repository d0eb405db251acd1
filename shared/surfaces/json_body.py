"""Request bodies as JSON, refusing what json.loads would accept but should not reach the app."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from shared.domain.errors import ErrorCode, ReimagerError

MAX_BODY_BYTES = 256 * 1024


MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique: with a repeated key, which value counts would be a guess."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects, found without recursion (brackets in strings do not count)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(_DEPTH_STEP[c] for c in brackets), default=0)


def parse_json(body: bytes) -> Any:
    """The body as JSON, refusing what json.loads would accept but should not reach the app.

    Nesting is bounded before parsing, so neither json.loads nor pydantic ever recurses deeply (a
    RecursionError is a 500); NaN/Infinity, repeated keys and lone surrogates are refused.
    """
    if len(body) > MAX_BODY_BYTES:
        raise ReimagerError(ErrorCode.PAYLOAD_TOO_LARGE, f"The body is larger than {MAX_BODY_BYTES} bytes.")
    if not body:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ReimagerError(ErrorCode.INVALID_REQUEST, "The body is not valid UTF-8 JSON.") from None
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise ReimagerError(ErrorCode.INVALID_REQUEST, f"The body is nested deeper than {MAX_JSON_DEPTH} levels.")
    try:
        doc = json.loads(text, object_pairs_hook=_object, parse_constant=_refuse_constant)
        json.dumps(doc, ensure_ascii=False).encode("utf-8")  # a lone surrogate ("\ud800") cannot be UTF-8
    except _DuplicateKey as exc:
        shown = exc.key if len(exc.key) <= 64 else exc.key[:61] + "..."
        raise ReimagerError(ErrorCode.INVALID_REQUEST, f"The body has the key {shown!r} more than once in one "
                            "object.") from None
    except json.JSONDecodeError as exc:
        raise ReimagerError(ErrorCode.INVALID_REQUEST, f"The body is not valid JSON: {exc.msg} at line {exc.lineno} "
                            f"column {exc.colno}.") from None
    except _NotJson as exc:
        raise ReimagerError(ErrorCode.INVALID_REQUEST, f"The body is not valid JSON: {exc}.") from None
    except UnicodeEncodeError:
        raise ReimagerError(ErrorCode.INVALID_REQUEST, "The body is not valid JSON text: a \\u escape names a lone "
                            "surrogate, which is not a character.") from None
    except ValueError:  # for example an integer with thousands of digits
        raise ReimagerError(ErrorCode.INVALID_REQUEST, "The body is not valid JSON: a value in it is out of range.") \
            from None
    return doc
