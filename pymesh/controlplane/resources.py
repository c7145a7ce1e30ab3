"""The Kubernetes-style configuration model: Service and Pod (core/v1),
Istio's WorkloadGroup, WorkloadEntry, ServiceEntry, DestinationRule and VirtualService
(``networking.istio.io`` v1, v1beta1, v1alpha3 — one schema served under
three versions, as istio/api does since PR #3188) and PeerAuthentication
(``security.istio.io`` v1, v1beta1).

Each kind is parsed into a frozen dataclass; parsing *is* validation: a bad
field raises :class:`ValidationError` naming it, and the fields no parser
reads are checked against the kind's schema (:mod:`pymesh.controlplane.schema`:
Istio's CRDs, unknown fields refused). The document is kept as checked
(``Object.raw``, a fresh copy with nothing unknown) so ``pymesh get -o yaml``
prints what was configured. YAML is read with bounds
(:mod:`pymesh.controlplane.yamlsafe`: an alias budget, duplicate keys, object
and file sizes).
Loading a directory never stops at a bad object: :func:`load_path` returns
the good objects and one error per rejected object (or unreadable file).

Size: one file because it is one table, kind by kind (parse, validate, the error's
file/object/field), each kind next to its neighbours; the YAML reader (yamlsafe), the
structural schemas (schema, crds) and the directory scan (configdir) live apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pymesh.controlplane import schema
from pymesh.controlplane import validation as v
from pymesh.controlplane.configdir import YAML_SUFFIXES, Entry, ScanError, read, scan, transient
from pymesh.controlplane.errors import ValidationError
from pymesh.controlplane.telemetry import TelemetrySpec
from pymesh.controlplane.telemetry import parse_spec as parse_telemetry_spec
from pymesh.controlplane.virtualservice import VirtualService
from pymesh.controlplane.virtualservice import parse as parse_vs_spec
from pymesh.controlplane.yamlsafe import DEFAULT_LIMITS, Limits, YamlSyntaxError, units
from pymesh.mesh.errors import ProbeError
from pymesh.mesh.probe import parse_probe

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
SECURITY_GROUP = "security.istio.io"
SECURITY_VERSIONS = ("v1", "v1beta1")
TELEMETRY_GROUP = "telemetry.istio.io"
TELEMETRY_VERSIONS = ("v1", "v1alpha1")
__all__ = ["YAML_SUFFIXES", "Limits", "LoadResult", "Object", "load_documents", "load_path", "parse_object"]

# Kinds: canonical name -> (accepted apiVersions, plural, short names).
KINDS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "Service": (("v1",), "services", ("svc", "service")),
    "Pod": (("v1",), "pods", ("po", "pod")),
    "WorkloadGroup": (tuple(f"{ISTIO_GROUP}/{x}" for x in ISTIO_VERSIONS), "workloadgroups", ("wg", "workloadgroup")),
    "WorkloadEntry": (tuple(f"{ISTIO_GROUP}/{x}" for x in ISTIO_VERSIONS), "workloadentries", ("we", "workloadentry")),
    "ServiceEntry": (tuple(f"{ISTIO_GROUP}/{x}" for x in ISTIO_VERSIONS), "serviceentries", ("se", "serviceentry")),
    "DestinationRule": (
        tuple(f"{ISTIO_GROUP}/{x}" for x in ISTIO_VERSIONS),
        "destinationrules",
        ("dr", "destinationrule"),
    ),
    "VirtualService": (
        tuple(f"{ISTIO_GROUP}/{x}" for x in ISTIO_VERSIONS),
        "virtualservices",
        ("vs", "virtualservice"),
    ),
    "PeerAuthentication": (
        tuple(f"{SECURITY_GROUP}/{x}" for x in SECURITY_VERSIONS),
        "peerauthentications",
        ("pa", "peerauthentication"),
    ),
    "Telemetry": (tuple(f"{TELEMETRY_GROUP}/{x}" for x in TELEMETRY_VERSIONS), "telemetries", ("telemetry",)),
}
# The version `pymesh get` prints: each kind's first (newest) apiVersion.
STORAGE_VERSION = {k: vs[0] for k, (vs, _, _) in KINDS.items()}


def kind_of(name: str) -> str | None:
    """The canonical kind for a kubectl-style name (``we``, ``workloadentries``,
    ``WorkloadEntry``...), or None."""
    low = name.lower()
    for kind, (_, plural, shorts) in KINDS.items():
        if low in (kind.lower(), plural, *shorts):
            return kind
    return None


@dataclass(frozen=True)
class Meta:
    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str  # int, or a named container / WorkloadEntry port
    protocol: str = "TCP"
    app_protocol: str = ""  # spec.ports[].appProtocol ("" when unset)


@dataclass(frozen=True)
class Service:
    meta: Meta
    selector: Mapping[str, str] | None
    ports: tuple[ServicePort, ...]
    cluster_ips: tuple[str, ...]  # empty: not allocated
    headless: bool  # clusterIP: None
    publish_not_ready: bool = False
    type: str = "ClusterIP"
    external_ips: tuple[str, ...] = ()  # spec.externalIPs
    ingress: tuple[str, ...] = ()  # status.loadBalancer.ingress[]: ip, else hostname

    @property
    def external_addresses(self) -> tuple[str, ...]:
        """istiod's ``ClusterExternalAddresses`` (pilot/pkg/serviceregistry/kube/conversion.go
        ``ConvertService``): a LoadBalancer's ingress addresses, then ``spec.externalIPs``."""
        lb = self.ingress if self.type == "LoadBalancer" else ()
        return (*lb, *self.external_ips)


@dataclass(frozen=True)
class Pod:
    meta: Meta
    ip: str  # "" until scheduled
    ready: bool
    container_ports: Mapping[str, int]  # named ports, for named targetPorts
    service_account: str = "default"
    hostname: str = ""
    subdomain: str = ""


@dataclass(frozen=True)
class WorkloadEntrySpec:
    address: str = ""
    ports: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = ""
    locality: str = ""
    weight: int = 0
    service_account: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, val in (
            ("address", self.address),
            ("ports", dict(self.ports)),
            ("labels", dict(self.labels)),
            ("network", self.network),
            ("locality", self.locality),
            ("weight", self.weight),
            ("serviceAccount", self.service_account),
        ):
            if val:
                out[key] = val
        return out


@dataclass(frozen=True)
class WorkloadEntry:
    meta: Meta
    spec: WorkloadEntrySpec
    status: Mapping[str, Any] = field(default_factory=dict)

    def condition(self, kind: str) -> Mapping[str, Any] | None:
        for c in self.status.get("conditions") or ():
            if isinstance(c, Mapping) and c.get("type") == kind:
                return c
        return None


@dataclass(frozen=True)
class WorkloadGroup:
    meta: Meta
    template_labels: Mapping[str, str]  # spec.metadata.labels
    template_annotations: Mapping[str, str]  # spec.metadata.annotations
    template: WorkloadEntrySpec
    probe: Mapping[str, Any] | None


@dataclass(frozen=True)
class ServiceEntryPort:
    number: int
    protocol: str
    name: str
    target_port: int = 0


@dataclass(frozen=True)
class ServiceEntry:
    meta: Meta
    hosts: tuple[str, ...]
    addresses: tuple[str, ...]
    ports: tuple[ServiceEntryPort, ...]
    location: str  # MESH_EXTERNAL | MESH_INTERNAL
    resolution: str  # NONE | STATIC | DNS | DNS_ROUND_ROBIN | DYNAMIC_DNS
    workload_selector: Mapping[str, str] | None
    endpoints: tuple[WorkloadEntrySpec, ...]


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_percent: int | None = None
    min_health_percent: int | None = None


@dataclass(frozen=True)
class TrafficPolicy:
    simple: str = ""  # "", ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM, PASSTHROUGH
    consistent_hash: Mapping[str, Any] | None = None  # the raw consistentHash block
    locality: Mapping[str, Any] | None = None  # localityLbSetting
    outlier: OutlierDetection | None = None
    # connectionPool.http: h2UpgradePolicy ("" unset, DEFAULT, DO_NOT_UPGRADE, UPGRADE) and
    # useClientProtocol (None unset): the upstream HTTP protocol (generators._upstream_protocol).
    h2_upgrade: str = ""
    use_client_protocol: bool | None = None


# ConnectionPoolSettings.HTTPSettings.H2UpgradePolicy (istio/api networking/v1alpha3/destination_rule.proto).
H2_UPGRADE_POLICIES = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    policy: TrafficPolicy | None


@dataclass(frozen=True)
class DestinationRule:
    meta: Meta
    host: str
    policy: TrafficPolicy | None
    subsets: tuple[Subset, ...]


# PeerAuthentication's mtls.mode values (istio/api security/v1beta1/peer_authentication.proto).
MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


@dataclass(frozen=True)
class PeerAuthentication:
    """``security.istio.io`` PeerAuthentication: the inbound mTLS mode of the
    workloads it selects. No selector (or an empty one): the whole namespace,
    or the whole mesh in the root namespace (pymesh.controlplane.peerauth)."""

    meta: Meta
    selector: Mapping[str, str] | None  # spec.selector.matchLabels; None or empty: namespace/mesh-wide
    mode: str  # one of MTLS_MODES; UNSET inherits from the level above
    created: float | None = None  # metadata.creationTimestamp (epoch seconds): Istio's oldest-wins tie-break


@dataclass(frozen=True)
class Telemetry:
    """``telemetry.istio.io`` Telemetry: the access log of the workloads it selects
    (pymesh.controlplane.telemetry holds the rules)."""

    meta: Meta
    spec: TelemetrySpec
    created: float | None = None


Spec = (
    Service
    | Pod
    | WorkloadGroup
    | WorkloadEntry
    | ServiceEntry
    | DestinationRule
    | VirtualService
    | PeerAuthentication
    | Telemetry
)


@dataclass(frozen=True)
class Object:
    """A validated object: its typed form and the document it came from."""

    kind: str
    api_version: str
    source: str  # "file.yaml" (configured) or "registered" (auto-registration)
    raw: Mapping[str, Any]
    typed: Spec

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.typed.meta.namespace, self.typed.meta.name)

    @cached_property
    def body(self) -> str:
        """``raw`` as the store keeps it (JSON), computed once per object."""
        return json.dumps(self.raw, sort_keys=True)


# --- parsing --------------------------------------------------------------------------


def _meta(doc: Mapping[str, Any], kind: str) -> Meta:
    md = v.mapping(doc.get("metadata"), "metadata", required=True)
    name = v.string(md.get("name"), "metadata.name", required=True)
    if kind == "Service":
        v.dns1035_label(name, "metadata.name")
    else:
        v.dns1123_subdomain(name, "metadata.name")
    ns = v.string(md.get("namespace"), "metadata.namespace") or "default"
    v.dns1123_label(ns, "metadata.namespace")
    return Meta(
        name=name,
        namespace=ns,
        labels=v.labels(md.get("labels"), "metadata.labels"),
        annotations=v.annotation_map(md.get("annotations"), "metadata.annotations"),
    )


def parse_service(doc: Mapping[str, Any]) -> Service:
    meta = _meta(doc, "Service")
    spec = v.mapping(doc.get("spec"), "spec", required=True)
    typ = spec.get("type") or "ClusterIP"
    if typ not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        raise v.fail("spec.type", f"unknown service type {typ!r}")
    raw_ports = v.sequence(spec.get("ports"), "spec.ports")
    ports: list[ServicePort] = []
    for i, p in enumerate(raw_ports):
        f = f"spec.ports[{i}]"
        pm = v.mapping(p, f)
        name = v.string(pm.get("name"), f"{f}.name")
        if name:
            v.dns1123_label(name, f"{f}.name")
        elif len(raw_ports) > 1:
            raise v.fail(f"{f}.name", "is required when a service has more than one port")
        number = v.port(pm.get("port"), f"{f}.port")
        tp_raw = pm.get("targetPort", number)
        target: int | str
        if isinstance(tp_raw, str) and not (tp_raw.isascii() and tp_raw.isdigit()):
            target = v.iana_port_name(tp_raw, f"{f}.targetPort")
        else:
            target = v.port(int(tp_raw) if isinstance(tp_raw, str) else tp_raw, f"{f}.targetPort")
        proto = v.one_of(pm.get("protocol"), f"{f}.protocol", ("TCP", "UDP", "SCTP"), default="TCP")
        if any(q.name == name for q in ports):
            raise v.fail(f"{f}.name", f"duplicate port name {name!r}")
        if any(q.port == number and q.protocol == proto for q in ports):
            raise v.fail(f"{f}.port", f"duplicate port {number}/{proto}")
        # Istio reads it before the port name to decide the port's protocol (pymesh.controlplane.protocol).
        app_protocol = v.string(pm.get("appProtocol"), f"{f}.appProtocol")
        ports.append(ServicePort(name, number, target, proto, app_protocol))
    selector = spec.get("selector")
    sel = v.labels(selector, "spec.selector") if selector is not None else None
    cip = v.string(spec.get("clusterIP"), "spec.clusterIP")
    ips = [
        v.string(x, f"spec.clusterIPs[{i}]")
        for i, x in enumerate(v.sequence(spec.get("clusterIPs"), "spec.clusterIPs"))
    ]
    headless = cip == "None" or (ips[:1] == ["None"])
    cluster_ips: tuple[str, ...] = ()
    if not headless:
        all_ips = ips or ([cip] if cip else [])
        if cip and ips and ips[0] != cip:
            raise v.fail("spec.clusterIPs", "the first entry must equal spec.clusterIP")
        cluster_ips = tuple(v.ip(x, "spec.clusterIP") for x in all_ips)
    return Service(
        meta=meta,
        selector=sel,
        ports=tuple(ports),
        cluster_ips=cluster_ips,
        headless=headless,
        publish_not_ready=bool(spec.get("publishNotReadyAddresses", False)),
        type=typ,
        external_ips=tuple(
            v.ip(v.string(x, f"spec.externalIPs[{i}]"), f"spec.externalIPs[{i}]")
            for i, x in enumerate(v.sequence(spec.get("externalIPs"), "spec.externalIPs"))
        ),
        ingress=_lb_ingress(doc),
    )


def _lb_ingress(doc: Mapping[str, Any]) -> tuple[str, ...]:
    status = v.mapping(doc.get("status"), "status")
    lb = v.mapping(status.get("loadBalancer"), "status.loadBalancer")
    out = []
    for i, item in enumerate(v.sequence(lb.get("ingress"), "status.loadBalancer.ingress")):
        f = f"status.loadBalancer.ingress[{i}]"
        m = v.mapping(item, f)
        ip = v.string(m.get("ip"), f"{f}.ip")
        if ip:
            out.append(v.ip(ip, f"{f}.ip"))
            continue
        host = v.string(m.get("hostname"), f"{f}.hostname")
        if host:
            out.append(host)
    return tuple(out)


def parse_pod(doc: Mapping[str, Any]) -> Pod:
    meta = _meta(doc, "Pod")
    spec = v.mapping(doc.get("spec"), "spec")
    status = v.mapping(doc.get("status"), "status")
    named: dict[str, int] = {}
    for ci, c in enumerate(v.sequence(spec.get("containers"), "spec.containers")):
        cm = v.mapping(c, f"spec.containers[{ci}]")
        for pi, p in enumerate(v.sequence(cm.get("ports"), f"spec.containers[{ci}].ports")):
            f = f"spec.containers[{ci}].ports[{pi}]"
            pm = v.mapping(p, f)
            number = v.port(pm.get("containerPort"), f"{f}.containerPort")
            name = v.string(pm.get("name"), f"{f}.name")
            if name:
                named[v.iana_port_name(name, f"{f}.name")] = number
    ip = v.string(status.get("podIP"), "status.podIP")
    if ip:
        ip = v.ip(ip, "status.podIP")
    # Readiness: the Ready condition when present; a pod with an IP and no
    # conditions is taken as ready (hand-written examples rarely carry them).
    ready = bool(ip)
    for i, c in enumerate(v.sequence(status.get("conditions"), "status.conditions")):
        cm = v.mapping(c, f"status.conditions[{i}]")
        if cm.get("type") == "Ready":
            ready = ready and str(cm.get("status")) == "True"
    if status.get("phase") not in (None, "Running"):
        ready = False
    return Pod(
        meta=meta,
        ip=ip,
        ready=ready,
        container_ports=named,
        service_account=v.string(spec.get("serviceAccountName"), "spec.serviceAccountName") or "default",
        hostname=v.string(spec.get("hostname"), "spec.hostname"),
        subdomain=v.string(spec.get("subdomain"), "spec.subdomain"),
    )


def parse_workload_entry_spec(spec: Mapping[str, Any], f: str, *, template: bool = False) -> WorkloadEntrySpec:
    """WorkloadEntry fields (istio/api ``networking/v1alpha3/workload_entry.proto``). ``template`` skips the
    "address or network required" rule, as the CRD does inside a group."""
    address = v.string(spec.get("address"), f"{f}.address", max_len=256)
    network = v.string(spec.get("network"), f"{f}.network", max_len=2048)
    if not template and not address and not network:
        raise v.fail(f"{f}.address", "is required (or set network)")
    if address.startswith("unix://"):
        path = address[len("unix://") :]
        if not path or path[0] not in "/@" or path.endswith("/"):
            raise v.fail(f"{f}.address", f"{address!r}: a unix address is unix:///absolute/path or unix://@abstract")
    elif address and not v.is_ip(address):
        v.fqdn(address, f"{f}.address")
    ports: dict[str, int] = {}
    raw_ports = v.mapping(spec.get("ports"), f"{f}.ports")
    if len(raw_ports) > 128:
        raise v.fail(f"{f}.ports", "at most 128 ports")
    for k, n in raw_ports.items():
        if not isinstance(k, str) or len(k) >= 63 or not v.PORT_KEY.match(k):
            raise v.fail(f"{f}.ports[{k}]", f"port name {k!r} is not a DNS-1123 label")
        ports[k] = v.port(n, f"{f}.ports[{k}]")
    if ports and address.startswith("unix://"):
        raise v.fail(f"{f}.ports", "a unix:// address cannot have ports")
    weight = spec.get("weight", 0)
    return WorkloadEntrySpec(
        address=address,
        ports=ports,
        labels=v.labels(spec.get("labels"), f"{f}.labels"),
        network=network,
        locality=v.string(spec.get("locality"), f"{f}.locality", max_len=2048),
        weight=v.integer(weight, f"{f}.weight", minimum=0, maximum=2**32 - 1) if weight is not None else 0,
        service_account=v.string(spec.get("serviceAccount"), f"{f}.serviceAccount", max_len=253),
    )


def parse_workload_entry(doc: Mapping[str, Any]) -> WorkloadEntry:
    meta = _meta(doc, "WorkloadEntry")
    spec = parse_workload_entry_spec(v.mapping(doc.get("spec"), "spec", required=True), "spec")
    status = v.mapping(doc.get("status"), "status")
    return WorkloadEntry(meta=meta, spec=spec, status=dict(status))


def _probe(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    # One probe model with the agent that runs it (pymesh.mesh.probe); seconds are int32 here.
    try:
        parse_probe(raw, integral_seconds=True)
    except ProbeError as e:
        raise v.fail("spec.probe" + (f".{e.field}" if e.field else ""), e.reason) from None
    return dict(raw)


def parse_workload_group(doc: Mapping[str, Any]) -> WorkloadGroup:
    meta = _meta(doc, "WorkloadGroup")
    spec = v.mapping(doc.get("spec"), "spec", required=True)
    md = v.mapping(spec.get("metadata"), "spec.metadata")
    template = v.mapping(spec.get("template"), "spec.template", required=True)
    probe = spec.get("probe")
    return WorkloadGroup(
        meta=meta,
        template_labels=v.labels(md.get("labels"), "spec.metadata.labels"),
        template_annotations=v.annotation_map(md.get("annotations"), "spec.metadata.annotations"),
        template=parse_workload_entry_spec(template, "spec.template", template=True),
        probe=_probe(v.mapping(probe, "spec.probe")) if probe is not None else None,
    )


# istio/istio pkg/config/protocol/instance.go Parse (what ServiceEntry validation accepts).
SE_PROTOCOLS = (
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "HTTP_PROXY",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
)
RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")


def parse_service_entry(doc: Mapping[str, Any]) -> ServiceEntry:
    meta = _meta(doc, "ServiceEntry")
    spec = v.mapping(doc.get("spec"), "spec", required=True)
    hosts = tuple(
        v.string(h, f"spec.hosts[{i}]", required=True)
        for i, h in enumerate(v.sequence(spec.get("hosts"), "spec.hosts"))
    )
    if not hosts:
        raise v.fail("spec.hosts", "at least one host is required")
    for i, h in enumerate(hosts):
        v.fqdn(h, f"spec.hosts[{i}]", wildcard=True)
    addresses = tuple(
        v.ip_or_cidr(v.string(a, f"spec.addresses[{i}]", required=True), f"spec.addresses[{i}]")
        for i, a in enumerate(v.sequence(spec.get("addresses"), "spec.addresses"))
    )
    ports: list[ServiceEntryPort] = []
    for i, p in enumerate(v.sequence(spec.get("ports"), "spec.ports")):
        f = f"spec.ports[{i}]"
        pm = v.mapping(p, f)
        number = v.port(pm.get("number"), f"{f}.number")
        name = v.string(pm.get("name"), f"{f}.name", required=True)
        # Unset is Istio's "auto", not TCP (pkg/config/validation/validation.go ValidateProtocol:
        # "Empty string is used for protocol sniffing"): kept empty, pymesh.controlplane.protocol decides.
        proto = v.one_of(pm.get("protocol"), f"{f}.protocol", SE_PROTOCOLS, default="")
        tp = pm.get("targetPort")
        target = v.port(tp, f"{f}.targetPort") if tp is not None else 0
        if any(q.name == name for q in ports):
            raise v.fail(f"{f}.name", f"duplicate port name {name!r}")
        if any(q.number == number for q in ports):
            raise v.fail(f"{f}.number", f"duplicate port number {number}")
        ports.append(ServiceEntryPort(number, proto, name, target))
    location = v.one_of(
        spec.get("location"), "spec.location", ("MESH_EXTERNAL", "MESH_INTERNAL"), default="MESH_EXTERNAL"
    )
    resolution = v.one_of(spec.get("resolution"), "spec.resolution", RESOLUTIONS, default="NONE")
    ws = spec.get("workloadSelector")
    selector = (
        v.labels(v.mapping(ws, "spec.workloadSelector").get("labels"), "spec.workloadSelector.labels")
        if ws is not None
        else None
    )
    raw_eps = v.sequence(spec.get("endpoints"), "spec.endpoints")
    if selector is not None and raw_eps:
        raise v.fail("spec.workloadSelector", "cannot be used together with spec.endpoints")
    endpoints = tuple(
        parse_workload_entry_spec(v.mapping(e, f"spec.endpoints[{i}]"), f"spec.endpoints[{i}]")
        for i, e in enumerate(raw_eps)
    )
    for i, e in enumerate(endpoints):
        if resolution == "STATIC" and e.address and not e.address.startswith("unix://") and not v.is_ip(e.address):
            raise v.fail(f"spec.endpoints[{i}].address", "must be an IP address with resolution STATIC")
        for pname in e.ports:
            if not any(p.name == pname for p in ports):
                raise v.fail(f"spec.endpoints[{i}].ports[{pname}]", f"names no port of the ServiceEntry ({pname!r})")
    if resolution in ("DNS", "DNS_ROUND_ROBIN"):
        for i, h in enumerate(hosts):
            if h.startswith("*"):
                raise v.fail(f"spec.hosts[{i}]", f"wildcard host {h!r} cannot be used with resolution {resolution}")
    if resolution == "NONE" and endpoints:
        raise v.fail("spec.endpoints", "endpoints cannot be used with resolution NONE")
    for i, a in enumerate(addresses):
        if "/" in a and resolution != "NONE":
            raise v.fail(f"spec.addresses[{i}]", "CIDR addresses need resolution NONE")
    return ServiceEntry(
        meta=meta,
        hosts=hosts,
        addresses=addresses,
        ports=tuple(ports),
        location=location,
        resolution=resolution,
        workload_selector=selector,
        endpoints=endpoints,
    )


SIMPLE_LB = ("UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST")


def _traffic_policy(raw: Any, f: str) -> TrafficPolicy | None:
    if raw is None:
        return None
    tp = v.mapping(raw, f)
    lb = v.mapping(tp.get("loadBalancer"), f"{f}.loadBalancer")
    simple = ""
    ch: Mapping[str, Any] | None = None
    if lb.get("simple") is not None and lb.get("consistentHash") is not None:
        raise v.fail(f"{f}.loadBalancer", "simple and consistentHash are mutually exclusive")
    if lb.get("simple") is not None:
        simple = v.one_of(lb.get("simple"), f"{f}.loadBalancer.simple", SIMPLE_LB, default="UNSPECIFIED")
        if simple == "UNSPECIFIED":
            simple = ""
    if lb.get("consistentHash") is not None:
        ch = v.mapping(lb["consistentHash"], f"{f}.loadBalancer.consistentHash")
        keys = [k for k in ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName") if ch.get(k)]
        if len(keys) != 1:
            raise v.fail(f"{f}.loadBalancer.consistentHash", "exactly one hash key is required")
        if ch.get("ringHash") is not None and ch.get("maglev") is not None:
            raise v.fail(f"{f}.loadBalancer.consistentHash", "ringHash and maglev are mutually exclusive")
        ring = v.mapping(ch.get("ringHash"), f"{f}.loadBalancer.consistentHash.ringHash")
        if "minimumRingSize" in ring:
            v.integer(ring["minimumRingSize"], f"{f}.loadBalancer.consistentHash.ringHash.minimumRingSize", minimum=0)
        if "minimumRingSize" in ch:
            v.integer(ch["minimumRingSize"], f"{f}.loadBalancer.consistentHash.minimumRingSize", minimum=0)
    loc = lb.get("localityLbSetting")
    locality = None
    if loc is not None:
        locality = v.mapping(loc, f"{f}.loadBalancer.localityLbSetting")
        lf = f"{f}.loadBalancer.localityLbSetting"
        if locality.get("distribute") and locality.get("failover"):
            raise v.fail(lf, "distribute and failover are mutually exclusive")
        for i, fo in enumerate(v.sequence(locality.get("failover"), f"{lf}.failover")):
            fm = v.mapping(fo, f"{lf}.failover[{i}]")
            src = v.string(fm.get("from"), f"{lf}.failover[{i}].from")
            dst = v.string(fm.get("to"), f"{lf}.failover[{i}].to")
            if not src or not dst or src == dst:
                raise v.fail(f"{lf}.failover[{i}]", "from and to are required and must differ")
        for i, d in enumerate(v.sequence(locality.get("distribute"), f"{lf}.distribute")):
            to = v.mapping(v.mapping(d, f"{lf}.distribute[{i}]").get("to"), f"{lf}.distribute[{i}].to")
            weights = [v.integer(w, f"{lf}.distribute[{i}].to[{k}]", minimum=0, maximum=100) for k, w in to.items()]
            if sum(weights) != 100:
                raise v.fail(f"{lf}.distribute[{i}].to", "weights must sum to 100")
    od = tp.get("outlierDetection")
    outlier = None
    if od is not None:
        of = f"{f}.outlierDetection"
        om = v.mapping(od, of)

        def opt_int(key: str, maximum: int | None = None) -> int | None:
            return v.integer(om[key], f"{of}.{key}", minimum=0, maximum=maximum) if key in om else None

        def opt_dur(key: str) -> float | None:
            return v.duration(om[key], f"{of}.{key}") if key in om else None

        outlier = OutlierDetection(
            consecutive_5xx=opt_int("consecutive5xxErrors"),
            consecutive_gateway_errors=opt_int("consecutiveGatewayErrors"),
            interval=opt_dur("interval"),
            base_ejection_time=opt_dur("baseEjectionTime"),
            max_ejection_percent=opt_int("maxEjectionPercent", 100),
            min_health_percent=opt_int("minHealthPercent", 100),
        )
        if outlier.interval is not None and outlier.interval < 0.001:
            raise v.fail(f"{of}.interval", "must be at least 1ms")
    pool = v.mapping(tp.get("connectionPool"), f"{f}.connectionPool")
    http = v.mapping(pool.get("http"), f"{f}.connectionPool.http")
    h2_upgrade = ""
    if http.get("h2UpgradePolicy") is not None:
        h2_upgrade = v.one_of(
            http["h2UpgradePolicy"], f"{f}.connectionPool.http.h2UpgradePolicy", H2_UPGRADE_POLICIES, default="DEFAULT"
        )
    use_client = http.get("useClientProtocol")
    if use_client is not None and not isinstance(use_client, bool):
        raise v.fail(f"{f}.connectionPool.http.useClientProtocol", f"expected true or false, got {use_client!r}")
    return TrafficPolicy(
        simple=simple,
        consistent_hash=ch,
        locality=locality,
        outlier=outlier,
        h2_upgrade=h2_upgrade,
        use_client_protocol=use_client,
    )


def parse_destination_rule(doc: Mapping[str, Any]) -> DestinationRule:
    meta = _meta(doc, "DestinationRule")
    spec = v.mapping(doc.get("spec"), "spec", required=True)
    host = v.fqdn(v.string(spec.get("host"), "spec.host", required=True), "spec.host", wildcard=True)
    subsets: list[Subset] = []
    for i, s in enumerate(v.sequence(spec.get("subsets"), "spec.subsets")):
        f = f"spec.subsets[{i}]"
        sm = v.mapping(s, f)
        name = v.dns1123_label(v.string(sm.get("name"), f"{f}.name", required=True), f"{f}.name")
        if any(x.name == name for x in subsets):
            raise v.fail(f"{f}.name", f"duplicate subset name {name!r}")
        subsets.append(
            Subset(
                name,
                v.labels(sm.get("labels"), f"{f}.labels"),
                _traffic_policy(sm.get("trafficPolicy"), f"{f}.trafficPolicy"),
            )
        )
    return DestinationRule(
        meta=meta,
        host=host,
        policy=_traffic_policy(spec.get("trafficPolicy"), "spec.trafficPolicy"),
        subsets=tuple(subsets),
    )


def _timestamp(value: Any, f: str) -> float | None:
    import datetime

    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):  # YAML reads an unquoted RFC 3339 time as a datetime
        dt = value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
        return dt.timestamp()
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise v.fail(f, f"{value!r} is not an RFC 3339 time")


def parse_peer_authentication(doc: Mapping[str, Any]) -> PeerAuthentication:
    meta = _meta(doc, "PeerAuthentication")
    created = _timestamp(
        v.mapping(doc.get("metadata"), "metadata").get("creationTimestamp"), "metadata.creationTimestamp"
    )
    spec = v.mapping(doc.get("spec"), "spec")  # an empty spec is valid: mode UNSET
    raw_sel = spec.get("selector")
    selector = None
    if raw_sel is not None:
        selector = v.labels(v.mapping(raw_sel, "spec.selector").get("matchLabels"), "spec.selector.matchLabels")
    mtls = v.mapping(spec.get("mtls"), "spec.mtls")
    mode = v.one_of(mtls.get("mode"), "spec.mtls.mode", MTLS_MODES, default="UNSET")
    if spec.get("portLevelMtls"):
        # Not supported on purpose: a VM's inbound listener (the native relay on 15006)
        # applies one mode to every port, so a per-port exception could only be ignored
        # (failing open or closed without saying so). Rejecting names the object; the
        # workload keeps the namespace/mesh mode, or this object's last good version.
        raise v.fail(
            "spec.portLevelMtls",
            "not supported: pymesh applies one mTLS mode to all inbound ports of a workload "
            "(use a workload-selector policy without portLevelMtls)",
        )
    return PeerAuthentication(meta=meta, selector=selector, mode=mode, created=created)


def parse_virtual_service(doc: Mapping[str, Any]) -> VirtualService:
    """:mod:`pymesh.controlplane.virtualservice` holds the model and Istio's rules."""
    meta = _meta(doc, "VirtualService")
    created = _timestamp(
        v.mapping(doc.get("metadata"), "metadata").get("creationTimestamp"), "metadata.creationTimestamp"
    )
    spec = v.mapping(doc.get("spec"), "spec", required=True)
    version = str(doc.get("apiVersion", "")).rpartition("/")[2] or "v1"
    return parse_vs_spec(spec, meta, created, version)


def parse_telemetry(doc: Mapping[str, Any]) -> Telemetry:
    meta = _meta(doc, "Telemetry")
    created = _timestamp(
        v.mapping(doc.get("metadata"), "metadata").get("creationTimestamp"), "metadata.creationTimestamp"
    )
    return Telemetry(meta=meta, spec=parse_telemetry_spec(v.mapping(doc.get("spec"), "spec")), created=created)


PARSERS: dict[str, Callable[[Mapping[str, Any]], Spec]] = {
    "Service": parse_service,
    "Pod": parse_pod,
    "WorkloadGroup": parse_workload_group,
    "WorkloadEntry": parse_workload_entry,
    "ServiceEntry": parse_service_entry,
    "DestinationRule": parse_destination_rule,
    "VirtualService": parse_virtual_service,
    "PeerAuthentication": parse_peer_authentication,
    "Telemetry": parse_telemetry,
}


def _describe(doc: Any, index: int) -> str:
    """How an object is named in errors: ``Kind namespace/name``, or its
    position in the file when it has no usable name."""
    if isinstance(doc, Mapping):
        kind = doc.get("kind") if isinstance(doc.get("kind"), str) else "object"
        md = doc.get("metadata")
        if isinstance(md, Mapping) and isinstance(md.get("name"), str) and md.get("name"):
            ns = md.get("namespace") if isinstance(md.get("namespace"), str) and md.get("namespace") else "default"
            return f"{kind} {ns}/{md['name']}"
        return f"{kind} #{index + 1} in the file"
    return f"document #{index + 1}"


def parse_object(doc: Any, *, source: str = "", index: int = 0) -> Object:
    """Validates one document; errors carry the file and object names."""
    where = _describe(doc, index)
    try:
        if not isinstance(doc, Mapping):
            raise v.fail("", f"a document must be a mapping, not {type(doc).__name__}")
        kind = doc.get("kind")
        api = doc.get("apiVersion")
        if not isinstance(kind, str) or kind not in KINDS:
            raise v.fail("kind", f"unsupported kind {kind!r} (supported: {', '.join(KINDS)})")
        if api not in KINDS[kind][0]:
            raise v.fail("apiVersion", f"{api!r} does not serve {kind} (use one of {', '.join(KINDS[kind][0])})")
        typed = PARSERS[kind](doc)
        # After the typed parse (whose messages name the fields it reads): the fields it does
        # not read, against the kind's schema; what is kept is a fresh copy with nothing unknown.
        raw = schema.check(doc, kind)
    except ValidationError as e:
        raise e.located(file=source, obj=where) from None
    return Object(kind=kind, api_version=str(api), source=source, raw=raw, typed=typed)


@dataclass
class LoadResult:
    objects: list[Object] = field(default_factory=list)
    errors: list[ValidationError] = field(default_factory=list)


def load_documents(text: str, source: str, result: LoadResult, limits: Limits = DEFAULT_LIMITS) -> None:
    """Parses one (multi-document) YAML text into ``result``, through the bounded
    reader (:mod:`pymesh.controlplane.yamlsafe`: alias budget, duplicate keys,
    object size). A YAML syntax error rejects the whole file, since nothing after
    it can be trusted to be what the author meant; any other problem rejects
    one object."""
    try:
        found = list(units(text, limits))
    except YamlSyntaxError as e:
        result.errors.append(ValidationError(f"invalid YAML: {e}", file=source, whole_file=True))
        return
    for u in found:
        if u.problem is not None:
            where = f"object #{u.index + 1} in the file (line {u.line})"
            result.errors.append(ValidationError(f"invalid YAML: {u.problem}", file=source, obj=where))
            continue
        try:
            result.objects.append(parse_object(u.value, source=source, index=u.index))
        except ValidationError as e:
            result.errors.append(e)


FileCache = dict[str, tuple[tuple[int, int, int] | None, LoadResult]]


def load_path(
    path: str | os.PathLike[str],
    cache: FileCache | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    entries: tuple[Entry, ...] | None = None,
    owners: Mapping[tuple[str, str, str], str] | None = None,
) -> LoadResult:
    """Loads every YAML/JSON file under ``path`` (a file or a directory,
    recursively, in sorted order; :func:`pymesh.controlplane.configdir.scan`,
    or ``entries`` from a scan already made). With ``cache`` (path -> (stamp,
    result)), files that did not change are not parsed again: a watcher
    reloading a large config pays only for what changed.

    Duplicates (same kind, namespace, name): the object already held wins,
    i.e. the one from the file that ``owners`` (key -> source) names, else the
    one in the oldest file (then the first path), so adding a file never takes
    an object over; the error names the file whose copy is ignored."""
    result = LoadResult()
    if entries is None:
        try:
            entries = scan(path)
        except ScanError as e:
            result.errors.append(ValidationError(f"cannot read: {e}", file=str(path), whole_file=True))
            return result
    mtimes: dict[str, int] = {}
    for entry in entries:
        name = entry.path
        mtimes[name] = entry.mtime_ns
        if entry.error:
            result.errors.append(ValidationError(f"cannot read: {entry.error}", file=name, whole_file=True))
            continue
        hit = cache.get(name) if cache is not None else None
        if hit is not None and hit[0] == entry.stamp:
            part = hit[1]
        else:
            part = LoadResult()
            try:
                load_documents(read(entry, limits.max_file_bytes), name, part, limits)
            except OSError as e:
                # Not cached: a transient error (EMFILE) must be retried, not remembered.
                result.errors.append(
                    ValidationError(
                        f"cannot read: {e.strerror or e}", file=name, whole_file=True, transient=transient(e)
                    )
                )
                continue
            except ValueError as e:  # too large, or not UTF-8
                part.errors.append(ValidationError(f"cannot read: {e}", file=name, whole_file=True))
            if cache is not None:
                cache[name] = (entry.stamp, part)
        result.objects.extend(part.objects)
        result.errors.extend(part.errors)
    if cache is not None:
        live = {e.path for e in entries}
        for gone in set(cache) - live:
            del cache[gone]
    by_key: dict[tuple[str, str, str], list[Object]] = {}
    for o in result.objects:
        by_key.setdefault(o.key, []).append(o)
    held = owners or {}
    unique: list[Object] = []
    for key, group in by_key.items():
        winner = group[0]
        if len(group) > 1:
            owner = held.get(key)
            winner = next(
                (o for o in group if o.source == owner),
                min(group, key=lambda o: (mtimes.get(o.source, 0), o.source)),
            )
            for o in group:
                if o is not winner:
                    result.errors.append(
                        ValidationError(
                            f"duplicate: {key[0]} {key[1]}/{key[2]} is already defined in {winner.source}; "
                            "this copy is ignored (the object held first stays)",
                            file=o.source,
                            obj=f"{key[0]} {key[1]}/{key[2]}",
                        )
                    )
        unique.append(winner)
    result.objects = unique
    return result
