"""Chat replies: what to say, in Slack's and in Teams' format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    """What to say, and whether the whole channel sees it (actions) or only the caller (help, errors)."""

    text: str
    public: bool = False


_SLACK_SECTION_MAX = 3000  # a section block's text (Slack Block Kit)


def _escape(text: str) -> str:
    # Slack mrkdwn and Teams both treat <...> as markup; user text must not become a link or a mention.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(reply: Reply) -> dict[str, Any]:
    """A slash-command response: https://api.slack.com/interactivity/slash-commands#responding_to_commands."""
    text = _escape(reply.text)
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": chunk}}
              for chunk in _chunks(text, _SLACK_SECTION_MAX)][:50]
    return {"response_type": "in_channel" if reply.public else "ephemeral", "text": text[:_SLACK_SECTION_MAX],
            "blocks": blocks}


def teams_message(reply: Reply) -> dict[str, Any]:
    """An outgoing-webhook response: a Bot Framework message activity."""
    return {"type": "message", "text": _escape(reply.text)}


def _chunks(text: str, size: int) -> list[str]:
    lines, out, current = text.split("\n"), [], ""
    for line in lines:
        while len(line) > size:
            out.append(line[:size])
            line = line[size:]
        if current and len(current) + 1 + len(line) > size:
            out.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current or not out:
        out.append(current or " ")
    return out


def describe(view: dict[str, Any]) -> str:
    """One operation's status document as a chat line."""
    parts = [f"`{view.get('operationId')}` *{view.get('status')}* {view.get('target')}"]
    if view.get("instanceIds"):
        parts.append(f"instances {', '.join(view['instanceIds'])}")
    if view.get("requestedBy"):
        parts.append(f"by {view['requestedBy']} ({view.get('requestedByVerified') or 'unverified'})")
    if view.get("createdTime"):
        parts.append(f"at {view['createdTime']}")
    if view.get("health"):
        parts.append(f"health {view['health']}")
    error = view.get("error")
    if isinstance(error, dict) and error.get("code"):
        parts.append(f"error {error['code']}: {error.get('message', '')}")
    return " · ".join(str(p) for p in parts)
