"""Field validators shared by the resource parsers.

Each raises :class:`ValidationError` naming the field (a JSON path such as
``spec.ports[0].targetPort``); the loader adds the file and the object. The
rules follow Kubernetes apimachinery (``validation.IsDNS1123Label``,
``IsQualifiedName``, ``IsValidLabelValue``, ``IsValidPortName``) and istiod's
webhook (istio/istio ``pkg/config/validation/validation.go``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from pymesh.controlplane.errors import ValidationError
from pymesh.mesh.errors import ValueFormatError
from pymesh.mesh.values import go_duration

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# WorkloadEntry port-map keys: the CRD's regex (upper case allowed), < 63 chars.
PORT_KEY = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def fail(field: str, message: str) -> ValidationError:
    return ValidationError(message, field=field)


def mapping(value: Any, field: str, *, required: bool = False) -> Mapping[str, Any]:
    if value is None:
        if required:
            raise fail(field, "is required")
        return {}
    if not isinstance(value, Mapping):
        raise fail(field, f"must be a mapping, not {type(value).__name__}")
    return value


def sequence(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(field, f"must be a list, not {type(value).__name__}")
    return value


def string(value: Any, field: str, *, required: bool = False, max_len: int | None = None) -> str:
    if value is None or value == "":
        if required:
            raise fail(field, "is required")
        return ""
    if not isinstance(value, str):
        raise fail(field, f"must be a string, not {type(value).__name__}")
    if max_len is not None and len(value) > max_len:
        raise fail(field, f"must be at most {max_len} characters")
    return value


def integer(value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    # YAML booleans are ints in Python; a port of `true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(field, f"must be an integer, not {value!r}")
    if minimum is not None and value < minimum:
        raise fail(field, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise fail(field, f"must be <= {maximum}, got {value}")
    return value


def port(value: Any, field: str) -> int:
    return integer(value, field, minimum=1, maximum=65535)


def dns1123_label(value: str, field: str) -> str:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise fail(field, f"{value!r} is not a DNS-1123 label (lower-case alphanumerics and '-', at most 63)")
    return value


def dns1123_subdomain(value: str, field: str) -> str:
    if len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        raise fail(field, f"{value!r} is not a DNS-1123 subdomain")
    return value


def dns1035_label(value: str, field: str) -> str:
    if len(value) > 63 or not DNS1035_LABEL.match(value):
        raise fail(field, f"{value!r} is not a DNS-1035 label (must start with a letter)")
    return value


def iana_port_name(value: str, field: str) -> str:
    """Kubernetes ``IsValidPortName``: at most 15 characters, lower-case
    alphanumerics and '-', at least one letter, no '--'."""
    if len(value) > 15 or not IANA_SVC_NAME.match(value) or "--" in value or not any(c.isalpha() for c in value):
        raise fail(field, f"{value!r} is not a valid port name (IANA_SVC_NAME)")
    return value


def labels(value: Any, field: str) -> dict[str, str]:
    """Kubernetes label keys (optional DNS-subdomain prefix + qualified name)
    and values; numbers and booleans written unquoted in YAML are rejected
    as Kubernetes rejects them (labels are strings)."""
    out: dict[str, str] = {}
    for k, v in mapping(value, field).items():
        where = f"{field}[{k}]"
        if not isinstance(k, str) or not k:
            raise fail(where, "label key must be a non-empty string")
        prefix, _, name = k.rpartition("/")
        if prefix:
            dns1123_subdomain(prefix, where)
        if len(name) > 63 or not LABEL_NAME.match(name):
            raise fail(where, f"invalid label key {k!r}")
        if not isinstance(v, str):
            raise fail(where, f"label value must be a string, not {v!r} (quote it)")
        if len(v) > 63 or not LABEL_VALUE.match(v):
            raise fail(where, f"invalid label value {v!r}")
        out[k] = v
    return out


def annotation_map(value: Any, field: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in mapping(value, field).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise fail(f"{field}[{k}]", "annotation keys and values must be strings")
        out[k] = v
    return out


def ip(value: str, field: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise fail(field, f"{value!r} is not an IP address") from None


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def ip_or_cidr(value: str, field: str) -> str:
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        raise fail(field, f"{value!r} is not an IP address or CIDR") from None
    return value


def fqdn(value: str, field: str, *, wildcard: bool = False) -> str:
    """A DNS name (case-insensitive labels); ``*.`` prefix (or ``*`` alone)
    allowed when ``wildcard``."""
    name = value
    if wildcard and (name == "*" or name.startswith("*.")):
        name = name[2:]
        if not name:
            return value
    if "*" in name:
        raise fail(field, f"{value!r}: wildcards are only allowed as a leading '*.'" if wildcard else "no wildcards")
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name.lower().rstrip(".")):
        raise fail(field, f"{value!r} is not a valid host name")
    return value


def duration(value: Any, field: str) -> float:
    """A protobuf JSON duration (``"10s"``, ``"1.5s"``) or a Go duration
    (``"1m30s"``, ``"100ms"``), as Istio accepts both; returns seconds."""
    try:
        return go_duration(value)
    except ValueFormatError as e:
        raise fail(field, str(e)) from None


def one_of(value: Any, field: str, choices: tuple[str, ...], *, default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value.upper() not in choices:
        raise fail(field, f"{value!r} is not one of {', '.join(choices)}")
    return value.upper()
