"""``pymesh controlplane``, ``pymesh get``, ``pymesh apply -f`` and ``pymesh delete -f``
(and ``pymesh proxy-status``: :mod:`pymesh.controlplane.proxystatus`; ``pymesh get networks``,
which are not in the store: :mod:`pymesh.controlplane.getnetworks`; ``pymesh describe
workloadentry``: :mod:`pymesh.controlplane.describe`).

``pymesh apply`` / ``pymesh delete`` write the store's applied configuration
(:mod:`pymesh.controlplane.applied`: validation, all-or-nothing, how applied
and directory objects combine); running control planes pick it up at their
watch interval.

``pymesh get`` reads the control plane's store (its data directory, or the
etcd cluster ``--store`` names; never the config files): it shows what the
running (or last running) control plane holds —
configured objects, registered WorkloadEntries with their connection
annotations and Healthy condition, ServiceEntry VIPs as ``status.addresses``
(where Istio records them) — formatted as kubectl prints them. On stderr it
warns about rejected objects and, when the control plane's config watcher is
failing (so edits are not being applied), says since when and why.

``pymesh controlplane`` raises its soft ``RLIMIT_NOFILE`` to the hard limit at
start (every xDS stream and TLS connection is a descriptor; systemd's default
soft limit is 1,024), as Go raises it for istiod since Go 1.19.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from pymesh.controlplane.backend import EtcdOptions, StoreBackend, open_store
from pymesh.controlplane.defaults import (
    DEFAULT_DEBOUNCE,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_LEASE_TTL,
    DEFAULT_MAX_PENDING_STREAMS,
    DEFAULT_XDS_LISTEN,
)
from pymesh.controlplane.errors import ControlPlaneError
from pymesh.controlplane.store import default_data_dir
from pymesh.mesh.addr import parse_host_port
from pymesh.mesh.errors import AddressError

# Not imported here: the server (gRPC) and the resource model (YAML) load
# when a control-plane command runs, so every other `pymesh` command starts fast.
CONNECTED_AT = "istio.io/connectedAt"
DISCONNECTED_AT = "istio.io/disconnectedAt"
# Shown by `pymesh get` for entries registered by replicas on etcd (never stored): the replicas
# holding a stream of the VM, from the store's connection keys (pymesh.controlplane.replicas).
CONNECTED_REPLICAS = "pymesh.io/connectedReplicas"


def raise_nofile_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; returns (before, after)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, target
        except (ValueError, OSError):
            pass
    return soft, soft


def cmd_controlplane(args: argparse.Namespace) -> int:
    from pymesh.controlplane.server import ControlPlane
    from pymesh.controlplane.vips import DEFAULT_QUARANTINE

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    before, after = raise_nofile_limit()
    if after != before:
        logging.getLogger("pymesh.controlplane").info("open file limit raised from %d to %d", before, after)
    from pymesh.controlplane.ca.cli import security_options
    from pymesh.controlplane.ca.tokens import parse_duration

    security = security_options(args)
    cp = ControlPlane(
        args.config,
        xds_listen=args.xds_listen or DEFAULT_XDS_LISTEN,
        data_dir=args.data_dir,
        store=args.store,
        store_options=_etcd_options(args),
        grace_period=args.grace_period,
        debounce=args.debounce,
        security=security,
        plaintext=args.xds_listen is not None or security is None,
        insecure_xds=args.insecure_xds,
        root_namespace=args.root_namespace,
        vip_quarantine=parse_duration(args.vip_quarantine) if args.vip_quarantine else DEFAULT_QUARANTINE,
        monitoring_listen=args.monitoring_listen,
        monitoring_allowed_hosts=args.monitoring_allowed_hosts,
        prometheus_url=args.prometheus_url,
        mesh_networks=args.mesh_networks,
        cluster_id=args.cluster_id,
        lease_ttl=args.lease_ttl,
        max_pending_streams=args.max_pending_streams,
        access_log=(args.access_log_file, args.access_log_encoding) if args.access_log_file else None,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cp.start()
    # The bound port on stdout (one line) so scripts using port 0 can find it.
    if cp.plaintext:
        print(f"xds {cp.listen[0]}:{cp.port}", flush=True)
    if cp.security is not None:
        print(f"xds-tls {cp.security.listen[0]}:{cp.secure_port}", flush=True)
    if cp.monitoring is not None:
        print(f"monitoring {cp.monitoring.address}", flush=True)
    for e in cp.errors:
        print(f"pymesh: rejected: {e}", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        cp.stop()
    return 0


def _age(ts: str | None) -> str:
    from pymesh.controlplane.health import parse_rfc3339

    t = parse_rfc3339(ts) if ts else None
    if t is None:
        return "-"
    s = max(0, int(time.time() - t))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _host_names(text: str) -> list[str]:
    """``NAME,...``: host names or IP literals (``[::1]``), a port ignored."""
    try:
        return [parse_host_port(n, default_port=0, what="allowed host").host for n in text.split(",") if n.strip()]
    except AddressError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n}: expected 0 or more")
    return n


def _etcd_options(args: argparse.Namespace) -> EtcdOptions:
    return EtcdOptions.from_args(
        ca=args.store_ca,
        cert=args.store_cert,
        key=args.store_key,
        user=args.store_user,
        password_file=args.store_password_file,
        timeout=args.store_timeout,
    )


def _collect(store: StoreBackend, kind: str) -> list[dict[str, Any]]:
    """The kind's objects: the served mirror, then applied objects no control plane serves yet
    (source ``applied (pending)``); each with its source in :data:`SOURCE_ANNOTATION`."""
    from pymesh.controlplane.applied import SOURCE_ANNOTATION, describe_source, source_of

    overlays = store.overlays()
    vips = store.vips()
    out: list[dict[str, Any]] = []
    mirror = store.configured()
    rows = [(k, ns, name, describe_source(src), body) for k, ns, name, src, body in mirror]
    served = {(k, ns, name, src) for k, ns, name, src, _ in mirror}
    for k, ns, name, _at, body in store.applied():
        if (k, ns, name, source_of((k, ns, name))) not in served:
            rows.append((k, ns, name, "applied (pending)", body))
    for k, ns, name, source, body in rows:
        if k != kind:
            continue
        doc = copy.deepcopy(body)
        doc.setdefault("metadata", {}).setdefault("annotations", {})[SOURCE_ANNOTATION] = source
        ov = overlays.get((k, ns, name))
        md = doc.setdefault("metadata", {})
        md.setdefault("namespace", ns)
        if ov:
            md["annotations"] = {**(md.get("annotations") or {}), **ov.get("annotations", {})}
            if "status" in ov:
                doc["status"] = ov["status"]
        if kind == "ServiceEntry":
            addrs = [
                {"value": a, "host": h}
                for h in (doc.get("spec") or {}).get("hosts") or []
                if h in vips and not (doc.get("spec") or {}).get("addresses")
                for a in vips[h]
            ]
            if addrs:
                doc.setdefault("status", {})["addresses"] = addrs
        out.append(doc)
    if kind == "WorkloadEntry":
        configured = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in out}
        connections = getattr(store, "connections", None)  # the etcd store's, for replicas
        held = connections() if connections is not None else None
        for doc in store.registered():
            md = doc["metadata"]
            if (md["namespace"], md["name"]) not in configured:
                ann = md.setdefault("annotations", {})
                ann[SOURCE_ANNOTATION] = "registered"
                if held is not None and CONNECTED_AT not in ann:
                    ann[CONNECTED_REPLICAS] = ",".join(sorted(held.get((md["namespace"], md["name"]), ())))
                out.append(doc)
    out.sort(key=lambda d: (d["metadata"].get("namespace", ""), d["metadata"].get("name", "")))
    return out


def _healthy(doc: Mapping[str, Any]) -> str:
    for c in (doc.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Healthy":
            return str(c.get("status"))
    return "-"


def _row(kind: str, doc: Mapping[str, Any]) -> list[str]:
    md, spec = doc["metadata"], doc.get("spec") or {}
    age = _age(md.get("creationTimestamp"))
    if kind == "WorkloadEntry":
        ann = md.get("annotations") or {}
        if CONNECTED_REPLICAS in ann:
            state = "Connected" if ann[CONNECTED_REPLICAS] else "Disconnected"
        else:
            state = "Connected" if CONNECTED_AT in ann else ("Disconnected" if DISCONNECTED_AT in ann else "-")
        return [md["name"], spec.get("address", ""), spec.get("network", "") or "-", _healthy(doc), state, age]
    if kind == "Service":
        ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
        return [
            md["name"],
            spec.get("type", "ClusterIP"),
            str(spec.get("clusterIP") or "<none>"),
            ports or "<none>",
            age,
        ]
    if kind == "Pod":
        st = doc.get("status") or {}
        return [md["name"], st.get("phase", "-"), st.get("podIP", "-"), age]
    if kind == "ServiceEntry":
        addrs = [a["value"] for a in (doc.get("status") or {}).get("addresses", [])] or spec.get("addresses") or []
        return [
            md["name"],
            ",".join(spec.get("hosts") or []),
            ",".join(addrs) or "-",
            spec.get("location", "MESH_EXTERNAL"),
            spec.get("resolution", "NONE"),
            age,
        ]
    if kind == "DestinationRule":
        return [md["name"], str(spec.get("host", "")), age]
    if kind == "PeerAuthentication":
        return [md["name"], str((spec.get("mtls") or {}).get("mode") or "UNSET"), age]
    if kind == "VirtualService":
        return [md["name"], ",".join(spec.get("gateways") or []), ",".join(spec.get("hosts") or []), age]
    if kind == "Telemetry":
        # The access log providers it sets (istio/api telemetry/v1alpha1/telemetry.proto AccessLogging).
        logs = spec.get("accessLogging") or []
        names = [str(p.get("name")) for a in logs if not a.get("disabled") for p in a.get("providers") or []]
        off = any(a.get("disabled") for a in logs)
        providers = ",".join(names) or ("<disabled>" if off else "<none>")
        return [md["name"], _selector((spec.get("selector") or {}).get("matchLabels")), providers, age]
    return [md["name"], age]


def _selector(labels: Mapping[str, Any] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "<all>"


HEADERS = {
    "WorkloadEntry": ["NAME", "ADDRESS", "NETWORK", "HEALTHY", "CONNECTION", "AGE"],
    "Service": ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"],
    "Pod": ["NAME", "STATUS", "IP", "AGE"],
    "ServiceEntry": ["NAME", "HOSTS", "ADDRESSES", "LOCATION", "RESOLUTION", "AGE"],
    "DestinationRule": ["NAME", "HOST", "AGE"],
    "WorkloadGroup": ["NAME", "AGE"],
    "PeerAuthentication": ["NAME", "MODE", "AGE"],
    "VirtualService": ["NAME", "GATEWAYS", "HOSTS", "AGE"],
    "Telemetry": ["NAME", "SELECTOR", "ACCESS-LOG", "AGE"],
}


def _table(kind: str, docs: list[dict[str, Any]], all_namespaces: bool, wide: bool = False) -> str:
    from pymesh.controlplane.applied import SOURCE_ANNOTATION

    header = HEADERS[kind]
    rows = [_row(kind, d) for d in docs]
    if wide:  # kubectl's -o wide: more columns; here where each object comes from
        header = [*header, "SOURCE"]
        rows = [
            [*r, (d["metadata"].get("annotations") or {}).get(SOURCE_ANNOTATION, "-")]
            for d, r in zip(docs, rows, strict=True)
        ]
    if all_namespaces:
        header = ["NAMESPACE", *header]
        rows = [[d["metadata"].get("namespace", ""), *r] for d, r in zip(docs, rows, strict=True)]
    return render_table(header, rows)


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded as kubectl's printer pads them (three spaces between columns)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    return "\n".join(
        "   ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def cmd_get(args: argparse.Namespace) -> int:
    import yaml

    from pymesh.controlplane.getnetworks import NAMES as NETWORKS
    from pymesh.controlplane.resources import KINDS, STORAGE_VERSION, kind_of

    if args.kind.lower() in NETWORKS:  # not a kind: meshNetworks, from their file (pymesh.controlplane.getnetworks)
        from pymesh.controlplane.getnetworks import cmd_get_networks

        return cmd_get_networks(args)
    kind = kind_of(args.kind)
    if kind is None:
        known = ", ".join(sorted([*(p for _, p, _ in KINDS.values()), NETWORKS[0]]))
        raise ControlPlaneError(f'the server doesn\'t have a resource type "{args.kind}" (known: {known})')
    store = open_store(args.store or args.data_dir, readonly=True, etcd=_etcd_options(args))
    try:
        docs = _collect(store, kind)
        rejected = store.rejected()
        status = store.status("controlplane") or {}
    finally:
        store.close()
    watcher = status.get("watcher") or {}
    if watcher.get("state") == "failing":
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(float(watcher.get("since") or 0)))
        print(
            f"warning: the control plane's config watcher is failing since {since} "
            f"({watcher.get('failures', '?')} attempts): {watcher.get('error', '?')}; "
            "edits to the config are not applied until it recovers (what is shown is what it still serves)",
            file=sys.stderr,
        )
    if not args.all_namespaces:
        docs = [d for d in docs if d["metadata"].get("namespace", "default") == args.namespace]
    if args.name:
        docs = [d for d in docs if d["metadata"]["name"] == args.name]
        if not docs:
            print(f'Error from server (NotFound): {KINDS[kind][1]} "{args.name}" not found', file=sys.stderr)
            return 1
    for d in docs:
        d.setdefault("apiVersion", STORAGE_VERSION[kind])
        d.setdefault("kind", kind)
    for m in rejected:
        print(f"warning: rejected by the control plane: {m}", file=sys.stderr)
    single = args.name is not None
    body: Any = docs[0] if single else {"apiVersion": "v1", "kind": "List", "items": docs, "metadata": {}}
    if args.output == "json":
        print(json.dumps(body, indent=4, sort_keys=True))
    elif args.output == "yaml":
        print(yaml.safe_dump(body, sort_keys=True, default_flow_style=False), end="")
    elif not docs:
        where = "any namespace" if args.all_namespaces else f"{args.namespace} namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
    else:
        print(_table(kind, docs, args.all_namespaces, wide=args.output == "wide"))
    return 0


def _read_stdin(paths: list[str]) -> str | None:
    return sys.stdin.read() if "-" in paths else None


def cmd_apply(args: argparse.Namespace) -> int:
    """Validates every object of the files; any error: nothing is written (exit 1)."""
    from pymesh.controlplane.applied import apply_objects, label, read_paths, source_of

    result = read_paths(args.filename, stdin=_read_stdin(args.filename))
    if result.errors:
        for e in result.errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"error: {len(result.errors)} invalid object(s): nothing applied", file=sys.stderr)
        return 1
    store = open_store(args.store or args.data_dir, etcd=_etcd_options(args))
    try:
        report = apply_objects(store, result.objects)
        sources = store.configured_sources()
    finally:
        store.close()
    for key, what in report:
        print(f"{key[0].lower()}/{key[2]} {what}" + (f" (namespace {key[1]})" if key[1] != "default" else ""))
        src = sources.get(key)
        if src is not None and src != source_of(key):
            print(
                f"warning: {label(key)} is also defined in the config directory ({src}); the copy held first "
                "(else the older) is served, the other is reported as a duplicate",
                file=sys.stderr,
            )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Removes the files' objects (by kind, namespace, name) from the applied configuration."""
    from pymesh.controlplane.applied import delete_keys

    keys = delete_keys(args.filename, stdin=_read_stdin(args.filename))
    store = open_store(args.store or args.data_dir, etcd=_etcd_options(args))
    try:
        held = {(k, ns, n) for k, ns, n, _, _ in store.applied()}
        found = [k for k in keys if k in held]
        if found:
            store.put_applied((), found)
    finally:
        store.close()
    code = 0
    for key in keys:
        name = f"{key[0].lower()}/{key[2]}"
        if key in held:
            print(f"{name} deleted" + (f" (namespace {key[1]})" if key[1] != "default" else ""))
        elif not args.ignore_not_found:
            print(f'Error from server (NotFound): {name} not found in namespace "{key[1]}"', file=sys.stderr)
            code = 1
    return code


def _store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="where the control plane keeps its state: etcd://HOST:PORT,HOST:PORT,...[/PREFIX] (etcds:// for "
        "TLS; prefix default /pymesh/default) or sqlite:///DIR (default: SQLite in --data-dir)",
    )
    p.add_argument("--store-ca", metavar="FILE", default=None, help="etcd: CA bundle to verify its members (TLS)")
    p.add_argument("--store-cert", metavar="FILE", default=None, help="etcd: client certificate (TLS)")
    p.add_argument("--store-key", metavar="FILE", default=None, help="etcd: client certificate's key (TLS)")
    p.add_argument("--store-user", metavar="NAME", default=None, help="etcd: user for etcd's authentication")
    p.add_argument(
        "--store-password-file",
        metavar="FILE",
        default=None,
        help="etcd: file holding --store-user's password (or $PYMESH_STORE_PASSWORD; never on the command line)",
    )
    p.add_argument(
        "--store-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="etcd: deadline of one store operation, every member tried included (default %(default)s)",
    )


def add_commands(sub: Any) -> None:
    """Adds ``controlplane`` and ``get`` to the ``pymesh`` parser."""
    data_help = f"the control plane's data directory (default: {default_data_dir()}; $PYMESH_DATA_DIR overrides)"
    cp = sub.add_parser("controlplane", help="run the control plane: config directory in, xDS (ADS) out")
    cp.add_argument("--config", required=True, help="directory (or file) of Kubernetes-style YAML, watched for changes")
    cp.add_argument(
        "--xds-listen",
        default=None,
        help=f"ADDR:PORT for plaintext, unauthenticated gRPC ADS (tests, dev; e.g. {DEFAULT_XDS_LISTEN})",
    )
    cp.add_argument("--data-dir", default=None, help=data_help)
    _store_flags(cp)
    cp.add_argument(
        "--grace-period",
        type=float,
        default=DEFAULT_GRACE_PERIOD,
        help="seconds a disconnected auto-registered entry survives (default: %(default)s)",
    )
    cp.add_argument(
        "--lease-ttl",
        type=int,
        default=DEFAULT_LEASE_TTL,
        metavar="SECONDS",
        help="etcd store: TTL of this replica's lease; its VMs are released this long after it dies "
        "(default %(default)s, etcd's minimum 2)",
    )
    cp.add_argument(
        "--debounce", type=float, default=DEFAULT_DEBOUNCE, help="seconds of quiet before a push (default: %(default)s)"
    )
    cp.add_argument(
        "--root-namespace",
        default="istio-system",
        help="meshConfig.rootNamespace: a PeerAuthentication here without selector is mesh-wide (default %(default)s)",
    )
    cp.add_argument(
        "--access-log-file",
        metavar="FILE",
        default=None,
        help="meshConfig accessLogFile: every workload's access log (e.g. /dev/stdout) unless a Telemetry "
        "says otherwise; also where Telemetry's envoy provider writes (default: none)",
    )
    cp.add_argument(
        "--access-log-encoding",
        type=str.upper,
        choices=("TEXT", "JSON"),
        default="TEXT",
        help="meshConfig accessLogEncoding (default %(default)s)",
    )
    cp.add_argument(
        "--mesh-networks",
        metavar="FILE",
        default=None,
        help="istiod's meshNetworks (its --networksConfig): networks by fromCidr/fromRegistry and their gateways; "
        "watched for changes",
    )
    cp.add_argument(
        "--insecure-xds",
        action="store_true",
        help="allow --xds-listen on a non-loopback address: plaintext and unauthenticated (any client can register "
        "a VM into any group and namespace; tokens sent to the CA travel in clear)",
    )
    cp.add_argument(
        "--monitoring-listen",
        metavar="ADDR:PORT",
        default=None,
        help="serve /metrics, /debug/status, the JSON API /api/v1/ and the dashboard at / over HTTP (istiod's "
        "15014; off by default; it shows the mesh's topology: keep it on loopback)",
    )
    cp.add_argument(
        "--monitoring-allowed-hosts",
        metavar="NAME,...",
        type=_host_names,
        action="extend",
        default=[],
        help="Host header values the monitoring port serves besides localhost, 127.0.0.1, [::1] and its bound "
        "address (any port); other requests get 403, against DNS rebinding. A wildcard bind (0.0.0.0, ::) "
        "without names serves any Host",
    )
    cp.add_argument(
        "--prometheus-url",
        metavar="URL",
        default=None,
        help="the dashboard's traffic graph from this Prometheus (scraping the proxies' :15020/stats/prometheus), "
        "Kiali's queries; without it the control plane scrapes the agents connected to it itself",
    )
    cp.add_argument(
        "--max-pending-streams",
        type=_non_negative,
        default=DEFAULT_MAX_PENDING_STREAMS,
        metavar="N",
        help="ADS streams being set up at once (first request to first answer, registration included); more are "
        "refused at once with RESOURCE_EXHAUSTED so agents retry, or try another replica "
        "(default %(default)s; 0: no bound)",
    )
    cp.add_argument(
        "--vip-quarantine",
        default=None,
        metavar="DURATION",
        help="how long a released auto-allocated VIP waits before another host may get it (default 1h)",
    )
    cp.add_argument("-v", "--verbose", action="store_true")
    from pymesh.controlplane.ca.cli import add_controlplane_flags

    add_controlplane_flags(cp)  # --secure-listen, --trust-domain, --plugin-ca, --cert-ttl, --xds-auth
    cp.set_defaults(func=cmd_controlplane)

    get = sub.add_parser("get", help="show what the control plane holds, as kubectl would")
    get.add_argument(
        "kind",
        help="workloadentries (we), workloadgroups (wg), serviceentries (se), destinationrules (dr), "
        "virtualservices (vs), peerauthentications (pa), telemetries (telemetry), services (svc), pods (po), "
        "networks (meshNetworks: --mesh-networks FILE or the running control plane)",
    )
    get.add_argument("name", nargs="?", default=None)
    get.add_argument("-n", "--namespace", default="default")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=("yaml", "json", "table", "wide"), default="table",
                     help="wide: the table with a SOURCE column (file:PATH, applied, registered)")  # fmt: skip
    get.add_argument("--data-dir", default=None, help=data_help)
    _store_flags(get)
    get.add_argument("--mesh-networks", metavar="FILE", default=None,
                     help="networks: read this meshNetworks file (else the running control plane's)")  # fmt: skip
    get.add_argument("--control-plane", action="append", metavar="URL",
                     help="networks: the control plane's monitoring port (default $PYMESH_CONTROL_PLANE, else "
                     "http://127.0.0.1:15014)")  # fmt: skip
    get.set_defaults(func=cmd_get)

    from pymesh.controlplane.proxystatus import add_command as add_proxy_status

    add_proxy_status(sub)  # reads the monitoring port's /api/v1/proxies (standard library only)

    from pymesh.controlplane.describe import add_command as add_describe

    add_describe(sub, data_help, _store_flags)  # `describe workloadentry`: the store and the JSON API

    for name, func, what in (
        ("apply", cmd_apply, "validate objects and write them into the store's applied configuration"),
        ("delete", cmd_delete, "remove objects (by kind, namespace, name) from the store's applied configuration"),
    ):
        p = sub.add_parser(name, help=what + " (served by every control plane on the store)")
        p.add_argument(
            "-f", "--filename", action="append", required=True, metavar="FILE|DIR|-",
            help="YAML/JSON file, directory (recursive) or - for stdin; repeatable",
        )  # fmt: skip
        if name == "delete":
            p.add_argument("--ignore-not-found", action="store_true", help="objects not applied are not an error")
        p.add_argument("--data-dir", default=None, help=data_help)
        _store_flags(p)
        p.set_defaults(func=func)
