"""shared/surfaces/json_body.py: request bodies are strict JSON, at most 64 levels deep, and every refusal is a
400 with a reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.errors import ReimagerError
from shared.surfaces.http import http_status
from shared.surfaces.json_body import parse_json


def _nested(shape: str, depth: int) -> bytes:
    if shape == "array":
        return b"[" * depth + b"]" * depth
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"a":[' * (depth // 2) + b"1" + b"]}" * (depth // 2)  # mixed


@pytest.mark.parametrize("shape", ["array", "object", "mixed"])
def test_a_120_kb_nested_body_is_a_400_not_a_recursion_error(shape: str) -> None:
    body = _nested(shape, 120 * 1024 // {"array": 2, "object": 6, "mixed": 4}[shape])
    assert 100 * 1024 < len(body) < 256 * 1024
    with pytest.raises(ReimagerError) as info:
        parse_json(body)
    assert http_status(info.value) == 400 and info.value.code == "InvalidRequest"
    assert "nested deeper than 64" in info.value.error.message


@pytest.mark.parametrize("shape", ["array", "object"])
def test_depth_64_parses_and_65_is_refused(shape: str) -> None:
    assert parse_json(_nested(shape, 64)) is not None
    with pytest.raises(ReimagerError, match="nested deeper than 64"):
        parse_json(_nested(shape, 65))


def test_brackets_inside_strings_do_not_count() -> None:
    deep_text = "[" * 5000 + '\\"{' * 100 + "}" * 5000
    doc = parse_json(json.dumps({"reason": deep_text, "x": ["\\", "\"[[["]}).encode())
    assert doc["reason"] == deep_text
    with pytest.raises(ReimagerError, match="nested deeper than 64"):  # an escaped quote does not end a string
        parse_json(b'{"a": "\\"", "b": ' + b"[" * 70 + b"]" * 70 + b"}")


@pytest.mark.parametrize("raw", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b"[NaN]"])
def test_non_json_constants_are_refused(raw: bytes) -> None:
    with pytest.raises(ReimagerError) as info:
        parse_json(raw)
    assert http_status(info.value) == 400


def test_lone_surrogates_and_huge_numbers_are_refused_with_a_reason() -> None:
    assert parse_json(b'{"reason": "\\ud83d\\ude00"}') == {"reason": "\U0001f600"}  # a pair is one character
    for raw, words in ((b'{"reason": "\\ud800"}', "lone surrogate"), (b'{"reason": "x\\udfff"}', "lone surrogate"),
                       (b'{"instanceIds": [' + b"9" * 5000 + b"]}", "out of range"),
                       (b'{"target": "x",}', "line 1 column"), (b"\xff", "UTF-8")):
        with pytest.raises(ReimagerError) as info:
            parse_json(raw)
        assert http_status(info.value) == 400 and words in info.value.error.message, info.value.error.message


def test_duplicate_keys_are_refused_not_last_one_wins() -> None:
    with pytest.raises(ReimagerError) as info:
        parse_json(b'{"target": "x", "dryRun": true, "dryRun": false}')
    assert http_status(info.value) == 400 and "dryRun" in info.value.error.message
    with pytest.raises(ReimagerError):
        parse_json(b'{"data": {"customProperties": {"reimage.dryRun": "true", "reimage.dryRun": "false"}}}')


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(['[', ']', '{', '}', '"', '\\', ',', ':', '1', '"a":', ' ', 'x', 'é']),
                max_size=400), st.integers(0, 3000))
def test_any_bracket_soup_is_parsed_or_a_400(tokens: list[str], depth: int) -> None:
    body = ("[" * depth + "".join(tokens) + "]" * depth).encode()
    try:
        parse_json(body)
    except ReimagerError as exc:
        assert http_status(exc) == 400
