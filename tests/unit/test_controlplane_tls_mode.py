"""Endpoint tlsMode as istiod decides it ("mTLS fails open", the
control plane's part): istio/istio ``PodTLSMode`` (pilot/pkg/serviceregistry/kube/
conversion.go) over ``GetTLSModeFromEndpointLabels`` (pilot/pkg/model/service.go)
for pods, ``getTLSModeFromWorkloadEntry`` (pilot/pkg/serviceregistry/serviceentry/
conversion.go) for WorkloadEntries and inline endpoints, ``disabled`` for the
hostname endpoint of a DNS ServiceEntry. The EDS metadata carries the mode."""

from __future__ import annotations

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from pymesh.controlplane import generators as gen
from pymesh.controlplane.registry import build_registry
from pymesh.controlplane.resources import LoadResult, load_documents

CONFIG = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.30, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: injected, namespace: default, labels: {app: web, security.istio.io/tlsMode: istio}}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: default, labels: {app: web}}
spec: {serviceAccountName: web}
status: {podIP: 10.0.1.2}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-sa, namespace: default}
spec: {address: 10.0.1.3, labels: {app: web}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-plain, namespace: default}
spec: {address: 10.0.1.4, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-label, namespace: default}
spec: {address: 10.0.1.5, labels: {app: web, security.istio.io/tlsMode: disabled}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec: {hosts: [ext.example.com], resolution: DNS, ports: [{number: 443, name: tls}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inline, namespace: default}
spec:
  hosts: [inline.example.com]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.2.1, serviceAccount: db}, {address: 10.0.2.2}]
"""


def modes(host: str, port: int) -> dict[str, str | None]:
    r = LoadResult()
    load_documents(CONFIG, "t.yaml", r)
    assert r.errors == []
    reg = build_registry(r.objects)
    cla = ClusterLoadAssignment.FromString(
        gen.endpoints(reg, gen.EdsView())[f"outbound|{port}||{host}"].SerializeToString()
    )
    out: dict[str, str | None] = {}
    for loc in cla.endpoints:
        for e in loc.lb_endpoints:
            md = e.metadata.filter_metadata
            tls = (
                md["envoy.transport_socket_match"].fields["tlsMode"].string_value
                if "envoy.transport_socket_match" in md
                else None
            )
            out[e.endpoint.address.socket_address.address] = tls
    return out


def test_pods_without_the_label_have_no_sidecar_and_entries_follow_their_account() -> None:
    assert modes("web.default.svc.cluster.local", 80) == {
        "10.0.1.1": "istio",  # the injector's label
        "10.0.1.2": None,  # no label: no sidecar, whatever its account (PodTLSMode)
        "10.0.1.3": "istio",  # a serviceAccount means a sidecar (getTLSModeFromWorkloadEntry)
        "10.0.1.4": None,
        "10.0.1.5": None,  # the label wins over the account
    }


def test_service_entry_endpoints() -> None:
    r = LoadResult()
    load_documents(CONFIG, "t.yaml", r)
    reg = build_registry(r.objects)
    # A DNS ServiceEntry without endpoints: its host is the endpoint, resolved by the client, plaintext.
    assert [(e.address, e.tls_mode) for e in reg.endpoints[("ext.example.com", 443)]] == [
        ("ext.example.com", "disabled")
    ]
    assert modes("inline.example.com", 80) == {"10.0.2.1": "istio", "10.0.2.2": None}
