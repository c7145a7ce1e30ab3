"""PeerAuthentication in the control plane: parsing and its errors,
Istio's precedence (workload selector > namespace > mesh, UNSET inherits,
PERMISSIVE by default, oldest wins, root-namespace selectors ignored), the
``virtualInbound`` listener that carries a sidecar's mode over LDS with
targeted pushes, the last good policy kept when an edit is invalid, and the
endpoint identities (``service_account``) in EDS metadata."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from pymesh.controlplane import ControlPlane, ValidationError
from pymesh.controlplane import generators as gen
from pymesh.controlplane.peerauth import PolicyView, mode_of_listener, virtual_inbound
from pymesh.controlplane.registry import build_registry
from pymesh.controlplane.resources import LoadResult, load_documents, parse_object
from pymesh.mesh.xds import EDS, LDS
from support.cp import AdsStream, vm_node


def pa(name: str, ns: str, mode: str | None, selector: dict[str, str] | None = None, *, created: str = "") -> str:
    md = f"{{name: {name}, namespace: {ns}" + (f", creationTimestamp: '{created}'" if created else "") + "}"
    spec = []
    if selector is not None:
        spec.append(f"selector: {{matchLabels: {selector}}}".replace("'", ""))
    if mode is not None:
        spec.append(f"mtls: {{mode: {mode}}}")
    return f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {md}\nspec: {{{', '.join(spec)}}}\n"


def registry_of(*docs: str, root: str = "istio-system") -> object:
    res = LoadResult()
    load_documents("---\n".join(docs), "policies.yaml", res)
    assert res.errors == []
    return build_registry(res.objects, root_namespace=root)


def mode(reg: object, ns: str = "default", labels: dict[str, str] | None = None) -> str:
    return reg.peer_authentication(ns, labels or {})  # type: ignore[attr-defined,no-any-return]


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["security.istio.io/v1", "security.istio.io/v1beta1"])
def test_both_api_versions_parse(api: str) -> None:
    doc = {"apiVersion": api, "kind": "PeerAuthentication", "metadata": {"name": "p", "namespace": "ns1"}}
    o = parse_object({**doc, "spec": {"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"}}})
    assert o.kind == "PeerAuthentication"
    assert o.typed.selector == {"app": "a"} and o.typed.mode == "STRICT"  # type: ignore[union-attr]
    empty = parse_object(doc)  # no spec at all: UNSET, namespace-wide
    assert empty.typed.mode == "UNSET" and not empty.typed.selector  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ("{mtls: {mode: STRICTER}}", "spec.mtls.mode", "STRICTER"),
        ("{mtls: strict}", "spec.mtls", "mapping"),
        ("{selector: {matchLabels: [a]}}", "spec.selector.matchLabels", ""),
        (
            "{selector: {matchLabels: {app: a}}, portLevelMtls: {8080: {mode: DISABLE}}}",
            "spec.portLevelMtls",
            "not supported",
        ),
    ],
)
def test_invalid_policies_are_rejected_naming_file_object_and_field(spec: str, field: str, text: str) -> None:
    res = LoadResult()
    load_documents(
        f"apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: bad, namespace: ns1}}\n"
        f"spec: {spec}\n",
        "pa.yaml",
        res,
    )
    assert res.objects == [] and len(res.errors) == 1
    e = res.errors[0]
    assert isinstance(e, ValidationError)
    msg = str(e)
    assert "pa.yaml" in msg and "PeerAuthentication ns1/bad" in msg and field in msg and text in msg


def test_wrong_group_is_rejected() -> None:
    with pytest.raises(ValidationError, match="apiVersion"):
        parse_object({"apiVersion": "networking.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "p"}})


# --- precedence --------------------------------------------------------------------------


def test_default_is_permissive() -> None:
    assert mode(registry_of(pa("unrelated", "other", "STRICT"))) == "PERMISSIVE"


def test_mesh_then_namespace_then_workload() -> None:
    mesh = pa("default", "istio-system", "STRICT")
    ns = pa("default", "default", "PERMISSIVE")
    wl = pa("product", "default", "DISABLE", {"app": "product"})
    assert mode(registry_of(mesh)) == "STRICT"
    assert mode(registry_of(mesh), "elsewhere") == "STRICT"
    assert mode(registry_of(mesh, ns)) == "PERMISSIVE"
    assert mode(registry_of(mesh, ns, wl), labels={"app": "product", "v": "1"}) == "DISABLE"
    assert mode(registry_of(mesh, ns, wl), labels={"app": "reviews"}) == "PERMISSIVE"  # selector not a subset
    assert mode(registry_of(mesh, wl), "other", {"app": "product"}) == "STRICT"  # another namespace's selector


def test_unset_inherits_from_the_level_above() -> None:
    mesh = pa("default", "istio-system", "STRICT")
    assert mode(registry_of(mesh, pa("ns", "default", "UNSET"))) == "STRICT"
    reg = registry_of(mesh, pa("ns", "default", None), pa("w", "default", "UNSET", {"a": "b"}))
    assert mode(reg, labels={"a": "b"}) == "STRICT"
    got = mode(registry_of(pa("ns", "default", "DISABLE"), pa("w", "default", None, {"a": "b"})), labels={"a": "b"})
    assert got == "DISABLE"


def test_selector_policy_in_the_root_namespace_is_ignored() -> None:
    reg = registry_of(pa("sel", "istio-system", "STRICT", {"app": "product"}))
    assert mode(reg, labels={"app": "product"}) == "PERMISSIVE"
    assert mode(reg, "istio-system", {"app": "product"}) == "PERMISSIVE"


def test_root_namespace_is_configurable() -> None:
    doc = pa("default", "mesh-root", "STRICT")
    assert mode(registry_of(doc)) == "PERMISSIVE"  # only a namespace policy of mesh-root
    assert mode(registry_of(doc, root="mesh-root")) == "STRICT"


def test_oldest_policy_wins_on_one_level_then_name() -> None:
    older = pa("zz-old", "default", "STRICT", created="2024-01-01T00:00:00Z")
    newer = pa("aa-new", "default", "DISABLE", created="2025-01-01T00:00:00Z")
    assert mode(registry_of(newer, older)) == "STRICT"
    assert mode(registry_of(pa("b", "default", "STRICT"), pa("a", "default", "DISABLE"))) == "DISABLE"


# --- the virtualInbound listener -----------------------------------------------------------


@pytest.mark.parametrize("m", ["STRICT", "PERMISSIVE", "DISABLE"])
def test_listener_shape_round_trips_the_mode(m: str) -> None:
    lis = Listener.FromString(virtual_inbound(m).SerializeToString())
    assert lis.name == "virtualInbound" and lis.address.socket_address.port_value == 15006
    assert mode_of_listener(lis) == m
    protos = [fc.filter_chain_match.transport_protocol for fc in lis.filter_chains]
    assert protos == {"STRICT": ["tls"], "PERMISSIVE": ["tls", "raw_buffer"], "DISABLE": [""]}[m]
    for fc in lis.filter_chains:
        if fc.filter_chain_match.transport_protocol == "tls":
            assert "istio-peer-exchange" in fc.filter_chain_match.application_protocols
            ctx = tls_pb2.DownstreamTlsContext()
            assert fc.transport_socket.typed_config.Unpack(ctx)
            assert ctx.require_client_certificate.value is True
        else:
            assert not fc.HasField("transport_socket")


def test_mode_of_listener_rejects_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="no filter chain"):
        mode_of_listener(Listener(name="virtualInbound"))
    odd = Listener(name="virtualInbound")
    odd.filter_chains.add().filter_chain_match.transport_protocol = "quic"
    with pytest.raises(ValueError, match="quic"):
        mode_of_listener(odd)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    cfg = tmp_path / "mesh"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(pa("default", "istio-system", "PERMISSIVE"))
    c = ControlPlane(cfg, xds_listen="127.0.0.1:0", persist=False, debounce=0.02)
    c.start()
    yield c
    c.stop()


def inbound_mode(s: AdsStream) -> str:
    r = s.recv()
    assert [Listener.FromString(a.value).name for a in r.resources] == ["virtualInbound"]
    s.ack(r, ("virtualInbound",))
    return mode_of_listener(Listener.FromString(r.resources[0].value))


def sidecar(cp: ControlPlane, ip: str, ns: str, labels: dict[str, str], *, delta: bool = False) -> AdsStream:
    s = AdsStream(cp.port, vm_node(ip, group="", namespace=ns, name=ip, extra={"LABELS": labels}), delta=delta)
    if delta:
        s.send(LDS, subscribe=("virtualInbound",))
    else:
        s.send(LDS, ("virtualInbound",))
    return s


def test_policy_changes_reach_only_the_sidecars_they_concern(cp: ControlPlane) -> None:
    product = sidecar(cp, "127.0.0.11", "default", {"app": "product"})
    reviews = sidecar(cp, "127.0.0.12", "default", {"app": "reviews"})
    other = sidecar(cp, "127.0.0.13", "other", {"app": "product"})
    assert [inbound_mode(s) for s in (product, reviews, other)] == ["PERMISSIVE"] * 3
    # A workload policy for product in default: only that sidecar is pushed to.
    (cp.config_dir / "product.yaml").write_text(pa("product", "default", "STRICT", {"app": "product"}))
    cp.reload()
    assert inbound_mode(product) == "STRICT"
    assert reviews.no_response(0.3) and other.no_response(0.1)
    # The namespace goes DISABLE: reviews follows; product keeps its workload policy.
    (cp.config_dir / "ns.yaml").write_text(pa("default", "default", "DISABLE"))
    cp.reload()
    assert inbound_mode(reviews) == "DISABLE"
    assert product.no_response(0.3) and other.no_response(0.1)
    # The mesh goes STRICT: only "other" has nothing closer.
    (cp.config_dir / "mesh.yaml").write_text(pa("default", "istio-system", "STRICT"))
    cp.reload()
    assert inbound_mode(other) == "STRICT"
    assert product.no_response(0.3) and reviews.no_response(0.1)
    for s in (product, reviews, other):
        s.close()


def test_delta_sidecar_gets_its_mode_too(cp: ControlPlane) -> None:
    s = sidecar(cp, "127.0.0.14", "default", {"app": "product"}, delta=True)
    r = s.recv()
    assert mode_of_listener(Listener.FromString(r.resources[0].resource.value)) == "PERMISSIVE"
    s.ack(r)
    (cp.config_dir / "mesh.yaml").write_text(pa("default", "istio-system", "STRICT"))
    cp.reload()
    r = s.recv()
    assert [x.name for x in r.resources] == ["virtualInbound"]
    assert mode_of_listener(Listener.FromString(r.resources[0].resource.value)) == "STRICT"
    s.close()


def test_an_invalid_edit_keeps_the_last_good_policy(cp: ControlPlane) -> None:
    s = sidecar(cp, "127.0.0.15", "default", {})
    assert inbound_mode(s) == "PERMISSIVE"
    (cp.config_dir / "mesh.yaml").write_text(pa("default", "istio-system", "STRICT"))
    cp.reload()
    assert inbound_mode(s) == "STRICT"
    (cp.config_dir / "mesh.yaml").write_text(pa("default", "istio-system", "STRCT"))
    cp.reload()
    assert s.no_response(0.3)  # still STRICT: nothing to push
    assert any("spec.mtls.mode" in str(e) and "mesh.yaml" in str(e) for e in cp.errors)
    assert cp.snapshot.registry.peer_authentication("default", {}) == "STRICT"
    s.close()


def test_grpc_clients_get_no_inbound_listener(cp: ControlPlane) -> None:
    node = vm_node("127.0.0.16", group="", extra={"GENERATOR": "grpc"})
    s = AdsStream(cp.port, node)
    s.send(LDS)
    r = s.recv()
    assert "virtualInbound" not in {Listener.FromString(a.value).name for a in r.resources}
    s.close()


def test_view_key_follows_namespace_and_labels() -> None:
    a = PolicyView.of("default", {"b": "2", "a": "1"})
    assert a == PolicyView.of("default", {"a": "1", "b": "2"}) and a != PolicyView.of("other", {"a": "1", "b": "2"})


# --- endpoint identities in EDS ------------------------------------------------------------


def test_eds_carries_each_endpoints_service_account() -> None:
    res = LoadResult()
    load_documents(
        """apiVersion: v1
kind: Service
metadata: {name: product, namespace: default}
spec: {clusterIP: 10.96.0.20, selector: {app: product}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default, labels: {app: product, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: product-sa}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: p2, namespace: default, labels: {app: product}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm1, namespace: default}
spec: {address: 10.0.0.3, labels: {app: product}, serviceAccount: vm-sa}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm2, namespace: default}
spec: {address: 10.0.0.4, labels: {app: product, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm3, namespace: default}
spec: {address: 10.0.0.5, labels: {app: product}}
""",
        "eds.yaml",
        res,
    )
    assert res.errors == []
    reg = build_registry(res.objects, trust_domain="example.org")
    cla = ClusterLoadAssignment.FromString(
        gen.endpoints(reg, gen.EdsView())["outbound|80||product.default.svc.cluster.local"].SerializeToString()
    )
    got = {}
    for loc in cla.endpoints:
        for e in loc.lb_endpoints:
            md = e.metadata.filter_metadata
            sa = md["istio"].fields["service_account"].string_value if "service_account" in md["istio"].fields else None
            tls = (
                md["envoy.transport_socket_match"].fields["tlsMode"].string_value
                if "envoy.transport_socket_match" in md
                else None
            )
            got[e.endpoint.address.socket_address.address] = (sa, tls)
    assert got == {
        "10.0.0.1": ("spiffe://example.org/ns/default/sa/product-sa", "istio"),  # injected: the label says istio
        # A pod runs as "default" without an account; without the label it has no sidecar (istiod's PodTLSMode).
        "10.0.0.2": ("spiffe://example.org/ns/default/sa/default", None),
        "10.0.0.3": ("spiffe://example.org/ns/default/sa/vm-sa", "istio"),  # Istio: a serviceAccount means mTLS
        "10.0.0.4": (None, "istio"),  # labelled istio, no account: any identity of the trust domain
        "10.0.0.5": (None, None),  # neither: plaintext
    }


def test_eds_over_ads_names_the_identity(cp: ControlPlane) -> None:
    (cp.config_dir / "svc.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
        "spec: {clusterIP: 10.96.1.1, selector: {app: web}, ports: [{name: http, port: 80}]}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: default, labels: {app: web}}\n"
        "spec: {serviceAccountName: web}\nstatus: {podIP: 10.1.0.1}\n"
    )
    cp.reload()
    s = AdsStream(cp.port, vm_node("127.0.0.17", group=""))
    s.send(EDS, ("outbound|80||web.default.svc.cluster.local",))
    cla = ClusterLoadAssignment.FromString(s.recv().resources[0].value)
    ep = cla.endpoints[0].lb_endpoints[0]
    assert ep.metadata.filter_metadata["istio"].fields["service_account"].string_value == (
        "spiffe://cluster.local/ns/default/sa/web"
    )
    s.close()
