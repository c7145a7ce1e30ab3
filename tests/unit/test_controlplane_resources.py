"""Resources, validation and service association (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pymesh import PymeshError
from pymesh.controlplane import ValidationError
from pymesh.controlplane.registry import build_registry
from pymesh.controlplane.resources import (
    LoadResult,
    ServiceEntry,
    WorkloadGroup,
    kind_of,
    load_documents,
    load_path,
    parse_object,
)
from pymesh.controlplane.store import Store
from pymesh.controlplane.vips import VipAllocator
from support.paths import EXAMPLE_MESH

EXAMPLE = EXAMPLE_MESH


def objs(text: str) -> list[Any]:
    r = LoadResult()
    load_documents(text, "test.yaml", r)
    assert r.errors == [], [str(e) for e in r.errors]
    return r.objects


def test_example_mesh_loads_clean() -> None:
    r = load_path(EXAMPLE)
    assert r.errors == []
    assert sorted(o.key for o in r.objects) == [
        ("DestinationRule", "default", "product"),
        ("Pod", "default", "product-pod-0"),
        ("Service", "default", "product"),
        ("ServiceEntry", "default", "payments-api"),
        ("WorkloadGroup", "default", "product-vm"),
    ]


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_istio_kinds_are_served_under_three_versions(version: str) -> None:
    doc = {
        "apiVersion": f"networking.istio.io/{version}",
        "kind": "WorkloadEntry",
        "metadata": {"name": "we1", "namespace": "ns1"},
        "spec": {"address": "10.0.0.1", "labels": {"app": "a"}},
    }
    assert parse_object(doc).key == ("WorkloadEntry", "ns1", "we1")


def test_kind_names_like_kubectl() -> None:
    assert kind_of("we") == kind_of("workloadentries") == kind_of("WorkloadEntry") == "WorkloadEntry"
    assert kind_of("svc") == "Service" and kind_of("se") == "ServiceEntry" and kind_of("dr") == "DestinationRule"
    assert kind_of("nonsense") is None


INVALID = [
    ("apiVersion: v2\nkind: Service\nmetadata: {name: a}\nspec: {}", "apiVersion"),
    ("apiVersion: v1\nkind: Gadget\nmetadata: {name: a}", "kind"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: 1abc}\nspec: {}", "metadata.name"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0}]}", "spec.ports[0].port"),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}, {port: 81}]}",
        "spec.ports[0].name",
    ),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, targetPort: Bad_Name}]}",
        "targetPort",
    ),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.0.0.300}", "spec.clusterIP"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {selector: {app: 5}}", "spec.selector[app]"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: nope}", "status.podIP"),
    ("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\nspec: {}", "spec.address"),
    (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\n"
        "spec: {address: 'unix:///run/x.sock', ports: {http: 80}}",
        "spec.ports",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\n"
        "spec: {address: 10.0.0.1, ports: {http: 70000}}",
        "spec.ports[http]",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\nspec: {address: 'unix://rel'}",
        "spec.address",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\nspec: {address: '*.x.com'}",
        "spec.address",
    ),
    ("apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: a}\nspec: {}", "spec.template"),
    (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: a}\n"
        "spec: {template: {}, probe: {httpGet: {port: 80}, tcpSocket: {port: 80}}}",
        "spec.probe",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: a}\n"
        "spec: {template: {}, probe: {periodSeconds: -1, tcpSocket: {port: 80}}}",
        "spec.probe.periodSeconds",
    ),
    ("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {hosts: []}", "spec.hosts"),
    (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n"
        "spec: {hosts: ['*.x.com'], resolution: DNS, ports: [{number: 80, name: http}]}",
        "spec.hosts[0]",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n"
        "spec: {hosts: [a.com], resolution: STATIC, workloadSelector: {labels: {app: a}},"
        " endpoints: [{address: 1.1.1.1}]}",
        "spec.workloadSelector",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n"
        "spec: {hosts: [a.com], resolution: STATIC, endpoints: [{address: b.com}]}",
        "spec.endpoints[0].address",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n"
        "spec: {hosts: [a.com], resolution: MAGIC}",
        "spec.resolution",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\n"
        "spec: {host: a, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}}}",
        "spec.trafficPolicy.loadBalancer",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\n"
        "spec: {host: a, trafficPolicy: {outlierDetection: {interval: ten}}}",
        "spec.trafficPolicy.outlierDetection.interval",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\n"
        "spec: {host: a, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r1}]}}}}",
        "localityLbSetting.failover[0]",
    ),
    (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\n"
        "spec: {host: a, subsets: [{name: v1}, {name: v1}]}",
        "spec.subsets[1].name",
    ),
]


@pytest.mark.parametrize(("text", "field"), INVALID)
def test_invalid_objects_name_file_object_and_field(text: str, field: str) -> None:
    r = LoadResult()
    load_documents(text, "conf/bad.yaml", r)
    assert r.objects == []
    (err,) = r.errors
    assert isinstance(err, PymeshError) and isinstance(err, ValidationError)
    assert err.file == "conf/bad.yaml"
    assert field in err.field, str(err)
    assert str(err).startswith("conf/bad.yaml: ")
    doc = yaml.safe_load(text)
    assert err.obj.startswith(str(doc.get("kind")))


def test_one_bad_object_does_not_reject_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {ports: [{port: 80}]}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: -1}]}\n"
    )
    (tmp_path / "b.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {}\n")
    r = load_path(tmp_path)
    assert [o.key for o in r.objects] == [("Service", "default", "good")]
    msgs = sorted(str(e) for e in r.errors)
    assert any("Service default/bad" in m and "spec.ports[0].port" in m for m in msgs)
    assert any("duplicate" in m and "b.yaml" in m and "a.yaml" in m for m in msgs)


SERVICE_AND_WORKLOADS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns1}
spec:
  clusterIP: 10.96.1.1
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: admin, port: 9000, targetPort: admin-port}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: ns1, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: admin-port, containerPort: 9901}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web-notready, namespace: ns1, labels: {app: web}}
status: {podIP: 10.0.0.2, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-mapped, namespace: ns1}
spec: {address: 10.0.1.1, labels: {app: web}, ports: {http: 18080, admin-port: 19901}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-plain, namespace: ns1}
spec: {address: 10.0.1.2, labels: {app: web}, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-other-ns, namespace: ns2}
spec: {address: 10.0.1.3, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-unhealthy, namespace: ns1, annotations: {proxy.istio.io/health-checks-enabled: "true"}}
spec: {address: 10.0.1.4, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-healthy, namespace: ns1, annotations: {proxy.istio.io/health-checks-enabled: "true"}}
spec: {address: 10.0.1.5, labels: {app: web}}
status: {conditions: [{type: Healthy, status: "True"}]}
"""


def test_service_port_mapping_for_pods_and_workload_entries() -> None:
    reg = build_registry(objs(SERVICE_AND_WORKLOADS))
    host = "web.ns1.svc.cluster.local"
    http = {(e.name, e.address, e.port) for e in reg.endpoints[(host, 80)]}
    assert http == {
        ("web-0", "10.0.0.1", 8080),  # numeric targetPort
        ("vm-mapped", "10.0.1.1", 18080),  # entry ports[<service port name>] overrides targetPort
        ("vm-plain", "10.0.1.2", 8080),
        ("vm-healthy", "10.0.1.5", 8080),  # health-checked and Healthy; vm-unhealthy has no condition: excluded
    }
    admin = {(e.name, e.port) for e in reg.endpoints[(host, 9000)]}
    # Named targetPort: pods map it through container ports; entries through ports[<name>], else skipped.
    assert admin == {("web-0", 9901), ("vm-mapped", 19901)}
    # The excluded entry, where it would serve (for the dashboard), with its condition's message (none).
    assert [(e.name, e.port, message) for e, message in reg.unhealthy[(host, 80)]] == [("vm-unhealthy", 8080, "")]
    assert (host, 9000) not in reg.unhealthy  # no ports[admin-port]: it would not serve that port either
    vm = next(e for e in reg.endpoints[(host, 80)] if e.name == "vm-mapped")
    assert vm.service_account == "spiffe://cluster.local/ns/ns1/sa/web" and vm.tls_mode == "istio"
    plain = next(e for e in reg.endpoints[(host, 80)] if e.name == "vm-plain")
    assert plain.weight == 3 and plain.tls_mode == "disabled"


def test_entries_without_labels_are_not_selected_by_services() -> None:
    text = SERVICE_AND_WORKLOADS.replace(
        "spec: {address: 10.0.1.2, labels: {app: web}, weight: 3}", "spec: {address: 10.0.1.2, weight: 3}"
    )
    reg = build_registry(objs(text))
    assert "vm-plain" not in {e.name for e in reg.endpoints[("web.ns1.svc.cluster.local", 80)]}


SERVICE_ENTRIES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: ns1}
spec:
  hosts: [db.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: pg, protocol: TCP, targetPort: 15432}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-vm, namespace: ns1}
spec: {address: 10.0.2.1, labels: {app: db}, ports: {pg: 25432}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-vm2, namespace: ns1}
spec: {address: 10.0.2.2, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: ns1}
spec:
  hosts: [api.example.com, b.example.com]
  resolution: STATIC
  ports: [{number: 443, name: https, protocol: TLS}]
  endpoints: [{address: 192.0.2.10}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: ns1}
spec: {hosts: ["*.wild.example.com"], resolution: NONE, ports: [{number: 80, name: http}]}
"""


def test_service_entry_selector_port_priority_and_inline_endpoints() -> None:
    reg = build_registry(objs(SERVICE_ENTRIES), vips=VipAllocator())
    db = {(e.name, e.port) for e in reg.endpoints[("db.internal", 5432)]}
    assert db == {("db-vm", 25432), ("db-vm2", 15432)}  # ports[<name>] > targetPort > number
    assert [e.address for e in reg.endpoints[("api.example.com", 443)]] == ["192.0.2.10"]
    assert reg.by_host["api.example.com"].auto_addresses == ("240.240.0.1", "2001:2::1")
    assert reg.by_host["b.example.com"].auto_addresses == ("240.240.0.2", "2001:2::2")
    assert reg.by_host["*.wild.example.com"].auto_addresses == ()  # wildcard, resolution NONE: no VIP


def test_a_service_entry_keeps_its_unhealthy_entries_apart() -> None:
    down = """
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-down, namespace: ns1, annotations: {proxy.istio.io/health-checks-enabled: "true"}}
spec: {address: 10.0.2.3, labels: {app: db}, ports: {pg: 35432}}
status: {conditions: [{type: Healthy, status: "False", message: "dial tcp 10.0.2.3:35432: refused"}]}
"""
    reg = build_registry(objs(SERVICE_ENTRIES + down), vips=VipAllocator())
    assert {e.name for e in reg.endpoints[("db.internal", 5432)]} == {"db-vm", "db-vm2"}  # not in EDS
    (e, message), *rest = reg.unhealthy[("db.internal", 5432)]
    assert rest == [] and (e.name, e.address, e.port) == ("db-down", "10.0.2.3", 35432)
    assert message == "dial tcp 10.0.2.3:35432: refused"


def test_vips_are_stable_across_restarts(tmp_path: Path) -> None:
    store = Store(tmp_path)
    alloc = VipAllocator(store.vips())
    build_registry(objs(SERVICE_ENTRIES), vips=alloc)
    store.add_vips(alloc.allocations)
    store.close()
    # Restart with one more host, listed first: existing hosts keep their addresses.
    extra = SERVICE_ENTRIES.replace(
        "hosts: [api.example.com, b.example.com]", "hosts: [a.example.com, api.example.com, b.example.com]"
    )
    store = Store(tmp_path)
    alloc2 = VipAllocator(store.vips())
    reg = build_registry(objs(extra), vips=alloc2)
    assert reg.by_host["api.example.com"].auto_addresses == ("240.240.0.1", "2001:2::1")
    assert reg.by_host["b.example.com"].auto_addresses == ("240.240.0.2", "2001:2::2")
    assert reg.by_host["db.internal"].auto_addresses == ("240.240.0.3", "2001:2::3")
    assert reg.by_host["a.example.com"].auto_addresses == ("240.240.0.4", "2001:2::4")  # the next free one
    store.close()


def test_workload_group_and_service_entry_types() -> None:
    (wg,) = objs((EXAMPLE / "product.yaml").read_text())[2:3]
    assert isinstance(wg.typed, WorkloadGroup)
    assert wg.typed.template.ports == {"grpc": 8080} and wg.typed.template_labels["version"] == "vm"
    se = objs((EXAMPLE / "external.yaml").read_text())[0].typed
    assert isinstance(se, ServiceEntry) and se.resolution == "DNS" and se.location == "MESH_EXTERNAL"
