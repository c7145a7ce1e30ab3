"""Setting values as Istio reads them: string booleans and durations.

Booleans: Istio's node metadata carries booleans as strings (``StringBool``
in istio/istio ``pkg/model/proxy.go``, parsed with Go's ``strconv.ParseBool``)
and so do the istio-iptables environment variables. One rule here for all of
them: true is ``1``, ``t``, ``true``, ``y``, ``yes`` or ``on`` in any case
(Go's true set, plus the shell-style words pymesh accepted before), a
Python ``True`` too; anything else is false.

Durations: Go's ``time.ParseDuration`` grammar (``1m30s``, ``100ms``,
``1.5h``), which Istio accepts beside protobuf JSON (``"10s"``); CLI flags and
``SECRET_TTL``-style settings also take a bare number of seconds and ``d``
(days) — an extension, off for Istio resources.
"""

from __future__ import annotations

import re
from typing import Any

from pymesh.mesh.errors import ValueFormatError

_TRUE = frozenset(("1", "t", "true", "y", "yes", "on"))

_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_DURATION = re.compile(r"^(\d+(\.\d+)?(h|ms|m|s|us|µs|ns))+$")
_EXT_DURATION = re.compile(r"^(\d+(\.\d+)?(d|h|ms|m|s|us|µs|ns))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(d|h|ms|m|s|us|µs|ns)")


def truthy(value: Any) -> bool:
    """The one string-boolean rule (see the module doc)."""
    if value is True:
        return True
    return isinstance(value, str) and value.strip().lower() in _TRUE


def bool_text(value: Any) -> str:
    """A metadata value as Istio writes a StringBool: ``"true"`` / ``"false"``."""
    return "true" if truthy(value) else "false"


def go_duration(text: Any) -> float:
    """A Go / protobuf-JSON duration (``"10s"``, ``"1m30s"``, ``"100ms"``) in
    seconds, as Istio's resources take them; ValueFormatError otherwise."""
    if not isinstance(text, str) or not _GO_DURATION.match(text):
        raise ValueFormatError(f"{text!r} is not a duration like '10s' or '100ms'")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))


def duration(text: Any) -> float:
    """A positive duration for flags and settings: a Go duration, ``d`` for
    days, or a bare number of seconds (``3600``, ``90s``, ``15m``, ``24h``,
    ``7d``, ``1h30m``)."""
    t = str(text).strip().lower()
    try:
        if _EXT_DURATION.match(t):
            v = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(t))
        else:
            v = float(t)
    except ValueError:
        raise ValueFormatError(f"duration {text!r}: expected seconds or a duration like 90s, 15m, 24h, 7d") from None
    if not v > 0 or v != v or v == float("inf"):
        raise ValueFormatError(f"duration {text!r} must be positive")
    return v
