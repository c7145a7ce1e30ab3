"""Service association: which workloads back which service port.

Built from the configured objects plus the registered WorkloadEntries into
one immutable :class:`Registry` snapshot (a new one per change; generators
and connections read a snapshot and never see a half-applied change).

Rules (istio/istio ``pilot/pkg/serviceregistry/kube/controller/endpointslice.go`` and
``pilot/pkg/serviceregistry/serviceentry/conversion.go``, ``workloadinstances``):
- A Kubernetes Service with a selector selects ready pods in its namespace
  and, when not headless, WorkloadEntries in its namespace that have at
  least one label and an IP address (``WorkloadEntry`` selection in
  ``serviceentry/controller.go``). Endpoint port for an entry:
  ``ports[<service port name>]`` else the numeric targetPort; a named
  targetPort maps through ``ports[<targetPort>]`` and the entry is skipped
  for that port when it lacks it. Pods map named targetPorts through their
  container ports.
- A ServiceEntry's ``workloadSelector`` selects entries and pods in its
  namespace (FQDN/unix entries only for DNS resolution); its inline
  ``endpoints`` otherwise. Port: ``ports[<SE port name>]`` > targetPort >
  number (``convertWorkloadEntryToServiceInstances``).
- ``tlsMode`` (the EDS ``envoy.transport_socket_match`` value a client uses to
  choose mTLS) as istiod decides it: a pod's ``security.istio.io/tlsMode``
  label, else ``disabled`` (the injector adds the label to the pods it gives a
  sidecar, so a pod without it has none: ``PodTLSMode`` in
  ``pilot/pkg/serviceregistry/kube/conversion.go``, ``GetTLSModeFromEndpointLabels``
  in ``pilot/pkg/model/service.go``); a WorkloadEntry's (or inline endpoint's)
  label, else ``istio`` when it names a serviceAccount, else ``disabled``
  (``getTLSModeFromWorkloadEntry`` in ``serviceentry/conversion.go``); the
  hostname endpoint of a DNS ServiceEntry without endpoints ``disabled``. So
  plaintext workloads stay reachable and mesh workloads always get mTLS.
- An entry with ``proxy.istio.io/health-checks-enabled: "true"`` is an
  endpoint only while its ``Healthy`` condition is ``True`` (``IsHealthy`` in
  ``pilot/pkg/serviceregistry/serviceentry/conversion.go``; a missing
  condition counts as unhealthy).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymesh.controlplane import peerauth
from pymesh.controlplane import protocol as protomod
from pymesh.controlplane import telemetry as telemod
from pymesh.controlplane import vips as vipmod
from pymesh.controlplane import virtualservice as vsmod
from pymesh.controlplane.networks import (
    DEFAULT_CLUSTER_ID,
    NETWORK_LABEL,
    MeshNetworks,
    NetworkGateways,
    discover_gateways,
)
from pymesh.controlplane.resources import (
    DestinationRule,
    Object,
    PeerAuthentication,
    Pod,
    Service,
    ServiceEntry,
    ServiceEntryPort,
    ServicePort,
    Telemetry,
    WorkloadEntry,
    WorkloadEntrySpec,
    WorkloadGroup,
)
from pymesh.controlplane.validation import is_ip
from pymesh.mesh.defaults import DEFAULT_DOMAIN, DEFAULT_TRUST_DOMAIN
from pymesh.mesh.identity import workload_spiffe
from pymesh.mesh.values import truthy

log = logging.getLogger("pymesh.controlplane")

HEALTH_CHECKS_ANNOTATION = "proxy.istio.io/health-checks-enabled"
AUTO_GROUP_ANNOTATION = "istio.io/autoRegistrationGroup"
WORKLOAD_NAME_LABEL = "service.istio.io/workload-name"
TLS_MODE_LABEL = "security.istio.io/tlsMode"
LOCALITY_LABEL = "topology.istio.io/locality"


@dataclass(frozen=True)
class Port:
    name: str
    number: int
    protocol: str  # as configured: a Service port's TCP/UDP/SCTP, a ServiceEntry port's (may be "")
    # The protocol Istio gives the port (pymesh.controlplane.protocol): a Service port's from its
    # appProtocol or name, a ServiceEntry port's as declared; AUTO (sniffed) when unknown.
    istio_protocol: str = protomod.AUTO


@dataclass(frozen=True)
class ServiceModel:
    """One hostname the mesh knows, with its addresses and ports."""

    hostname: str
    namespace: str
    name: str  # Service name, or the ServiceEntry's name
    registry: str  # "Kubernetes" | "External" (the NDS registry values)
    addresses: tuple[str, ...]  # ClusterIPs / ServiceEntry addresses
    auto_addresses: tuple[str, ...]  # auto-allocated VIPs (v4, v6)
    resolution: str  # ClientSideLB | Passthrough | DNS | DNS_ROUND_ROBIN | DYNAMIC_DNS
    ports: tuple[Port, ...]
    external: bool = False


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    labels: Mapping[str, str]
    locality: str
    network: str
    weight: int
    service_account: str  # SPIFFE URI, "" when none
    tls_mode: str  # "istio" | "disabled"
    kind: str  # "Pod" | "WorkloadEntry" | "ServiceEntry"
    namespace: str
    name: str
    hostname: str = ""  # pod hostname for headless per-pod names
    subdomain: str = ""
    # The workload name telemetry reports (istio.workload metadata); "": the name.
    workload: str = ""


@dataclass(frozen=True)
class Registry:
    services: tuple[ServiceModel, ...]
    by_host: Mapping[str, ServiceModel]
    endpoints: Mapping[tuple[str, int], tuple[Endpoint, ...]]  # (hostname, service port) -> endpoints
    destination_rules: Mapping[str, DestinationRule]  # exact hostname -> rule
    wildcard_rules: tuple[tuple[str, DestinationRule], ...]  # ("*.suffix", rule), most specific first
    groups: Mapping[tuple[str, str], WorkloadGroup] = field(default_factory=dict)
    domain: str = DEFAULT_DOMAIN
    # PeerAuthentications by namespace, oldest first (pymesh.controlplane.peerauth).
    peer_authentications: Mapping[str, tuple[PeerAuthentication, ...]] = field(default_factory=dict)
    root_namespace: str = "istio-system"
    # Network gateways (pymesh.controlplane.networks) and the cluster every endpoint here is in.
    gateways: NetworkGateways = field(default_factory=NetworkGateways)
    cluster_id: str = DEFAULT_CLUSTER_ID
    # VirtualServices bound to `mesh`, by resolved host (pymesh.controlplane.virtualservice).
    virtual_services: vsmod.Index = field(default_factory=lambda: vsmod.index((), DEFAULT_DOMAIN))
    # Telemetry objects by namespace, oldest first, and meshConfig's access log (pymesh.controlplane.telemetry).
    telemetries: Mapping[str, tuple[tuple[Any, telemod.TelemetrySpec], ...]] = field(default_factory=dict)
    mesh_access_log: telemod.MeshAccessLog = field(default_factory=telemod.MeshAccessLog)
    # (hostname, service port) -> the health-excluded WorkloadEntries that would serve it, each
    # with its Healthy condition's message ("" when none): never in EDS; the dashboard shows them.
    unhealthy: Mapping[tuple[str, int], tuple[tuple[Endpoint, str], ...]] = field(default_factory=dict)

    def access_log(self, namespace: str, labels: Mapping[str, str]) -> tuple[str, str] | None:
        """The access log a workload writes ((file, TEXT | JSON)), or None."""
        return telemod.effective(
            self.telemetries, self.root_namespace, self.mesh_access_log, namespace, labels
        ).access_log

    def peer_authentication(self, namespace: str, labels: Mapping[str, str]) -> str:
        """The effective inbound mTLS mode of a workload: STRICT, PERMISSIVE or DISABLE."""
        return peerauth.effective_mode(self.peer_authentications, self.root_namespace, namespace, labels).mode

    def destination_rule(self, host: str) -> DestinationRule | None:
        rule = self.destination_rules.get(host)
        if rule is not None:
            return rule
        for pattern, r in self.wildcard_rules:
            if pattern == "*" or host.endswith(pattern[1:]):
                return r
        return None


def health_excluded(entry: WorkloadEntry) -> bool:
    """Health-checked entries serve only while Healthy is True (istiod ``IsHealthy``)."""
    flag = entry.meta.annotations.get(HEALTH_CHECKS_ANNOTATION)
    if flag is None or not truthy(flag):
        return False
    cond = entry.condition("Healthy")
    return cond is None or str(cond.get("status")) != "True"


def _locality(spec_locality: str, labels: Mapping[str, str]) -> str:
    if spec_locality:
        return spec_locality
    loc = labels.get(LOCALITY_LABEL) or labels.get("istio-locality") or ""
    return loc.replace(".", "/")


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == val for k, val in selector.items())


@dataclass(frozen=True)
class _Workload:
    """A pod or WorkloadEntry as a workload instance (istiod ``model.WorkloadInstance``)."""

    kind: str
    namespace: str
    name: str
    address: str
    labels: Mapping[str, str]
    ports: Mapping[str, int]  # entry port map / pod named container ports
    locality: str
    network: str
    weight: int
    service_account: str
    tls_mode: str
    hostname: str = ""
    subdomain: str = ""
    workload: str = ""

    @property
    def dns_only(self) -> bool:
        return not is_ip(self.address)


def tls_mode_of_pod(labels: Mapping[str, str]) -> str:
    """istiod's ``PodTLSMode``: the label when present (any value), else disabled."""
    return labels[TLS_MODE_LABEL] if TLS_MODE_LABEL in labels else "disabled"


def tls_mode_of_entry(labels: Mapping[str, str], service_account: str) -> str:
    """istiod's ``getTLSModeFromWorkloadEntry``: the label, else istio with a serviceAccount."""
    if TLS_MODE_LABEL in labels:
        return labels[TLS_MODE_LABEL]
    return "istio" if service_account else "disabled"


def entry_workload_name(name: str, labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    """istiod's workload name for a WorkloadEntry (istio/istio pkg/kube/labels
    ``WorkloadNameFromWorkloadEntry``): its auto-registration group, else the label
    ``service.istio.io/workload-name``, else the entry's name. An auto-registered VM is
    then one workload whether it reports (its own WORKLOAD_NAME is the group) or is
    reported on."""
    return annotations.get(AUTO_GROUP_ANNOTATION) or labels.get(WORKLOAD_NAME_LABEL) or name


def _entry_workload(
    ns: str, name: str, spec: WorkloadEntrySpec, kind: str, trust_domain: str, workload: str = ""
) -> _Workload:
    labels = dict(spec.labels)
    tls = tls_mode_of_entry(labels, spec.service_account)
    if spec.network and NETWORK_LABEL not in labels:
        labels[NETWORK_LABEL] = spec.network
    return _Workload(
        kind=kind,
        namespace=ns,
        name=name,
        address=spec.address,
        labels=labels,
        ports=spec.ports,
        locality=_locality(spec.locality, spec.labels),
        network=spec.network,
        weight=spec.weight or 1,
        service_account=workload_spiffe(ns, spec.service_account, trust_domain),
        tls_mode=tls,
        workload=workload,
    )


def _pod_workload(pod: Pod, trust_domain: str, mesh: MeshNetworks, cluster_id: str) -> _Workload:
    labels = pod.meta.labels
    # istiod's Controller.Network: the pod's label, else meshNetworks (fromRegistry, then fromCidr).
    network = labels.get(NETWORK_LABEL, "") or mesh.network_of(pod.ip, cluster_id)
    return _Workload(
        kind="Pod",
        namespace=pod.meta.namespace,
        name=pod.meta.name,
        address=pod.ip,
        labels=labels,
        ports=pod.container_ports,
        locality=_locality("", labels),
        network=network,
        weight=1,
        service_account=workload_spiffe(pod.meta.namespace, pod.service_account, trust_domain),
        tls_mode=tls_mode_of_pod(labels),
        hostname=pod.hostname,
        subdomain=pod.subdomain,
    )


def _endpoint(w: _Workload, port: int) -> Endpoint:
    return Endpoint(
        address=w.address,
        port=port,
        labels=w.labels,
        locality=w.locality,
        network=w.network,
        weight=w.weight,
        service_account=w.service_account,
        tls_mode=w.tls_mode,
        kind=w.kind,
        namespace=w.namespace,
        name=w.name,
        hostname=w.hostname,
        subdomain=w.subdomain,
        workload=w.workload,
    )


class _Index:
    """Workloads by (namespace, label, value): a selector is matched against
    the smallest bucket of its labels instead of every workload (1,000
    services x 2,000 pods would otherwise be 2M label comparisons per build)."""

    def __init__(self, workloads: list[_Workload]) -> None:
        self.by_ns: dict[str, list[_Workload]] = {}
        self.by_label: dict[tuple[str, str, str], list[_Workload]] = {}
        for w in workloads:
            self.by_ns.setdefault(w.namespace, []).append(w)
            for k, val in w.labels.items():
                self.by_label.setdefault((w.namespace, k, val), []).append(w)

    def select(self, namespace: str, selector: Mapping[str, str]) -> list[_Workload]:
        if not selector:
            return self.by_ns.get(namespace, [])
        buckets = [self.by_label.get((namespace, k, val), []) for k, val in selector.items()]
        smallest = min(buckets, key=len)
        return [w for w in smallest if _selects(selector, w.labels)]


def _entry_endpoints(selected: Iterable[_Workload], sp: ServicePort) -> list[Endpoint]:
    """A Service port's endpoints among the WorkloadEntries its selector picked (same namespace):
    those with at least one label and an IP address, on ``ports[<port name>]`` else the numeric
    targetPort; a named targetPort maps through ``ports[<targetPort>]``."""
    eps = []
    for w in selected:
        if not w.labels or w.dns_only:
            continue
        if isinstance(sp.target_port, int):
            port = w.ports.get(sp.name, sp.target_port) if sp.name else sp.target_port
        else:
            got = w.ports.get(sp.target_port)
            if got is None:
                continue  # a named targetPort the entry does not map: skipped for this port
            port = got
        eps.append(_endpoint(w, port))
    return eps


def _se_port(w: _Workload, p: ServiceEntryPort) -> int:
    """A ServiceEntry port's endpoint port for a selected workload or inline endpoint."""
    if w.address.startswith("unix://"):
        return 0
    return w.ports.get(p.name) or p.target_port or p.number


def _sort_key(w: _Workload) -> tuple[str, str, str]:
    # Selected workloads are ordered by kind, namespace, name (stable endpoint order).
    return (w.kind, w.namespace, w.name)


def build_registry(
    objects: Iterable[Object],
    registered: Iterable[WorkloadEntry] = (),
    *,
    vips: vipmod.VipAllocator | None = None,
    domain: str = DEFAULT_DOMAIN,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    root_namespace: str = "istio-system",
    mesh_networks: MeshNetworks | None = None,
    cluster_id: str = DEFAULT_CLUSTER_ID,
    mesh_access_log: telemod.MeshAccessLog | None = None,
) -> Registry:
    """Associates services with workloads. ``registered`` entries (auto
    registration) join the configured ones; the same name in both keeps the
    configured one. ``vips`` provides (and records) auto-allocated VIPs."""
    services: list[Service] = []
    pods: list[Pod] = []
    entries: dict[tuple[str, str], WorkloadEntry] = {}
    service_entries: list[ServiceEntry] = []
    rules: list[DestinationRule] = []
    groups: dict[tuple[str, str], WorkloadGroup] = {}
    peer_auth: list[PeerAuthentication] = []
    virtual_services: list[vsmod.VirtualService] = []
    telemetries: list[Telemetry] = []
    for o in objects:
        t = o.typed
        if isinstance(t, Service):
            services.append(t)
        elif isinstance(t, Pod):
            pods.append(t)
        elif isinstance(t, WorkloadEntry):
            entries[(t.meta.namespace, t.meta.name)] = t
        elif isinstance(t, ServiceEntry):
            service_entries.append(t)
        elif isinstance(t, DestinationRule):
            rules.append(t)
        elif isinstance(t, WorkloadGroup):
            groups[(t.meta.namespace, t.meta.name)] = t
        elif isinstance(t, PeerAuthentication):
            peer_auth.append(t)
        elif isinstance(t, vsmod.VirtualService):
            virtual_services.append(t)
        elif isinstance(t, Telemetry):
            telemetries.append(t)
            for f in t.spec.unapplied:
                log.warning(
                    "Telemetry %s/%s: spec.%s is kept but not applied by pymesh", t.meta.namespace, t.meta.name, f
                )
    for r in registered:
        entries.setdefault((r.meta.namespace, r.meta.name), r)

    workloads: list[_Workload] = []
    excluded: list[_Workload] = []
    messages: dict[tuple[str, str], str] = {}
    for e in entries.values():
        wl = entry_workload_name(e.meta.name, e.spec.labels, e.meta.annotations)
        w = _entry_workload(e.meta.namespace, e.meta.name, e.spec, "WorkloadEntry", trust_domain, wl)
        if health_excluded(e):
            excluded.append(w)
            messages[(w.namespace, w.name)] = str((e.condition("Healthy") or {}).get("message") or "")
        else:
            workloads.append(w)
    entry_workloads = sorted(workloads, key=_sort_key)
    excluded_index = _Index(sorted(excluded, key=_sort_key))
    unhealthy: dict[tuple[str, int], tuple[tuple[Endpoint, str], ...]] = {}

    def down(key: tuple[str, int], eps: Iterable[Endpoint]) -> None:
        got = tuple((ep, messages[(ep.namespace, ep.name)]) for ep in eps)
        if got:
            unhealthy[key] = got

    mesh = mesh_networks or MeshNetworks()
    ready_pods = sorted(
        (_pod_workload(p, trust_domain, mesh, cluster_id) for p in pods if p.ip and p.ready), key=_sort_key
    )
    all_pods = {(p.meta.namespace, p.meta.name): p for p in pods}
    pod_index, entry_index = _Index(ready_pods), _Index(entry_workloads)

    models: dict[str, ServiceModel] = {}
    endpoints: dict[tuple[str, int], tuple[Endpoint, ...]] = {}

    for svc in sorted(services, key=lambda s: (s.meta.namespace, s.meta.name)):
        host = f"{svc.meta.name}.{svc.meta.namespace}.svc.{domain}"
        model = ServiceModel(
            hostname=host,
            namespace=svc.meta.namespace,
            name=svc.meta.name,
            registry="Kubernetes",
            addresses=svc.cluster_ips,
            auto_addresses=(),
            resolution="Passthrough" if svc.headless else "ClientSideLB",
            ports=tuple(
                Port(
                    p.name, p.port, p.protocol, protomod.of_kubernetes_port(p.port, p.name, p.protocol, p.app_protocol)
                )
                for p in svc.ports
            ),
        )
        models[host] = model
        if svc.selector is None:
            continue
        ns = svc.meta.namespace
        for sp in svc.ports:
            eps: list[Endpoint] = []
            for w in pod_index.select(ns, svc.selector):
                pod = all_pods[(w.namespace, w.name)]
                target = sp.target_port if isinstance(sp.target_port, int) else pod.container_ports.get(sp.target_port)
                if target is not None:
                    eps.append(_endpoint(w, target))
            if not svc.headless:
                eps += _entry_endpoints(entry_index.select(ns, svc.selector), sp)
                down((host, sp.port), _entry_endpoints(excluded_index.select(ns, svc.selector), sp))
            endpoints[(host, sp.port)] = tuple(eps)

    auto_hosts = [h for se in service_entries for h in se.hosts if vipmod.wants_vip(se, h)]
    if vips is not None:
        vips.allocate(auto_hosts)
    for se in sorted(service_entries, key=lambda s: (s.meta.namespace, s.meta.name)):
        ns = se.meta.namespace
        selected: list[_Workload] = []
        selected_down: list[_Workload] = []
        if se.workload_selector is not None:
            dns = se.resolution in ("DNS", "DNS_ROUND_ROBIN")
            for w in [*pod_index.select(ns, se.workload_selector), *entry_index.select(ns, se.workload_selector)]:
                if dns or not w.dns_only:
                    selected.append(w)
            selected.sort(key=_sort_key)
            selected_down = [w for w in excluded_index.select(ns, se.workload_selector) if dns or not w.dns_only]
        else:
            for i, spec in enumerate(se.endpoints):
                selected.append(_entry_workload(ns, f"{se.meta.name}-{i}", spec, "ServiceEntry", trust_domain))
        for host in se.hosts:
            if host in models:
                existing = models[host]
                if existing.registry == "Kubernetes":
                    continue  # a Kubernetes Service wins over a ServiceEntry for the same host
                log.warning("ServiceEntry %s/%s: host %s already defined; first one kept", ns, se.meta.name, host)
                continue
            pair = vips.get(host) if vips is not None and vipmod.wants_vip(se, host) else None
            models[host] = ServiceModel(
                hostname=host,
                namespace=ns,
                name=se.meta.name,
                registry="External",
                addresses=tuple(a for a in se.addresses),
                auto_addresses=pair or (),
                resolution="Passthrough" if se.resolution == "NONE" else se.resolution,
                ports=tuple(Port(p.name, p.number, p.protocol, protomod.parse(p.protocol)) for p in se.ports),
                external=se.location == "MESH_EXTERNAL",
            )
            if se.resolution == "NONE":
                continue
            for p in se.ports:
                eps = [_endpoint(w, _se_port(w, p)) for w in selected]
                down((host, p.number), (_endpoint(w, _se_port(w, p)) for w in selected_down))
                if not eps and se.resolution in ("DNS", "DNS_ROUND_ROBIN") and not host.startswith("*"):
                    # A DNS ServiceEntry without endpoints resolves its own host.
                    eps.append(
                        Endpoint(
                            host,
                            p.target_port or p.number,
                            {},
                            "",
                            "",
                            1,
                            "",
                            "disabled",
                            "ServiceEntry",
                            ns,
                            se.meta.name,
                        )
                    )
                endpoints[(host, p.number)] = tuple(eps)

    exact: dict[str, DestinationRule] = {}
    wild: list[tuple[str, DestinationRule]] = []
    for dr in sorted(rules, key=lambda r: (r.meta.namespace, r.meta.name)):
        host = dr.host
        if "." not in host and not host.startswith("*"):
            host = f"{host}.{dr.meta.namespace}.svc.{domain}"  # short names are relative to the rule's namespace
        rule_svc = models.get(host)
        if host.startswith("*"):
            wild.append((host, dr))
        elif host in exact:
            # Istio prefers the rule in the service's own namespace.
            if rule_svc is not None and dr.meta.namespace == rule_svc.namespace != exact[host].meta.namespace:
                exact[host] = dr
        else:
            exact[host] = dr
    wild.sort(key=lambda p: -len(p[0]))
    pa_index = peerauth.index(peer_auth)
    for name in peerauth.ignored(pa_index, root_namespace):
        log.warning("PeerAuthentication %s: a workload selector in the root namespace is ignored (as in Istio)", name)
    vs_index = vsmod.index(virtual_services, domain)
    for conflict in vs_index.conflicts:
        log.warning("%s", conflict)
    ordered = tuple(sorted(models.values(), key=lambda m: m.hostname))
    return Registry(
        services=ordered,
        by_host={m.hostname: m for m in ordered},
        endpoints=endpoints,
        destination_rules=exact,
        wildcard_rules=tuple(wild),
        groups=groups,
        domain=domain,
        peer_authentications=pa_index,
        root_namespace=root_namespace,
        gateways=discover_gateways(
            ((f"{s.meta.name}.{s.meta.namespace}.svc.{domain}", s) for s in services), mesh, cluster_id
        ),
        cluster_id=cluster_id,
        virtual_services=vs_index,
        telemetries=telemod.index((t.meta, t.spec, t.created) for t in telemetries),
        mesh_access_log=mesh_access_log or telemod.MeshAccessLog(),
        unhealthy=unhealthy,
    )


def family(address: str) -> int:
    return ipaddress.ip_address(address).version
