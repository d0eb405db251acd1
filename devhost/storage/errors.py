"""Table Storage's error answers, in the shape azure-data-tables parses (`_error._decode_error`): a JSON body
`{"odata.error": {"code", "message": {"lang", "value"}}}` (nothing else in `odata.error`: the SDK gives up
parsing an unknown key) and the code again in `x-ms-error-code`. Codes, statuses and messages are those of
Microsoft's "Common REST API error codes" and "Table service error codes" pages (docs/fidelity.md, rows L4-L14)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web

MESSAGES = {
    "OperationTimedOut": (500, "The operation could not be completed within the permitted time."),
    "InternalError": (500, "The server encountered an internal error. Please retry the request."),
    "ServerBusy": (503, "The server is currently unable to receive requests. Please retry your request."),
    "EntityTooLarge": (400, "The entity is larger than the maximum size permitted."),
    "PropertyValueTooLarge": (400, "The property value is larger than the maximum size permitted."),
    "TooManyProperties": (400, "The entity contains more properties than allowed."),
    "PropertyNameTooLong": (400, "The property name exceeds the maximum allowed length."),
    "InvalidInput": (400, "One of the request inputs is not valid."),
}
JSON_TYPE = "application/json;odata=minimalmetadata;streaming=true;charset=utf-8"


def body(code: str, request_id: str, *, index: int | None = None) -> bytes:
    """The error document; inside a batch the message starts with the failing operation's index (`1:...`)."""
    text = MESSAGES[code][1]
    if index is not None:
        text = f"{index}:{text}"
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    value = f"{text}\nRequestId:{request_id}\nTime:{now}"
    return json.dumps({"odata.error": {"code": code, "message": {"lang": "en-US", "value": value}}},
                      separators=(",", ":")).encode()


def headers(code: str, request_id: str, version: str | None) -> dict[str, str]:
    out = {"x-ms-error-code": code, "x-ms-request-id": request_id, "Content-Type": JSON_TYPE,
           "Date": formatdate(usegmt=True), "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if version:
        out["x-ms-version"] = version
    return out


def response(code: str, version: str | None = None) -> web.Response:
    """A whole-request error, e.g. 503 ServerBusy or 400 EntityTooLarge."""
    request_id = str(uuid.uuid4())
    return web.Response(status=MESSAGES[code][0], body=body(code, request_id), headers=headers(code, request_id,
                                                                                                   version))


def batch_response(code: str, index: int, request_boundary: str, changeset_boundary: str,
                   version: str | None = None) -> web.Response:
    """A transaction refused at operation `index`: 202 Accepted, and in its changeset the failing operation's
    answer (as Azure and Azurite answer a $batch; azure-data-tables raises TableTransactionError from it)."""
    request_id = str(uuid.uuid4())
    status = MESSAGES[code][0]
    outer = "batchresponse_" + request_boundary.removeprefix("batch_")
    inner = "changesetresponse_" + changeset_boundary.removeprefix("changeset_")
    part = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-ID: {index + 1}\r\n"
            f"X-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\nDataServiceVersion: 3.0;\r\n"
            f"Content-Type: {JSON_TYPE}\r\n\r\n").encode() + body(code, request_id, index=index)
    text = (f"--{outer}\r\nContent-Type: multipart/mixed; boundary={inner}\r\n\r\n"
            f"--{inner}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n").encode()
    text += part + f"\r\n--{inner}--\r\n--{outer}--\r\n".encode()
    out = {"x-ms-request-id": request_id, "Content-Type": f"multipart/mixed; boundary={outer}",
           "Date": formatdate(usegmt=True)}
    if version:
        out["x-ms-version"] = version
    return web.Response(status=202, body=text, headers=out)
