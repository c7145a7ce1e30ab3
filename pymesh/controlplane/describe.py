"""``pymesh describe workloadentry NAME [-n NS]``: one WorkloadEntry, the services it is an
endpoint of and its endpoints as each connected proxy gets them, in the spirit of
``istioctl experimental describe`` (``istioctl/pkg/describe/describe.go``: the workload,
then what selects it, then what the proxies are sent).

Two sources, as ``pymesh get`` and ``pymesh proxy-status`` use them:

- the store (``--data-dir`` / ``--store``): the entry as configured or registered, with the
  connection annotations and the ``Healthy`` condition (the probe's last message), and the
  Services and ServiceEntries of its namespace whose selector its labels match (a Service's
  ``spec.selector``, a ServiceEntry's ``spec.workloadSelector.labels``, as istiod selects
  WorkloadEntries: ``pilot/pkg/serviceregistry/serviceentry/controller.go``);
- the control plane's JSON API (``--control-plane URL``, repeatable, else
  ``$PYMESH_CONTROL_PLANE``, else ``http://127.0.0.1:15014``; docs/dashboard-api.md):
  ``/api/v1/workloadentries`` (connection at each replica, health), ``/api/v1/services`` (the
  endpoints EDS carries for it, per service port), ``/api/v1/proxies`` of every replica
  asked (each proxy's EDS subscription and sync state) and ``/debug/status`` (the network
  gateways in use).

A proxy's view is derived, not read back from the proxy: the cluster
``outbound|PORT||HOST`` of each endpoint, whether the proxy subscribes to it (a wildcard or
the name), how the proxy reaches it (istiod's split horizon,
``EndpointsByNetworkFilter`` in ``pilot/pkg/xds/endpoints/ep_filters.go``, as
:func:`pymesh.controlplane.networks.route`: directly on the same network or when the entry's
network has no gateway, through its network's gateways with Istio mTLS, else not at all) and
whether the proxy ACKed the last EDS response sent (SYNCED) or not (STALE).

When the API cannot be read the store's part is shown, with a note that connections,
endpoints and proxies need the API; when neither knows the entry, exit 1.
Standard library only beside the store (no gRPC, no YAML).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pymesh.controlplane.errors import ControlPlaneError
from pymesh.controlplane.proxystatus import control_planes, fetch
from pymesh.mesh.defaults import DEFAULT_DOMAIN

KIND_NAMES = ("workloadentry", "workloadentries", "we")
CONNECTED_AT = "istio.io/connectedAt"
DISCONNECTED_AT = "istio.io/disconnectedAt"
CONTROLLER = "istio.io/workloadController"
GROUP = "istio.io/autoRegistrationGroup"
SOURCE = "pymesh.io/source"  # applied.SOURCE_ANNOTATION, without importing the store's side here
CONNECTED_REPLICAS = "pymesh.io/connectedReplicas"
HEALTH_CHECKS = "proxy.istio.io/health-checks-enabled"  # registry.HEALTH_CHECKS_ANNOTATION


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, Any]) -> bool:
    """A non-empty selector whose every label the entry has (an empty one selects no entry)."""
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def _labels(m: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((m or {}).items())) or "<none>"


def _from_store(args: argparse.Namespace) -> tuple[dict[str, Any] | None, list[dict[str, Any]], str]:
    """The entry, the Services/ServiceEntries selecting it, and why the store could not be read."""
    from pymesh.controlplane.backend import open_store
    from pymesh.controlplane.cli import _collect, _etcd_options

    try:
        store = open_store(args.store or args.data_dir, readonly=True, etcd=_etcd_options(args))
    except ControlPlaneError as e:
        return None, [], str(e)
    try:
        entries = _collect(store, "WorkloadEntry")
        services = _collect(store, "Service")
        service_entries = _collect(store, "ServiceEntry")
    except ControlPlaneError as e:
        return None, [], str(e)
    finally:
        store.close()
    doc = next(
        (d for d in entries if (d["metadata"].get("namespace"), d["metadata"]["name"]) == (args.namespace, args.name)),
        None,
    )
    if doc is None:
        return None, [], ""
    labels = (doc.get("spec") or {}).get("labels") or {}  # istiod selects an entry by spec.labels
    selecting: list[dict[str, Any]] = []
    kinds = (("Service", services, ("selector",)), ("ServiceEntry", service_entries, ("workloadSelector", "labels")))
    for kind, docs, path in kinds:
        for d in docs:
            if d["metadata"].get("namespace") != args.namespace:
                continue
            sel: Any = d.get("spec") or {}
            for key in path:
                sel = (sel or {}).get(key)
            if _selects(sel, labels):
                hosts = (
                    [f"{d['metadata']['name']}.{args.namespace}.svc.{DEFAULT_DOMAIN}"]
                    if kind == "Service"
                    else d["spec"].get("hosts")
                )
                selecting.append(
                    {
                        "kind": kind,
                        "namespace": args.namespace,
                        "name": d["metadata"]["name"],
                        "selector": sel,
                        "hosts": hosts,
                    }
                )
    return doc, selecting, ""


def _from_api(args: argparse.Namespace) -> dict[str, Any]:
    urls = control_planes(args.control_plane)
    first = urls[0]
    entries = fetch(first, "/api/v1/workloadentries").get("workloadEntries") or []
    row = next((e for e in entries if (e.get("namespace"), e.get("name")) == (args.namespace, args.name)), None)
    services = fetch(first, "/api/v1/services").get("services") or []
    endpoints = [
        {"hostname": s["hostname"], "service": f"{s.get('namespace')}/{s.get('name')}", **ep}
        for s in services
        for ep in s.get("endpoints") or []
        if (ep.get("kind"), ep.get("namespace"), ep.get("name")) == ("WorkloadEntry", args.namespace, args.name)
        and ep.get("health") == "HEALTHY"  # what EDS carries: the API lists UNHEALTHY entries too
    ]
    gateways: dict[str, list[str]] = {}
    for g in (fetch(first, "/debug/status").get("networks") or {}).get("gateways") or []:
        net, _, addr = str(g).partition("=")
        gateways.setdefault(net, []).append(addr)
    proxies: list[dict[str, Any]] = []
    for base in urls:
        proxies += fetch(base, "/api/v1/proxies").get("proxies") or []
    return {"urls": urls, "entry": row, "endpoints": endpoints, "gateways": gateways, "proxies": proxies}


def proxy_view(
    p: Mapping[str, Any], endpoints: list[dict[str, Any]], gateways: Mapping[str, list[str]]
) -> dict[str, Any]:
    """What one proxy is sent of the entry's endpoints (see the module's docstring)."""
    eds = (p.get("xds") or {}).get("EDS") or {}
    subscribed = eds.get("subscribed")
    status = str(eds.get("status") or "NOT SENT")
    views = []
    for ep in endpoints:
        cluster = f"outbound|{ep['servicePort']}||{ep['hostname']}"
        target = f"{ep['address']}:{ep['port']}"
        net, pnet = ep.get("network") or "", p.get("network") or ""
        gws = gateways.get(net, []) if net and pnet and net != pnet and any(gateways.values()) else []
        if status == "NOT SENT":
            how, reaches = "no EDS requested", None
        elif subscribed is not None and cluster not in subscribed:
            how, reaches = "not subscribed", None
        elif not gws:
            how, reaches = "direct", target
        elif ep.get("tlsMode") == "istio":
            how, reaches = f"through the gateway of network {net}", ",".join(gws)
        else:
            how, reaches = f"not sent (network {net} has a gateway and the endpoint takes no Istio mTLS)", None
        views.append({"cluster": cluster, "endpoint": target, "reachedAt": reaches, "how": how})
    return {
        "proxyId": p.get("proxyId"),
        "replica": p.get("replica"),
        "network": p.get("network") or "",
        "eds": status + (" (NACK)" if eds.get("nacked") else ""),
        "lastNack": (eds.get("lastNack") or {}).get("message"),
        "views": views,
    }


def describe(args: argparse.Namespace) -> dict[str, Any]:
    doc, selecting, store_error = _from_store(args)
    api: dict[str, Any] | None = None
    api_error = ""
    try:
        api = _from_api(args)
    except ControlPlaneError as e:
        api_error = str(e)
    row = api["entry"] if api else None
    if doc is None and row is None:
        where = f"store: {store_error}" if store_error else "not in the store"
        where += f"; API: {api_error}" if api_error else ", nor in the control plane's API"
        raise NotFound(f'workloadentry "{args.name}" not found in namespace "{args.namespace}" ({where})')
    out: dict[str, Any] = {
        "namespace": args.namespace,
        "name": args.name,
        "workloadEntry": doc,
        "storeError": store_error or None,
        "selectedBy": selecting if doc is not None else None,
        "controlPlanes": api["urls"] if api else None,
        "apiError": api_error or None,
        "entry": row,
        "endpoints": api["endpoints"] if api else None,
        "proxies": [proxy_view(p, api["endpoints"], api["gateways"]) for p in api["proxies"]] if api else None,
    }
    return out


class NotFound(ControlPlaneError):
    pass


def _health_line(cond: Mapping[str, Any] | None) -> str:
    if not cond:
        return "<no Healthy condition yet>"
    line = str(cond.get("status"))
    if cond.get("lastTransitionTime"):
        line += f" since {cond['lastTransitionTime']}"
    if cond.get("lastProbeTime"):
        line += f", last probe {cond['lastProbeTime']}"
    if cond.get("message"):
        line += f": {cond['message']}"
    return line


def render(d: Mapping[str, Any]) -> str:
    doc, row = d["workloadEntry"], d["entry"]
    spec = (doc or {}).get("spec") or {}
    md = (doc or {}).get("metadata") or {}
    ann = md.get("annotations") or {}
    address = spec.get("address") if doc else row["address"]
    network = spec.get("network") if doc else row["network"]
    labels = (spec.get("labels") if doc else row["labels"]) or {}
    sa = spec.get("serviceAccount") if doc else row["serviceAccount"]
    lines = [
        f"WorkloadEntry: {d['name']}",
        f"   Namespace:        {d['namespace']}",
        f"   Address:          {address or '-'}",
        f"   Network:          {network or '-'}",
        f"   Locality:         {(spec.get('locality') if doc else row.get('locality')) or '-'}",
        f"   Labels:           {_labels(labels)}",
        f"   Service account:  {sa or '-'}",
    ]
    source = ann.get(SOURCE) if doc else row.get("source")
    group = ann.get(GROUP) if doc else row.get("workloadGroup")
    lines.append(f"   Source:           {source or '-'}" + (f" (WorkloadGroup {group})" if group else ""))
    if row is not None:
        if row.get("connected"):
            where = ", ".join(row.get("connectedReplicas") or []) or row.get("controller") or "?"
            conn = f"Connected to {where}" + (f" since {row['connectedAt']}" if row.get("connectedAt") else "")
            conn += f" ({row.get('streamsHere', 0)} stream(s) at the replica asked)"
        else:
            conn = "Disconnected" + (f" at {row['disconnectedAt']}" if row.get("disconnectedAt") else "")
        health = (
            _health_line(row.get("health")) if row.get("healthChecked") or row.get("health") else "not health-checked"
        )
    else:
        if ann.get(CONNECTED_REPLICAS) is not None:
            conn = f"Connected to {ann[CONNECTED_REPLICAS]}" if ann[CONNECTED_REPLICAS] else "Disconnected"
        elif ann.get(CONNECTED_AT):
            conn = f"Connected to {ann.get(CONTROLLER, '?')} since {ann[CONNECTED_AT]}"
        elif ann.get(DISCONNECTED_AT):
            conn = f"Disconnected at {ann[DISCONNECTED_AT]}"
        else:
            conn = "-"
        cond = next((c for c in (doc.get("status") or {}).get("conditions") or [] if c.get("type") == "Healthy"), None)
        checked = str(ann.get(HEALTH_CHECKS, "")).lower() == "true"
        health = _health_line(cond) if cond or checked else "not health-checked"
    lines += [f"   Connection:       {conn}", f"   Healthy:          {health}"]

    if d["selectedBy"] is not None:
        lines.append("Selected by (labels):")
        served = {e["service"] for e in d["endpoints"] or []}
        for s in d["selectedBy"] or []:
            line = f"   {s['kind']} {s['name']} ({', '.join(s['hosts'] or [])}), selector {_labels(s['selector'])}"
            if d["endpoints"] is not None:
                unhealthy = bool(row and row.get("healthChecked") and row.get("healthy") is not True)
                if f"{s['namespace']}/{s['name']}" not in served:
                    line += ": not an endpoint now" + (" (Healthy is not True)" if unhealthy else "")
            lines.append(line)
        if not d["selectedBy"]:
            lines.append("   <no Service or ServiceEntry of the namespace selects its labels>")

    if d["endpoints"] is None:
        lines.append(f"Endpoints and proxies: the control plane's API is needed ({d['apiError']})")
        if d["storeError"]:
            lines.append(f"Store: {d['storeError']}")
        return "\n".join(lines)
    if d["storeError"]:
        lines.append(f"Store: {d['storeError']} (what selects it needs the store)")
    lines.append("Endpoints (as EDS carries them):")
    for e in d["endpoints"]:
        lines.append(
            f"   {e['hostname']}:{e['servicePort']} -> {e['address']}:{e['port']}  {e['health']}  "
            f"tlsMode {e['tlsMode']}  network {e['network'] or '-'}  "
            f"locality {e['locality'] or '-'}  weight {e['weight']}"
        )
    if not d["endpoints"]:
        lines.append("   <none: no service serves it now>")
    lines.append("Proxies (what each is sent of these endpoints):")
    for p in d["proxies"]:
        head = f"   {p['proxyId']} (replica {p['replica'] or '-'}, network {p['network'] or '-'}): EDS {p['eds']}"
        lines.append(head + (f": {p['lastNack']}" if p["lastNack"] and "NACK" in p["eds"] else ""))
        for v in p["views"]:
            lines.append(f"      {v['cluster']}: {v['reachedAt'] or '-'} ({v['how']})")
    if not d["proxies"]:
        lines.append("   <no proxy connected to the control plane(s) asked>")
    return "\n".join(lines)


def cmd_describe(args: argparse.Namespace) -> int:
    if args.kind.lower() not in KIND_NAMES:
        raise ControlPlaneError(f'describe: unsupported resource type "{args.kind}" (supported: workloadentry, we)')
    try:
        d = describe(args)
    except NotFound as e:
        print(f"Error from server (NotFound): {e}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(d, indent=2, sort_keys=True))
    else:
        print(render(d))
    return 0


def add_command(sub: Any, data_help: str, store_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("describe", help="a WorkloadEntry, its services and what each proxy is sent of it")
    p.add_argument("kind", help="workloadentry (we)")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument(
        "--control-plane",
        action="append",
        metavar="URL",
        help="the control plane's monitoring port (repeatable or comma-separated, one per replica; "
        "default $PYMESH_CONTROL_PLANE, else http://127.0.0.1:15014)",
    )
    p.add_argument("--data-dir", default=None, help=data_help)
    store_flags(p)
    p.set_defaults(func=cmd_describe)
