"""Undo the Durable Functions payload encoding, one layer at a time.

Azure hands some durable values to Python as JSON *text* rather than as the value:
- a raised event's data reaches `wait_for_external_event` as a JSON string: the Python SDK's
  `raise_event` JSON-encodes the value and posts that text as JSON (two layers), and the
  extension strips only one (HttpApiHandler.HandleRaiseEventRequestAsync);
- `get_status(...).input_` is the JSON text of the input the client started the instance with;
- a raised *string* arrives quoted ("green" -> '"green"', azure-functions-durable-python#295).

`decode` peels those layers. It peels a layer only while the text parses to a JSON object, array
or string: a text such as "123" or "true" stays a string, because a caller that sent the string
"123" must not get the number 123 back. Values that are already decoded (dicts, lists, numbers,
None) pass through untouched, so the call is safe on a kind host and on Azure alike.
"""

from __future__ import annotations

import json
from typing import Any

_MAX_LAYERS = 4  # the deepest Azure nests is two; a bound keeps a hostile value from looping


def decode(value: object) -> Any:
    """The value behind `value`, with every JSON-text layer Azure added removed."""
    for _ in range(_MAX_LAYERS):
        if not isinstance(value, str):
            return value
        try:
            inner = json.loads(value)
        except ValueError:
            return value
        if not isinstance(inner, dict | list | str):
            return value  # "123", "true", "null": a string that merely looks like JSON
        value = inner
    return value
