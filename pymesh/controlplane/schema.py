"""Structural schemas: which fields an object may have, as the Kubernetes API
server enforces them before anything is stored.

The Istio kinds are checked against Istio's own CRD schemas
(:mod:`pymesh.controlplane.crds`, generated from istio/api
``kubernetes/customresourcedefinitions.gen.yaml`` by :func:`generate`):
an unknown field is an error naming its path, as ``kubectl apply``'s default
strict field validation reports it (``strict decoding error: unknown field
"spec.hostz"``), and the CRDs' ``maxItems``/``maxLength``/``maxProperties``
and types hold for every field, the ones pymesh models and the ones it only
carries (``connectionPool``, ``tls``...). ``status`` keeps unknown fields, as
the CRDs say (``x-kubernetes-preserve-unknown-fields``).

Service and Pod (core/v1) have schemas far larger than what pymesh reads, and
``kubectl get -o yaml`` output carries all of it, so their ``spec`` and
``status`` are *pruned* to the fields pymesh models (what a structural schema
does to unknown fields when strict validation is off) rather than refused.
``metadata`` is ObjectMeta for every kind, checked strictly; ``managedFields``
is dropped.

:func:`check` returns a new plain tree (dicts, lists, JSON scalars; nulls
dropped as the API server prunes them): aliases are materialised once here
(bounded by :mod:`pymesh.controlplane.yamlsafe`), and the copy is what the
control plane keeps and persists. Nothing unknown is ever stored.

Enums are compared case-insensitively: pymesh has always accepted
``resolution: dns`` for ``DNS`` (istiod's webhook-less CRD would not), and
refusing existing configuration is not what this check is for.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from pymesh.controlplane.errors import ValidationError

Schema = Mapping[str, Any]
# Kubernetes' TotalAnnotationSizeLimitB (apimachinery/pkg/api/validation/objectmeta.go).
MAX_ANNOTATIONS_BYTES = 256 * 1024

_DROP = object()

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
INT_OR_STR: Schema = {"x-kubernetes-int-or-string": True}
STR_MAP: Schema = {"type": "object", "additionalProperties": STR}
ANY: Schema = {"x-kubernetes-preserve-unknown-fields": True}


def obj(properties: Mapping[str, Schema], **extra: Any) -> Schema:
    return {"type": "object", "properties": dict(properties), **extra}


def arr(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


OBJECT_META: Schema = obj(
    {
        "name": STR,
        "generateName": STR,
        "namespace": STR,
        "selfLink": STR,
        "uid": STR,
        "resourceVersion": STR,
        "generation": INT,
        "creationTimestamp": STR,
        "deletionTimestamp": STR,
        "deletionGracePeriodSeconds": INT,
        "labels": STR_MAP,
        "annotations": STR_MAP,
        "ownerReferences": arr(
            obj(
                {
                    "apiVersion": STR,
                    "kind": STR,
                    "name": STR,
                    "uid": STR,
                    "controller": BOOL,
                    "blockOwnerDeletion": BOOL,
                }
            )
        ),
        "finalizers": arr(STR),
    }
)
# Never kept: server-side apply bookkeeping, often larger than the object itself.
PRUNED_META = ("managedFields",)

CONDITION: Schema = obj(
    {"type": STR, "status": STR, "lastProbeTime": STR, "lastTransitionTime": STR, "reason": STR, "message": STR}
)

# core/v1: the fields pymesh models (resources.parse_service / parse_pod) and prints (cli).
SERVICE: Schema = obj(
    {
        "spec": obj(
            {
                "type": STR,
                "selector": STR_MAP,
                "clusterIP": STR,
                "clusterIPs": arr(STR),
                "ports": arr(
                    obj(
                        {
                            "name": STR,
                            "port": INT,
                            "targetPort": INT_OR_STR,
                            "protocol": STR,
                            "appProtocol": STR,
                            "nodePort": INT,
                        }
                    )
                ),
                "publishNotReadyAddresses": BOOL,
                "externalName": STR,
                "externalIPs": arr(STR),
            }
        ),
        # A LoadBalancer's addresses: network gateways are found at them (pymesh.controlplane.networks).
        "status": obj({"loadBalancer": obj({"ingress": arr(obj({"ip": STR, "hostname": STR}))})}),
    }
)
POD: Schema = obj(
    {
        "spec": obj(
            {
                "serviceAccountName": STR,
                "hostname": STR,
                "subdomain": STR,
                "containers": arr(
                    obj(
                        {
                            "name": STR,
                            "image": STR,
                            "ports": arr(obj({"name": STR, "containerPort": INT, "protocol": STR})),
                        }
                    )
                ),
            }
        ),
        "status": obj({"phase": STR, "podIP": STR, "podIPs": arr(obj({"ip": STR})), "conditions": arr(CONDITION)}),
    }
)
CORE = {"Service": SERVICE, "Pod": POD}


def _fail(path: str, message: str) -> ValidationError:
    return ValidationError(message, field=path)


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}.get(
        type(value), type(value).__name__
    )


def _plain(value: Any, path: str) -> Any:
    """A copy of an unschema'd (preserved) subtree with JSON types only."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{path}[{k}]") for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise _fail(path, f"{_type_name(value)} cannot be part of a configuration object")


def _walk(value: Any, schema: Schema, path: str, strict: bool) -> Any:
    if value is None:
        return _DROP
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _fail(path, f"must be an integer or a string, not {_type_name(value)}")
        return value
    typ = schema.get("type")
    if typ == "object" or (typ is None and ("properties" in schema or "additionalProperties" in schema)):
        return _object(value, schema, path, strict)
    if typ == "array":
        if not isinstance(value, list):
            raise _fail(path, f"must be a list, not {_type_name(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise _fail(path, f"must have at most {schema['maxItems']} items, has {len(value)}")
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise _fail(path, f"must have at least {schema['minItems']} items")
        items = schema.get("items") or ANY
        out = []
        for i, v in enumerate(value):
            got = _walk(v, items, f"{path}[{i}]", strict)
            out.append(None if got is _DROP else got)
        return out
    if typ is None:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return _plain(value, path)
        if isinstance(value, (Mapping, list)):
            raise _fail(path, f"must be a scalar, not {_type_name(value)}")
        return _plain(value, path)
    if typ == "string":
        if not isinstance(value, str):
            raise _fail(path, f"must be a string, not {_type_name(value)} ({value!r}; quote it)")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise _fail(path, f"must be at most {schema['maxLength']} characters")
        enum = schema.get("enum")
        if enum and value.upper() not in {e.upper() for e in enum}:
            raise _fail(path, f"{value!r} is not one of {', '.join(enum)}")
        return value
    if typ == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, f"must be an integer, not {_type_name(value)} ({value!r})")
    elif typ == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(path, f"must be a number, not {_type_name(value)} ({value!r})")
    elif typ == "boolean":
        if not isinstance(value, bool):
            raise _fail(path, f"must be true or false, not {value!r}")
        return value
    if "minimum" in schema and value < schema["minimum"]:
        raise _fail(path, f"must be >= {schema['minimum']}, got {value}")
    if "maximum" in schema and value > schema["maximum"]:
        raise _fail(path, f"must be <= {schema['maximum']}, got {value}")
    return value


def _object(value: Any, schema: Schema, path: str, strict: bool) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be a mapping, not {_type_name(value)}")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        raise _fail(path, f"must have at most {schema['maxProperties']} entries, has {len(value)}")
    props: Mapping[str, Schema] = schema.get("properties") or {}
    extra: Schema | None = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    out: dict[str, Any] = {}
    for key, v in value.items():
        if not isinstance(key, str):
            raise _fail(f"{path}[{key}]", f"keys must be strings, not {_type_name(key)} (quote it)")
        if key in props:
            got = _walk(v, props[key], f"{path}.{key}" if path else key, strict)
        elif isinstance(extra, Mapping):
            got = _walk(v, extra, f"{path}[{key}]", strict)
        elif preserve:
            got = _plain(v, f"{path}.{key}" if path else key)
        elif strict:
            raise _fail(f"{path}.{key}" if path else key, "unknown field")
        else:
            continue  # pruned
        if got is not _DROP:
            out[key] = got
    return out


def check(doc: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The document as pymesh keeps it, or ValidationError naming the field."""
    from pymesh.controlplane.crds import ISTIO

    strict = kind in ISTIO
    body: Schema = ISTIO[kind] if strict else CORE[kind]
    parts: dict[str, Schema] = dict(body.get("properties", {}))
    top: dict[str, Schema] = {"apiVersion": STR, "kind": STR, "metadata": OBJECT_META}
    # Istio kinds: spec and status checked strictly in the same walk. Core kinds: any spec and
    # status pass the top-level walk and are pruned below (the module docstring says why).
    top.update(parts if strict else {"spec": ANY, "status": ANY})
    meta = doc.get("metadata")
    if isinstance(meta, Mapping) and any(k in meta for k in PRUNED_META):
        doc = {**doc, "metadata": {k: v for k, v in meta.items() if k not in PRUNED_META}}
    out = _object(doc, {"type": "object", "properties": top}, "", strict=True)
    if not strict:
        for part in ("spec", "status"):
            got = _walk(doc.get(part), parts[part], part, strict=False) if part in parts else _DROP
            if got is _DROP:
                out.pop(part, None)
            else:
                out[part] = got
    annotations = (out.get("metadata") or {}).get("annotations") or {}
    size = sum(len(k) + len(v) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        raise _fail("metadata.annotations", f"{size} bytes in all, more than Kubernetes' {MAX_ANNOTATIONS_BYTES}")
    return out


# --- generating pymesh/controlplane/crds.py ----------------------------------------------------

# What a structural check needs from an OpenAPI v3 schema; descriptions, CEL rules
# (x-kubernetes-validations, implemented where they matter by the parsers) and oneOf are left out.
_KEEP = (
    "type",
    "properties",
    "items",
    "additionalProperties",
    "maxItems",
    "minItems",
    "maxLength",
    "maxProperties",
    "minimum",
    "maximum",
    "enum",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
)
KINDS = (
    "WorkloadGroup",
    "WorkloadEntry",
    "ServiceEntry",
    "DestinationRule",
    "VirtualService",
    "PeerAuthentication",
    "Telemetry",
)


def _reduce(schema: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _KEEP:
        if key not in schema:
            continue
        value = schema[key]
        if key == "properties":
            value = {name: _reduce(s) for name, s in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            value = _reduce(value)
        out[key] = value
    return out


def generate(crd_yaml: str, source: str) -> str:
    """The text of crds.py from Istio's CRD file (every served version of a kind
    has the same schema, istio/api PR #3188; the first one is taken)."""
    import yaml

    schemas: dict[str, Any] = {}
    for doc in yaml.safe_load_all(crd_yaml):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        kind = doc["spec"]["names"]["kind"]
        if kind in KINDS:
            schemas[kind] = _reduce(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    missing = set(KINDS) - set(schemas)
    if missing:
        raise ValueError(f"no CRD for {', '.join(sorted(missing))}")
    body = json.dumps({k: schemas[k] for k in KINDS}, indent=4, sort_keys=True)
    body = body.replace(": true", ": True").replace(": false", ": False")
    return (
        f'"""Istio\'s CRD schemas for the kinds pymesh serves, reduced to what a structural check\n'
        f"reads (types, properties, items, sizes, enums). Generated from\n{source}\n"
        f"by ``python -m pymesh.controlplane.schema CRD-FILE SOURCE``: do not edit.\n"
        f'"""\n\nfrom typing import Any\n\nISTIO: dict[str, Any] = {body}\n'
    )


if __name__ == "__main__":
    sys.stdout.write(generate(open(sys.argv[1]).read(), sys.argv[2]))
