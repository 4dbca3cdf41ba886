"""The worker protocol, versioned: the job a sweep sends a worker (one JSON object on stdin) and the events the
worker sends back (one JSON object per line on stdout), each stamped with VERSION and checked on arrival.

A worker from another install of sparsebench (another VERSION) is refused with one clear line instead of being
misread; a line that is no event (a library writing to stdout despite the redirect) is skipped.
"""

from __future__ import annotations

import json
import math
from typing import Any

VERSION = 2  # 2: a case's pattern parameters as a JSON object (name -> integer), no longer 'k=v;k=v' text
KEY = "protocol"

# event name -> the fields it must carry
EVENTS: dict[str, tuple[str, ...]] = {
    "ready": ("start_s",),  # after imports
    "ceilings": ("values",),  # when the job asks for the device's ceilings (before any case)
    "start": ("index",),  # before case `index`
    "result": ("index", "measurement"),  # after case `index` (a results.Measurement as a dict)
}


class ProtocolError(ValueError):
    """A message of another protocol version, or one without the fields its kind needs."""


def job(**fields: Any) -> str:
    """The job for a worker as the JSON text to send."""
    return json.dumps({KEY: VERSION, **fields})


def read_job(text: str) -> dict[str, Any]:
    """The job a worker was sent; ProtocolError when it was written for another protocol version."""
    message = json.loads(text)
    if not isinstance(message, dict) or message.get(KEY) != VERSION:
        got = message.get(KEY) if isinstance(message, dict) else None
        raise ProtocolError(f"sparsebench worker speaks protocol {VERSION}, the job was written for {got}: the "
                            "sweep and its workers come from different installs of sparsebench")
    return message


def event(name: str, **fields: Any) -> str:
    """One event line (NaN as null: JSON has no NaN)."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in fields.items()}
    return json.dumps({KEY: VERSION, "event": name, **clean}) + "\n"


def read_event(line: str) -> dict[str, Any] | None:
    """The event of one line from a worker; None for a line that is no event; ProtocolError for an event of
    another protocol version or without its fields."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or "event" not in message:
        return None
    if message.get(KEY) != VERSION:
        raise ProtocolError(f"a worker answered in protocol {message.get(KEY)}, this sweep speaks {VERSION}: the "
                            "sweep and its workers come from different installs of sparsebench")
    missing = [f for f in EVENTS.get(message["event"], ()) if f not in message]
    if message["event"] not in EVENTS or missing:
        raise ProtocolError(f"a worker sent a malformed {message['event']!r} event (missing: "
                            f"{', '.join(missing) or 'a known kind'})")
    return message
