"""The agent's own workload as Istio's telemetry labels it
(``pymesh.agent.config.local_workload``, handed to the relays'
``set_local_workload``): from istioctl's cluster.env and the node metadata,
with istiod's canonical-service derivation so no value is ever empty."""

from __future__ import annotations

import json
from pathlib import Path

from pymesh.agent import AgentOptions, resolve
from pymesh.agent.bootstrap import load_bootstrap, write_vm_files
from pymesh.agent.config import local_workload


def config(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    d = write_vm_files(tmp_path, env, discovery_address="istiod.istio-system.svc:15012", control_plane_auth="NONE")
    return local_workload(resolve(load_bootstrap(d), AgentOptions(extra_ips=[], pod_name="vm-7")))


def test_istioctl_files_give_every_label(tmp_path: Path) -> None:
    env = {
        "CANONICAL_SERVICE": "product",
        "CANONICAL_REVISION": "vm",
        "ISTIO_METAJSON_LABELS": json.dumps({"app": "product", "version": "vm"}),
        "ISTIO_META_AUTO_REGISTER_GROUP": "product-vm",
        "ISTIO_META_WORKLOAD_NAME": "product-vm",
        "ISTIO_META_CLUSTER_ID": "Kubernetes",
        "POD_NAMESPACE": "shop",
    }
    assert config(tmp_path, env) == {
        "workload": "product-vm",
        "namespace": "shop",
        "app": "product",
        "version": "vm",
        "canonical_service": "product",
        "canonical_revision": "vm",
        "cluster": "Kubernetes",
        "name": "vm-7",
        "node_id": "sidecar~127.0.0.1~vm-7.shop~shop.svc.cluster.local",
    }


def test_canonical_values_are_derived_as_istiod_does(tmp_path: Path) -> None:
    labels = {"app.kubernetes.io/name": "api", "app": "legacy", "app.kubernetes.io/version": "2.1"}
    got = config(tmp_path / "a", {"ISTIO_METAJSON_LABELS": json.dumps(labels), "ISTIO_META_AUTO_REGISTER_GROUP": "g"})
    assert (got["workload"], got["app"], got["version"]) == ("g", "api", "2.1")
    assert (got["canonical_service"], got["canonical_revision"]) == ("api", "2.1")
    # Nothing at all: the instance name, "latest", "" for what Rust reports as "unknown".
    bare = config(tmp_path / "b", {})
    assert (bare["workload"], bare["canonical_service"], bare["canonical_revision"]) == ("vm-7", "vm-7", "latest")
    assert bare["app"] == bare["version"] == bare["cluster"] == ""
