#!/usr/bin/env python3
"""Records what a real istiod (Istio's pilot-discovery, built from source by
scripts/istiod/build.sh) sends over xDS, as test fixtures, and catalogues it.

    .venv/bin/python scripts/istiod/record.py record --istiod /work/istiod/pilot-discovery
    .venv/bin/python scripts/istiod/record.py catalogue --doc docs/istiod-interop.md
    .venv/bin/python scripts/istiod/record.py serve --istiod ... --scenario plain     # istiod until Ctrl-C
    .venv/bin/python scripts/istiod/record.py health --istiod ...                      # the health-report crash
    .venv/bin/python scripts/istiod/record.py live --istiod ... --out /tmp/live        # `pymesh agent` against it
    .venv/bin/python scripts/istiod/record.py show tests/fixtures/istiod/plain/sidecar/cds.pb

``record`` runs, for each scenario under scripts/istiod/scenarios/<name>/
(scenario.yaml, mesh.yaml, the Istio YAML it lists), istiod without
Kubernetes on loopback (``discovery --registries= --configDir ...``; see
``istiod_command``), then two ADS clients (state of the world, every
response ACKed):

- ``sidecar``: a VM sidecar as pymesh's agent / istio-agent presents it (node
  ``sidecar~10.0.0.5~vm-1.default~default.svc.cluster.local``). CDS (wildcard),
  EDS for the EDS clusters CDS names, LDS (wildcard), RDS for the route names
  the listeners' HTTP connection managers name, NDS (wildcard): Envoy's order.
- ``grpc``: a proxyless gRPC client (``GENERATOR=grpc``): LDS for the
  scenario's listener names (``host:port``), RDS for the route names of their
  api_listeners, CDS for the clusters those routes name, EDS for the CDS
  clusters: gRPC's order.

When every subscription is answered and istiod has been quiet for a moment,
the last DiscoveryResponse of each type is written as it came off the wire
(serialized envoy.service.discovery.v3.DiscoveryResponse) to
tests/fixtures/istiod/<scenario>/<client>/<cds|eds|lds|rds|nds>.pb, with
tests/fixtures/istiod/<scenario>/manifest.json (node, metadata, subscribed
names, type URL, resources per file, istiod version and commit, the command).
``version_info``, ``nonce``, resource order and endpoint order differ between
runs; nothing else did.

``catalogue`` reads the fixtures and writes the catalogue section of
docs/istiod-interop.md: every Any type URL per resource type and scenario
(TypedStruct's inner type_url too), which of them the protobuf pool of
today's agent decodes (only the modules it imports loaded), which need
another xds-protos module and which xds-protos does not have; cluster,
listener, route and endpoint shapes; NDS content; what gRPC gets differently.

``health`` and ``live`` are the checks behind docs/istiod-interop.md §6-7.

Needs grpcio, protobuf, xds-protos, PyYAML (and dnspython for ``live``), all in
the project's .venv. Sends traffic only to loopback. Not run in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import pkgutil
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCENARIOS = HERE / "scenarios"
FIXTURES = REPO / "tests" / "fixtures" / "istiod"
DOC = REPO / "docs" / "istiod-interop.md"

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
NDS = "type.googleapis.com/istio.networking.nds.v1.NameTable"
HEALTH = "type.googleapis.com/istio.v1.HealthInformation"
SHORT = {CDS: "cds", EDS: "eds", LDS: "lds", RDS: "rds", NDS: "nds"}
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

# Loopback only. istiod's defaults (:15010, :8080, :15014, :15012, :15017) listen on every address.
GRPC_ADDR = "127.0.0.1:15010"
HTTP_ADDR = "127.0.0.1:8080"
MONITORING_ADDR = "127.0.0.1:15014"

SIDECAR_ID = "sidecar~10.0.0.5~vm-1.default~default.svc.cluster.local"
GRPC_ID = "sidecar~10.0.0.6~grpc-client.default~default.svc.cluster.local"

# What pymesh's agent (pymesh/agent/node.py) sends for istioctl's VM files of WorkloadGroup
# product-vm (cluster.env's ISTIO_META_* keys, then NAMESPACE, INSTANCE_IPS, NAME,
# PROXY_CONFIG, SERVICE_ACCOUNT, INTERCEPTION_MODE, ISTIO_VERSION), with ISTIO_VERSION as
# istio-agent 1.29.0 sends it (istiod gates features on it; pymesh sends "pymesh-<version>",
# which istiod reads as "newest") and DNS_AUTO_ALLOCATE on, as cluster.env may set it.
SIDECAR_METADATA: dict[str, Any] = {
    "ISTIO_VERSION": "1.29.0",
    "NAMESPACE": "default",
    "CLUSTER_ID": "Kubernetes",
    "MESH_ID": "cluster.local",
    "NETWORK": "",
    "DNS_CAPTURE": "true",
    "DNS_AUTO_ALLOCATE": "true",
    "INTERCEPTION_MODE": "REDIRECT",
    "INSTANCE_IPS": "10.0.0.5",
    "NAME": "vm-1",
    "LABELS": {
        "app": "product-vm",
        "version": "v1",
        "service.istio.io/canonical-name": "product-vm",
        "service.istio.io/canonical-revision": "v1",
    },
    "WORKLOAD_NAME": "product-vm",
    "AUTO_REGISTER_GROUP": "product-vm",
    "SERVICE_ACCOUNT": "product-vm",
    "POD_PORTS": '[{"name":"http","containerPort":9080}]',
    "PROXY_CONFIG": {
        "discoveryAddress": "istiod.istio-system.svc:15012",
        "readinessProbe": {"periodSeconds": 5, "httpGet": {"path": "/ready", "port": 9080}},
    },
}
# What a proxyless gRPC client's bootstrap (istio-agent's grpcxds, or one written by hand) says.
GRPC_METADATA: dict[str, Any] = {
    "GENERATOR": "grpc",
    "ISTIO_VERSION": "1.29.0",
    "NAMESPACE": "default",
    "CLUSTER_ID": "Kubernetes",
    "INSTANCE_IPS": "10.0.0.6",
    "LABELS": {"app": "grpc-client"},
    "SERVICE_ACCOUNT": "grpc-client",
}
GRPC_LISTENERS = ["product.default.svc.cluster.local:8080"]

# The protobuf modules today's agent has loaded when it applies a push: pymesh/agent/node.py
# (base_pb2, struct_pb2), xds_client.py (discovery_pb2, ads_pb2_grpc), state.py (cluster_pb2,
# endpoint_pb2, listener_pb2, json_format), persist.py (discovery_pb2), at commit 9047f0b (at
# 431bac6 pymesh.controlplane also brought in the HCM, router and route modules). NDS decodes
# with pymesh.proto.nds, a pool of its own. `record.py live` writes the modules the running
# agent had loaded: at 9047f0b the same *_pb2 modules as importing this list in a fresh
# interpreter (docs/istiod-interop.md).
AGENT_MODULES = [
    "google.protobuf.struct_pb2",
    "google.protobuf.json_format",
    "envoy.config.core.v3.base_pb2",
    "envoy.service.discovery.v3.discovery_pb2",
    "envoy.service.discovery.v3.ads_pb2_grpc",
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.config.listener.v3.listener_pb2",
]
XDS_PROTOS_PACKAGES = ("envoy", "xds", "udpa", "validate", "opencensus", "opentelemetry", "cel")


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# --- scenarios ------------------------------------------------------------------------------


def load_scenario(name: str) -> dict[str, Any]:
    import yaml

    d = SCENARIOS / name
    spec = yaml.safe_load((d / "scenario.yaml").read_text()) or {}
    spec["name"] = name
    spec["dir"] = d
    return spec


def scenario_names() -> list[str]:
    order = ["plain", "autoalloc", "autoalloc-status", "subsets", "virtualservice", "strict", "multinetwork"]
    found = sorted(p.name for p in SCENARIOS.iterdir() if (p / "scenario.yaml").is_file())
    return [n for n in order if n in found] + [n for n in found if n not in order]


def assemble_config(spec: dict[str, Any], workdir: Path) -> tuple[Path, list[Any]]:
    """The config dir for --configDir: the scenario's listed files in order, a later object
    replacing an earlier one of the same kind, namespace and name. WorkloadEntries are held
    back and returned: istiod is started without them and they are added once it is up
    (see Istiod.start)."""
    import yaml

    objs: dict[tuple[str, str, str], Any] = {}
    for rel in spec.get("config", []):
        for doc in yaml.safe_load_all((spec["dir"] / rel).read_text()):
            if not doc:
                continue
            meta = doc.get("metadata", {})
            objs[(doc["kind"], meta.get("namespace", ""), meta["name"])] = doc
    cfg = workdir / "config"
    shutil.rmtree(cfg, ignore_errors=True)
    cfg.mkdir(parents=True)
    first = [o for o in objs.values() if o["kind"] != "WorkloadEntry"]
    later = [o for o in objs.values() if o["kind"] == "WorkloadEntry"]
    (cfg / "config.yaml").write_text(yaml.safe_dump_all(first, sort_keys=False))
    return cfg, later


def expected_endpoints(objs: list[Any], entries: list[Any]) -> dict[str, int]:
    """{host: endpoints} istiod's endpoint shards should hold for the ServiceEntries that
    select WorkloadEntries (one per selected entry and port)."""
    out: dict[str, int] = {}
    for o in objs:
        sel = (o.get("spec") or {}).get("workloadSelector")
        if o["kind"] != "ServiceEntry" or not sel:
            continue
        ns = o["metadata"].get("namespace", "default")
        n = sum(
            1
            for e in entries
            if e["metadata"].get("namespace", "default") == ns
            and all(
                (e["spec"].get("labels") or e["metadata"].get("labels") or {}).get(k) == v
                for k, v in sel["labels"].items()
            )
        )
        for host in o["spec"]["hosts"]:
            out[host] = n * len(o["spec"].get("ports", []))
    return out


# --- istiod ---------------------------------------------------------------------------------


def istiod_env(spec: dict[str, Any] | None = None) -> dict[str, str]:
    """Environment for istiod without Kubernetes. Only ENABLE_CA_SERVER=false is a choice (no
    CA: without one istiod generates a self-signed root in its working directory; plaintext
    xDS on --grpcAddr works either way). POD_NAME/POD_NAMESPACE name the instance (its
    workloadController id). The two WorkloadEntry switches are istiod's defaults, spelled out
    because the health-report crash depends on the second."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "ENABLE_CA_SERVER": "false",
        "POD_NAME": "istiod-local",
        "POD_NAMESPACE": "istio-system",
        "PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION": "true",
        "PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS": "true",
    }
    env.update({k: str(v) for k, v in ((spec or {}).get("env") or {}).items()})
    return env


def istiod_command(
    binary: str,
    config_dir: Path,
    mesh: Path,
    networks: Path | None,
    grpc_addr: str = GRPC_ADDR,
    http_addr: str = HTTP_ADDR,
    monitoring_addr: str = MONITORING_ADDR,
) -> list[str]:
    cmd = [
        binary,
        "discovery",
        "--registries=",
        f"--configDir={config_dir}",
        f"--meshConfig={mesh}",
        f"--networksConfig={networks if networks else '/nonexistent/meshNetworks'}",
        f"--grpcAddr={grpc_addr}",
        f"--httpAddr={http_addr}",
        f"--monitoringAddr={monitoring_addr}",
        "--secureGRPCAddr=",
        "--httpsAddr=",
        "--ctrlz_address=127.0.0.1",
        "--ctrlz_port=0",
        "--clusterID=Kubernetes",
        "--domain=cluster.local",
        "--namespace=istio-system",
        "--keepaliveMaxServerConnectionAge=30m",
        "--shutdownDuration=1s",
        "--log_output_level=default:info",
    ]
    return cmd


class Istiod:
    """pilot-discovery for one scenario, on loopback; a context manager that stops it."""

    def __init__(
        self,
        binary: str,
        spec: dict[str, Any],
        workdir: Path,
        *,
        grpc_addr: str = GRPC_ADDR,
        http_addr: str = HTTP_ADDR,
        monitoring_addr: str = MONITORING_ADDR,
        env: dict[str, str] | None = None,
    ) -> None:
        self.binary, self.spec, self.workdir = binary, spec, workdir
        self.grpc_addr, self.http_addr = grpc_addr, http_addr
        config = workdir / "config"
        mesh = spec["dir"] / "mesh.yaml"
        networks = spec["dir"] / spec["networks"] if spec.get("networks") else None
        self.cmd = istiod_command(binary, config, mesh, networks, grpc_addr, http_addr, monitoring_addr)
        self.env = istiod_env(spec)
        self.env.update(env or {})
        self.log_path = workdir / "istiod.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0, attempts: int = 4) -> Istiod:
        """Starts istiod and returns once it serves every ServiceEntry host of the scenario
        and every WorkloadEntry is an endpoint of the services selecting it; a start that
        does not get there in ``timeout`` seconds is stopped and tried again."""
        for attempt in range(1, attempts + 1):
            why = self._start_once(timeout)
            if why is None:
                return self
            kept = Path(tempfile.gettempdir()) / f"istiod-{self.spec['name']}-attempt{attempt}.log"
            shutil.copy(self.log_path, kept)
            log(f"[{self.spec['name']}] istiod start {attempt}/{attempts} failed: {why} (log: {kept})")
        raise RuntimeError(f"istiod did not come up in {attempts} starts; see {kept}:\n{self.tail()}")

    def _start_once(self, timeout: float) -> str | None:
        import yaml

        self.config_dir, self.entries = assemble_config(self.spec, self.workdir)
        self.objects = list(yaml.safe_load_all((self.config_dir / "config.yaml").read_text()))
        self.expected = expected_endpoints(self.objects, self.entries)
        self.hosts = {h for o in self.objects if o["kind"] == "ServiceEntry" for h in o["spec"]["hosts"]}
        # The config goes in only once istiod serves, in two steps (everything but the
        # WorkloadEntries, then those). With the files there at start, istiod 1.29 (file
        # config: one krt collection per kind whose events reach the ServiceEntry
        # controller's handlers independently) failed in 2 starts of 10 to load any service
        # at all (every object in /debug/configz, none in /debug/registryz, no push, for
        # good), and in about half of the others left services selecting WorkloadEntries
        # without endpoints and the VM without its inbound cluster and chains. Staged like
        # this: no failure in 30 starts. A start that still does not get there is retried.
        (self.config_dir / "config.yaml").rename(self.workdir / "config.yaml")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        deadline = time.monotonic() + timeout
        while "starting gRPC discovery service" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                return f"no gRPC server (exit code {self.proc.returncode})"
            time.sleep(0.1)
        (self.workdir / "config.yaml").rename(self.config_dir / "config.yaml")
        # /ready never says 200 without Kubernetes: its "sidecar injector" and "config
        # validation" probes are only set once the webhooks start, which needs a kube client.
        # Ready here = every ServiceEntry host is in /debug/registryz, then every
        # WorkloadEntry is an endpoint of the services selecting it.
        why = "no registry"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode}"
            hosts = self.registry_hosts()
            if hosts is not None and self.hosts <= hosts:
                break
            why = f"registry has {sorted(hosts or [])}, wanted {sorted(self.hosts)}"
            time.sleep(0.2)
        else:
            self.stop()
            return why
        if self.entries:
            (self.config_dir / "workloadentries.yaml").write_text(yaml.safe_dump_all(self.entries, sort_keys=False))
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode}"
            counts = self.endpoint_counts()
            if counts is not None and all(counts.get(h, 0) >= n for h, n in self.expected.items()):
                time.sleep(1.0)  # the push those entries cause (100 ms debounce)
                return None
            why = f"endpoints {counts}, wanted {self.expected}"
            time.sleep(0.2)
        self.stop()
        return why

    def registry_hosts(self) -> set[str] | None:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{self.http_addr}/debug/registryz", timeout=2) as r:
                return {s["hostname"] for s in json.load(r)}
        except (OSError, ValueError):
            return None

    def endpoint_counts(self) -> dict[str, int] | None:
        """{host: endpoints} from istiod's /debug/endpointShardz."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{self.http_addr}/debug/endpointShardz", timeout=2) as r:
                shards = json.load(r)
        except (OSError, ValueError):
            return None
        return {
            host: sum(len(eps or []) for eps in (sh.get("Shards") or {}).values())
            for host, by_ns in shards.items()
            for sh in by_ns.values()
        }

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Istiod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def istiod_version(binary: str) -> dict[str, Any]:
    out = subprocess.run([binary, "version", "-o", "json"], capture_output=True, text=True, timeout=30, check=False)
    try:
        info = json.loads(out.stdout)
        info = info.get("clientVersion", info)
    except ValueError:
        info = {"raw": out.stdout.strip()}
    keep = ("version", "revision", "golang_version", "status", "tag")
    return {k: info[k] for k in keep if k in info} or info


# --- an ADS client (state of the world) -------------------------------------------------------


def node_proto(node_id: str, metadata: dict[str, Any]) -> Any:
    from envoy.config.core.v3 import base_pb2
    from google.protobuf import struct_pb2

    md = struct_pb2.Struct()
    md.update(metadata)
    return base_pb2.Node(id=node_id, metadata=md, user_agent_name="pymesh-istiod-recorder", user_agent_version="1")


class Ads:
    """One SotW ADS stream: subscribe(type, names) sends a request (the first carries the node),
    every response is ACKed at once (same type, its version and nonce, the current names) and
    kept with its raw bytes. ``responses`` yields (type_url, response, raw bytes)."""

    def __init__(self, target: str, node: Any) -> None:
        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

        self._pb = discovery_pb2
        self.node = node
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        # The raw bytes of each response as received (the stub's deserializer keeps them).
        method = stub.StreamAggregatedResources
        self._raw_stub = self.channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=lambda b: b,
        )
        del method
        self.requests: queue.Queue[Any] = queue.Queue()
        self.names: dict[str, list[str]] = {}
        self.last: dict[str, tuple[Any, bytes]] = {}
        self.nacks: list[tuple[str, str]] = []
        self.first = True
        self.inbox: queue.Queue[tuple[str, Any, bytes] | BaseException] = queue.Queue()
        self.call = self._raw_stub(iter(self.requests.get, None))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for raw in self.call:
                resp = self._pb.DiscoveryResponse.FromString(raw)
                self.inbox.put((resp.type_url, resp, raw))
        except BaseException as e:  # the stream ended: the waiter sees why
            self.inbox.put(e)

    def send(self, req: Any) -> None:
        if self.first:
            req.node.CopyFrom(self.node)
            self.first = False
        self.requests.put(req)

    def subscribe(self, type_url: str, names: Iterable[str] = ()) -> None:
        self.names[type_url] = sorted(set(names))
        last = self.last.get(type_url)
        req = self._pb.DiscoveryRequest(type_url=type_url, resource_names=self.names[type_url])
        if last is not None:
            req.version_info, req.response_nonce = last[0].version_info, last[0].nonce
        self.send(req)

    def ack(self, resp: Any, raw: bytes) -> None:
        self.last[resp.type_url] = (resp, raw)
        req = self._pb.DiscoveryRequest(
            type_url=resp.type_url,
            version_info=resp.version_info,
            response_nonce=resp.nonce,
            resource_names=self.names.get(resp.type_url, []),
        )
        self.send(req)

    def health(self, healthy: bool, message: str = "") -> None:
        req = self._pb.DiscoveryRequest(type_url=HEALTH)
        if not healthy:
            req.error_detail.code = 13
            req.error_detail.message = message or "unhealthy"
        self.send(req)

    def next(self, timeout: float) -> tuple[str, Any, bytes] | None:
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.requests.put(None)
        with contextlib.suppress(Exception):
            self.call.cancel()
        self.channel.close()


def unpack(any_msg: Any, cls: Any) -> Any:
    m = cls()
    m.ParseFromString(any_msg.value)
    return m


def eds_names(resp: Any) -> list[str]:
    from envoy.config.cluster.v3 import cluster_pb2

    out = []
    for a in resp.resources:
        c = unpack(a, cluster_pb2.Cluster)
        if c.WhichOneof("cluster_discovery_type") == "type" and c.type == cluster_pb2.Cluster.EDS:
            out.append(c.eds_cluster_config.service_name or c.name)
    return out


def hcm_of(any_cfg: Any) -> Any | None:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as h

    if any_cfg.type_url != HCM:
        return None
    return unpack(any_cfg, h.HttpConnectionManager)


def rds_names(resp: Any) -> list[str]:
    from envoy.config.listener.v3 import listener_pb2

    out = set()
    for a in resp.resources:
        lis = unpack(a, listener_pb2.Listener)
        hcms = []
        if lis.HasField("api_listener"):
            hcms.append(hcm_of(lis.api_listener.api_listener))
        for fc in [*lis.filter_chains, *([lis.default_filter_chain] if lis.HasField("default_filter_chain") else [])]:
            for f in fc.filters:
                if f.HasField("typed_config"):
                    hcms.append(hcm_of(f.typed_config))
        for h in hcms:
            if h is not None and h.WhichOneof("route_specifier") == "rds":
                out.add(h.rds.route_config_name)
    return sorted(out)


def route_clusters(resp: Any) -> list[str]:
    from envoy.config.route.v3 import route_pb2

    out = set()
    for a in resp.resources:
        rc = unpack(a, route_pb2.RouteConfiguration)
        for vh in rc.virtual_hosts:
            for r in vh.routes:
                if r.HasField("route"):
                    if r.route.cluster:
                        out.add(r.route.cluster)
                    for wc in r.route.weighted_clusters.clusters:
                        out.add(wc.name)
    return sorted(out)


def resource_names(type_url: str, resp: Any) -> list[str]:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2

    if type_url == NDS:
        return [f"{len(resp.resources)} NameTable"]
    cls, attr = {
        CDS: (cluster_pb2.Cluster, "name"),
        EDS: (endpoint_pb2.ClusterLoadAssignment, "cluster_name"),
        LDS: (listener_pb2.Listener, "name"),
        RDS: (route_pb2.RouteConfiguration, "name"),
    }[type_url]
    return [getattr(unpack(a, cls), attr) for a in resp.resources]


def covers(resp: Any, type_url: str, wanted: list[str]) -> bool:
    if not wanted:
        return True
    got = set(resource_names(type_url, resp))
    return set(wanted) <= got


def run_sidecar(target: str, node_id: str, metadata: dict[str, Any], timeout: float, quiet: float) -> Ads:
    """Envoy's order: CDS, EDS for its EDS clusters, LDS, RDS for the listeners' routes, NDS."""
    ads = Ads(target, node_proto(node_id, metadata))
    ads.subscribe(CDS)
    return _drive(ads, timeout, quiet, sidecar=True)


def run_grpc(
    target: str, node_id: str, metadata: dict[str, Any], listeners: list[str], timeout: float, quiet: float
) -> Ads:
    """gRPC's order: LDS (named listeners), RDS, CDS for the routes' clusters, EDS."""
    ads = Ads(target, node_proto(node_id, metadata))
    ads.subscribe(LDS, listeners)
    return _drive(ads, timeout, quiet, sidecar=False)


def _drive(ads: Ads, timeout: float, quiet: float, *, sidecar: bool) -> Ads:
    deadline = time.monotonic() + timeout
    wanted_types = [CDS, EDS, LDS, RDS, NDS] if sidecar else [LDS, RDS, CDS, EDS]
    settled_at: float | None = None
    while True:
        now = time.monotonic()
        if now > deadline:
            have = {SHORT[t]: (t in ads.last) for t in wanted_types}
            raise TimeoutError(f"not every subscription answered in {timeout}s: {have}, names {ads.names}")
        item = ads.next(0.1)
        if item is not None:
            t, resp, raw = item
            ads.ack(resp, raw)
            settled_at = None
            if sidecar and t == CDS:
                ads.subscribe(EDS, eds_names(resp))
                if LDS not in ads.names:
                    ads.subscribe(LDS)
            elif sidecar and t == LDS:
                ads.subscribe(RDS, rds_names(resp))
                if NDS not in ads.names:
                    ads.subscribe(NDS)
            elif not sidecar and t == LDS:
                ads.subscribe(RDS, rds_names(resp))
            elif not sidecar and t == RDS:
                ads.subscribe(CDS, route_clusters(resp))
            elif not sidecar and t == CDS:
                ads.subscribe(EDS, eds_names(resp))
            continue
        done = all(
            t in ads.names and t in ads.last and covers(ads.last[t][0], t, ads.names[t] if t != NDS else [])
            for t in wanted_types
        )
        # A type subscribed with no names (e.g. no RDS route) is answered by nothing: done too.
        done = done or all(
            t in ads.names
            and (t in ads.last or (not ads.names[t] and t in (EDS, RDS, CDS) and not _wildcard(t, sidecar)))
            for t in wanted_types
        )
        if done:
            settled_at = settled_at or now
            if now - settled_at >= quiet:
                return ads


def _wildcard(type_url: str, sidecar: bool) -> bool:
    return sidecar and type_url in (CDS, LDS, NDS)


# --- record -----------------------------------------------------------------------------------


def write_fixtures(
    scenario: dict[str, Any],
    clients: dict[str, tuple[str, dict[str, Any], Ads]],
    out: Path,
    istiod: Istiod,
    version: dict[str, Any],
) -> dict[str, Any]:
    from envoy.service.discovery.v3 import discovery_pb2

    sdir = out / scenario["name"]
    shutil.rmtree(sdir, ignore_errors=True)
    manifest: dict[str, Any] = {
        "scenario": scenario["name"],
        "description": " ".join(str(scenario.get("description", "")).split()),
        "istiod": {
            **version,
            "command": [Path(istiod.cmd[0]).name, *[_relative(a) for a in istiod.cmd[1:]]],
            "env": {k: v for k, v in sorted(istiod.env.items()) if k not in ("PATH", "HOME")},
        },
        "config": [str((scenario["dir"] / c).resolve().relative_to(REPO)) for c in scenario.get("config", [])],
        "recorded_by": "scripts/istiod/record.py record",
        "note": "version_info and nonce are istiod's for that run; every response was ACKed",
        "clients": {},
    }
    for client, (node_id, metadata, ads) in clients.items():
        cdir = sdir / client
        cdir.mkdir(parents=True, exist_ok=True)
        files: dict[str, Any] = {}
        for t in (CDS, EDS, LDS, RDS, NDS):
            if t not in ads.last:
                continue
            resp, raw = ads.last[t]
            assert discovery_pb2.DiscoveryResponse.FromString(raw) == resp
            name = f"{SHORT[t]}.pb"
            (cdir / name).write_bytes(raw)
            files[SHORT[t]] = {
                "file": f"{client}/{name}",
                "type_url": t,
                "subscribed": ads.names.get(t, []) if ads.names.get(t) else "*",
                "resource_count": len(resp.resources),
                "resource_names": resource_names(t, resp),
                "version_info": resp.version_info,
                "nonce": resp.nonce,
                "bytes": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        manifest["clients"][client] = {"node_id": node_id, "metadata": metadata, "files": files}
    (sdir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def _relative(arg: str) -> str:
    """Command arguments with the scratch directory shown as <work>, the repo relative."""
    if "=" in arg:
        k, v = arg.split("=", 1)
        return f"{k}={_relative(v)}" if v else arg
    p = Path(arg)
    if p.is_absolute():
        with contextlib.suppress(ValueError):
            return str(p.relative_to(REPO))
        if "config" in p.parts:
            return "<work>/config"
    return arg


def cmd_record(a: argparse.Namespace) -> int:
    binary = a.istiod or os.environ.get("PYMESH_ISTIOD")
    if not binary:
        log("record: --istiod or PYMESH_ISTIOD (a pilot-discovery built by scripts/istiod/build.sh)")
        return 2
    version = istiod_version(binary)
    log(f"istiod {version}")
    names = a.scenario or scenario_names()
    for name in names:
        spec = load_scenario(name)
        with tempfile.TemporaryDirectory(prefix=f"istiod-{name}-") as tmp:
            work = Path(tmp)
            extra = dict(kv.split("=", 1) for kv in a.env)
            ist = Istiod(binary, spec, work, grpc_addr=a.grpc_addr, http_addr=a.http_addr, env=extra)
            log(f"[{name}] {' '.join(ist.cmd)}")
            with ist:
                sc_md = {**SIDECAR_METADATA, **(spec.get("sidecar_metadata") or {})}
                g_md = {**GRPC_METADATA, **(spec.get("grpc_metadata") or {})}
                listeners = spec.get("grpc_listeners") or GRPC_LISTENERS
                sidecar = run_sidecar(a.grpc_addr, SIDECAR_ID, sc_md, a.timeout, a.quiet)
                grpc_ = run_grpc(a.grpc_addr, GRPC_ID, g_md, listeners, a.timeout, a.quiet)
                clients = {"sidecar": (SIDECAR_ID, sc_md, sidecar), "grpc": (GRPC_ID, g_md, grpc_)}
                manifest = write_fixtures(spec, clients, Path(a.out), ist, version)
                sidecar.close()
                grpc_.close()
                if not ist.alive():
                    raise RuntimeError(f"istiod died during {name}:\n{ist.tail()}")
            if a.keep_logs:
                Path(a.keep_logs).mkdir(parents=True, exist_ok=True)
                shutil.copy(work / "istiod.log", Path(a.keep_logs) / f"{name}.log")
        summary = {c: {k: v["resource_count"] for k, v in m["files"].items()} for c, m in manifest["clients"].items()}
        log(f"[{name}] {summary}")
    return 0


# --- serve / health -----------------------------------------------------------------------------


def cmd_serve(a: argparse.Namespace) -> int:
    binary = a.istiod or os.environ.get("PYMESH_ISTIOD")
    spec = load_scenario(a.scenario)
    work = Path(a.workdir or tempfile.mkdtemp(prefix=f"istiod-{a.scenario}-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = dict(kv.split("=", 1) for kv in a.env)
    ist = Istiod(binary, spec, work, grpc_addr=a.grpc_addr, http_addr=a.http_addr, env=extra)
    ist.start()
    print(json.dumps({"pid": ist.proc.pid if ist.proc else None, "log": str(ist.log_path), "cmd": ist.cmd}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    end = time.monotonic() + a.duration if a.duration else None
    while not stop.is_set() and ist.alive() and (end is None or time.monotonic() < end):
        stop.wait(0.5)
    died = not ist.alive()
    rc = ist.stop()
    if died:
        log(f"istiod exited by itself with {rc}:\n{ist.tail()}")
    return 0 if not died else 1


def _rpc_end(e: BaseException) -> str:
    code = getattr(e, "code", None)
    details = getattr(e, "details", None)
    if callable(code) and callable(details):
        return f"{getattr(code(), 'name', code())}: {details()}"
    return f"{type(e).__name__}: {e}"


def sotw_health(target: str, node: Any, case: dict[str, Any]) -> str:
    """A SotW stream: CDS (ACKed), then a health report; or the report first. How it ended."""
    ads = Ads(target, node)
    try:
        if case.get("first"):
            ads.health(True)  # carries the node, as a stream's first request does
            ads.first = True  # istiod drops that request, node and all: the next one needs it again
        ads.subscribe(CDS)
        got = ads.next(10)
        if got is not None:
            ads.ack(got[1], got[2])
        if not case.get("first"):
            ads.health(case.get("healthy", True), "probe failed")
        end = time.monotonic() + 3
        while time.monotonic() < end:
            item = ads.next(0.2)
            if item is not None:
                ads.ack(item[1], item[2])
        return "stream still open"
    except BaseException as e:  # the stream ended
        return _rpc_end(e)
    finally:
        ads.close()


def delta_health(target: str, node: Any, case: dict[str, Any]) -> str:
    """The same over DeltaAggregatedResources (what newer istio-agents speak)."""
    import grpc
    from envoy.service.discovery.v3 import discovery_pb2

    channel = grpc.insecure_channel(target)
    q: queue.Queue[Any] = queue.Queue()
    call = channel.stream_stream(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
        request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
        response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
    )(iter(q.get, None))
    try:
        first = discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, resource_names_subscribe=["*"])
        first.node.CopyFrom(node)
        q.put(first)
        resp = next(iter(call))
        q.put(discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, response_nonce=resp.nonce))
        report = discovery_pb2.DeltaDiscoveryRequest(type_url=HEALTH)
        if not case.get("healthy", True):
            report.error_detail.code = 13
            report.error_detail.message = "probe failed"
        q.put(report)
        end = time.monotonic() + 3
        for r in call:
            q.put(discovery_pb2.DeltaDiscoveryRequest(type_url=r.type_url, response_nonce=r.nonce))
            if time.monotonic() > end:
                break
        return "stream ended by the server without a status"
    except BaseException as e:
        return _rpc_end(e)
    finally:
        q.put(None)
        call.cancel()
        channel.close()


def health_case(binary: str, a: argparse.Namespace, case: dict[str, Any]) -> dict[str, Any]:
    """One health-report case against istiod (scenario plain, no Kubernetes): did it survive,
    how did the stream end, what did it log."""
    spec = load_scenario("plain")
    with tempfile.TemporaryDirectory(prefix="istiod-health-") as tmp:
        ist = Istiod(binary, spec, Path(tmp), grpc_addr=a.grpc_addr, http_addr=a.http_addr, env=case.get("env"))
        ist.start()
        try:
            md = {**SIDECAR_METADATA, **case.get("metadata", {})}
            for k in case.get("drop_metadata", []):
                md.pop(k, None)
            node = node_proto(SIDECAR_ID, md)
            ended = delta_health(a.grpc_addr, node, case) if case.get("delta") else sotw_health(a.grpc_addr, node, case)
            time.sleep(1)
            alive = ist.alive()
        finally:
            rc = ist.stop()
        lines = ist.log_path.read_text(errors="replace").splitlines()
        at = next((i for i, ln in enumerate(lines) if ln.startswith("panic:")), None)
        # The panic and its goroutine's stack down to the gRPC handler (function, file:line pairs).
        panic = [ln.strip() for ln in lines[at : at + 24]] if at is not None else []
        warn = [ln for ln in lines if "health check probe" in ln or "unable to derive" in ln]
        return {
            "case": case["name"],
            **{k: v for k, v in case.items() if k != "name"},
            "istiod_alive": alive,
            "exit_code": None if alive else rc,
            "stream_end": ended,
            "log": warn[:3],
            "panic": panic,
        }


HEALTH_CASES: list[dict[str, Any]] = [
    {"name": "healthy report after the first request (SotW)"},
    {"name": "unhealthy report after the first request (SotW)", "healthy": False},
    {"name": "healthy report after the first request (delta)", "delta": True},
    {"name": "report as the first request of the stream (SotW)", "first": True},
    {"name": "without AUTO_REGISTER_GROUP in the node metadata", "drop_metadata": ["AUTO_REGISTER_GROUP"]},
    {
        "name": "PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION=false",
        "env": {"PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION": "false"},
    },
    {
        "name": "PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS=false",
        "env": {"PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS": "false"},
    },
]


def cmd_health(a: argparse.Namespace) -> int:
    binary = a.istiod or os.environ.get("PYMESH_ISTIOD")
    results = [health_case(binary, a, c) for c in HEALTH_CASES]
    print(json.dumps(results, indent=2))
    return 0


# --- live: today's agent against istiod --------------------------------------------------------


def write_vm_files(directory: Path, grpc_addr: str, metadata: dict[str, Any], probe: dict[str, Any] | None) -> None:
    """istioctl's five VM files (tests/agent_helpers.py shape) for the recorder's VM, plaintext
    to istiod's --grpcAddr through the hosts file, plus an empty resolv.conf."""
    import yaml

    host, port = grpc_addr.rsplit(":", 1)
    env = {
        "CANONICAL_REVISION": "v1",
        "CANONICAL_SERVICE": "product-vm",
        "ISTIO_INBOUND_PORTS": "*",
        "ISTIO_LOCAL_EXCLUDE_PORTS": "22,15090,15021,15020",
        "ISTIO_METAJSON_LABELS": json.dumps(metadata["LABELS"], separators=(",", ":")),
        "ISTIO_META_AUTO_REGISTER_GROUP": metadata.get("AUTO_REGISTER_GROUP", ""),
        "ISTIO_META_CLUSTER_ID": metadata["CLUSTER_ID"],
        "ISTIO_META_DNS_AUTO_ALLOCATE": metadata["DNS_AUTO_ALLOCATE"],
        "ISTIO_META_DNS_CAPTURE": metadata["DNS_CAPTURE"],
        "ISTIO_META_MESH_ID": metadata["MESH_ID"],
        "ISTIO_META_NETWORK": metadata.get("NETWORK", ""),
        "ISTIO_META_POD_PORTS": metadata["POD_PORTS"],
        "ISTIO_META_WORKLOAD_NAME": metadata["WORKLOAD_NAME"],
        "ISTIO_NAMESPACE": "default",
        "ISTIO_SERVICE": "product-vm.default",
        "ISTIO_SERVICE_CIDR": "*",
        "ISTIO_SVC_IP": metadata["INSTANCE_IPS"].split(",")[0],
        "POD_NAME": metadata["NAME"],
        "POD_NAMESPACE": "default",
        "SERVICE_ACCOUNT": metadata["SERVICE_ACCOUNT"],
        "TRUST_DOMAIN": "cluster.local",
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cluster.env").write_text("".join(f"{k}='{v}'\n" for k, v in sorted(env.items())))
    md = {k: v for k, v in env.items() if k.startswith(("ISTIO_META", "CANONICAL", "POD_", "SERVICE_", "TRUST"))}
    cfg: dict[str, Any] = {"discoveryAddress": f"istiod.istio-system.svc:{port}", "proxyMetadata": md}
    cfg["controlPlaneAuthPolicy"] = "NONE"  # istiod's plaintext --grpcAddr
    if probe:
        cfg["readinessProbe"] = probe
    (directory / "mesh.yaml").write_text(yaml.safe_dump({"defaultConfig": cfg}))
    (directory / "hosts").write_text(f"{host} istiod.istio-system.svc\n")
    # Plaintext xDS needs neither; istioctl writes them, so the agent finds them.
    (directory / "root-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (directory / "istio-token").write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n")
    (directory / "resolv.conf").write_text("")


AGENT_ARGS = [
    "--capture", "off", "--outbound-listen", "127.0.0.1:25001", "--dns-listen", "127.0.0.1:25053",
    "--status-listen", "127.0.0.1:25020", "--no-persist", "--verbose",
]  # fmt: skip

# Runs `pymesh agent` and, at exit, writes which protobuf modules it had loaded.
AGENT_WRAPPER = """
import atexit, json, sys
def _dump():
    mods = sorted(m for m in sys.modules if m.split('.')[0] in {pkgs!r} and m.endswith(('_pb2', '_pb2_grpc')))
    json.dump(mods, open({out!r}, 'w'), indent=1)
atexit.register(_dump)
from pymesh.cli import main
sys.argv = ['pymesh', 'agent', *{args!r}]
sys.exit(main())
"""


def cmd_live(a: argparse.Namespace) -> int:
    """istiod for a scenario and today's agent (``pymesh agent``) against it over plaintext,
    for ``--duration`` seconds; then the agent's NACKs and warnings, its DNS answers for the
    scenario's hosts, and whether istiod survived."""
    import dns.message
    import dns.query

    binary = a.istiod or os.environ.get("PYMESH_ISTIOD")
    spec = load_scenario(a.scenario)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    vm = out / "vm"
    md = {**SIDECAR_METADATA, **(spec.get("sidecar_metadata") or {})}
    probe = {"exec": {"command": ["true"]}, "periodSeconds": 2} if a.probe == "exec" else None
    write_vm_files(vm, a.grpc_addr, md, probe)
    args = [
        "--config-dir",
        str(vm),
        "--resolv-conf",
        str(vm / "resolv.conf"),
        *(a.agent_args.split() if a.agent_args else AGENT_ARGS),
    ]
    if a.probe == "none":
        args.append("--no-probe")
    modules = out / "agent-modules.json"
    code = AGENT_WRAPPER.format(pkgs=set(XDS_PROTOS_PACKAGES) | {"google"}, out=str(modules), args=args)
    env = dict(os.environ)
    if a.pymesh:
        env["PYTHONPATH"] = a.pymesh
    work = out / "istiod"
    work.mkdir(exist_ok=True)
    extra = dict(kv.split("=", 1) for kv in a.env)
    ist = Istiod(binary, spec, work, grpc_addr=a.grpc_addr, http_addr=a.http_addr, env=extra)
    ist.start()
    agent_log = out / "agent.log"
    result: dict[str, Any] = {
        "scenario": a.scenario,
        "probe": a.probe,
        "agent": [sys.executable, "-c", "<wrapper>", *args],
    }
    with open(agent_log, "wb") as f:
        agent = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=out)
        try:
            time.sleep(a.duration)
            answers = {}
            for host in sorted(ist.hosts):
                try:
                    r = dns.query.udp(dns.message.make_query(host, "A"), "127.0.0.1", port=25053, timeout=2)
                    answers[host] = [str(x) for rr in r.answer for x in rr]
                except Exception as e:
                    answers[host] = f"{type(e).__name__}: {e}"
            result["dns"] = answers
            try:
                import urllib.request

                with urllib.request.urlopen("http://127.0.0.1:25020/debug/status", timeout=2) as r:
                    result["status"] = json.load(r)
            except (OSError, ValueError) as e:
                result["status"] = f"{type(e).__name__}: {e}"
        finally:
            result["istiod_alive"] = ist.alive()
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
            result["agent_exit"] = agent.returncode
            ist.stop()
    text = agent_log.read_text(errors="replace").splitlines()
    result["nacks"] = [ln for ln in text if "NACK" in ln]
    result["warnings"] = sorted({ln.split(" ", 2)[-1] for ln in text if "WARNING" in ln or "ERROR" in ln})[:40]
    ilog = ist.log_path.read_text(errors="replace").splitlines()
    result["istiod_panic"] = next((ln for ln in ilog if ln.startswith("panic:")), None)
    result["istiod_nacks"] = [ln for ln in ilog if "ACK ERROR" in ln or "NACK" in ln][:20]
    if modules.exists():
        result["agent_modules"] = json.loads(modules.read_text())
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


# --- catalogue -----------------------------------------------------------------------------------


def import_all_xds_protos() -> dict[str, str]:
    """Imports every *_pb2 module of xds-protos; {proto file name: module}."""
    files: dict[str, str] = {}
    for pkg_name in XDS_PROTOS_PACKAGES:
        try:
            pkg = importlib.import_module(pkg_name)
        except ImportError:
            continue
        for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            if not m.name.endswith("_pb2"):
                continue
            try:
                mod = importlib.import_module(m.name)
            except Exception:  # a module whose dependencies are not shipped
                continue
            files[mod.DESCRIPTOR.name] = m.name
    return files


def _pool() -> Any:
    from google.protobuf import descriptor_pool

    return descriptor_pool.Default()


def message_class(full_name: str) -> Any | None:
    from google.protobuf import message_factory

    try:
        d = _pool().FindMessageTypeByName(full_name)
    except KeyError:
        return None
    return message_factory.GetMessageClass(d)


def walk_any(msg: Any, path: str, found: list[dict[str, Any]], owner_name: str = "") -> None:
    """Every google.protobuf.Any under msg (decoded when the pool knows it, recursively),
    as {path, type_url, name (the enclosing message's name field), inner (TypedStruct)}."""
    from google.protobuf import json_format

    if msg.DESCRIPTOR.full_name == "google.protobuf.Any":
        full = msg.type_url.split("/", 1)[-1]
        rec: dict[str, Any] = {"path": path, "type_url": msg.type_url, "name": owner_name}
        found.append(rec)
        cls = message_class(full)
        if cls is None:
            rec["decoded"] = False
            return
        inner = cls()
        inner.ParseFromString(msg.value)
        rec["decoded"] = True
        if full in ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"):
            rec["inner_type_url"] = inner.type_url
            rec["inner_value"] = json_format.MessageToDict(inner.value)
        walk_any(inner, path + "{" + full.rsplit(".", 1)[-1] + "}", found, owner_name)
        return
    name_here = ""
    if "name" in msg.DESCRIPTOR.fields_by_name and msg.DESCRIPTOR.fields_by_name["name"].type == 9:
        name_here = msg.name
    for fd, value in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            continue
        is_map = fd.message_type.GetOptions().map_entry
        if is_map:
            vfd = fd.message_type.fields_by_name["value"]
            if vfd.type != vfd.TYPE_MESSAGE:
                continue
            for k, v in value.items():
                walk_any(v, f"{path}.{fd.name}[{k}]", found, name_here or owner_name)
        elif fd.is_repeated:
            for v in value:
                walk_any(v, f"{path}.{fd.name}[]", found, name_here or owner_name)
        else:
            walk_any(value, f"{path}.{fd.name}", found, name_here or owner_name)


def load_fixture(path: Path) -> Any:
    from envoy.service.discovery.v3 import discovery_pb2

    return discovery_pb2.DiscoveryResponse.FromString(path.read_bytes())


def decode_resource(a: Any) -> Any:
    if a.type_url == NDS:
        sys.path.insert(0, str(REPO))
        from pymesh.proto.nds import NameTable

        return unpack(a, NameTable)
    cls = message_class(a.type_url.split("/", 1)[-1])
    return unpack(a, cls)


def agent_pool_check(type_urls: list[str]) -> dict[str, bool]:
    """Which type URLs the default pool knows with only AGENT_MODULES imported (a fresh
    interpreter, so nothing else is loaded)."""
    code = (
        "import json,sys\n"
        f"for m in {AGENT_MODULES!r}: __import__(m)\n"
        "from google.protobuf import descriptor_pool\n"
        "p=descriptor_pool.Default(); out={}\n"
        "for u in json.load(sys.stdin):\n"
        "  try: p.FindMessageTypeByName(u.split('/',1)[-1]); out[u]=True\n"
        "  except KeyError: out[u]=False\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(type_urls), capture_output=True, text=True, check=True
    )
    return dict(json.loads(r.stdout))


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _short_cluster_type(c: Any) -> str:
    from envoy.config.cluster.v3 import cluster_pb2

    if c.WhichOneof("cluster_discovery_type") == "cluster_type":
        return f"custom:{c.cluster_type.name}"
    return cluster_pb2.Cluster.DiscoveryType.Name(c.type)


def _match_shape(m: Any) -> str:
    from google.protobuf import json_format

    d = json_format.MessageToDict(m, preserving_proto_field_name=True)
    return json.dumps(d, separators=(",", ":"), sort_keys=True) if d else "{}"


def _chains(lis: Any) -> list[Any]:
    chains = list(lis.filter_chains)
    if lis.HasField("default_filter_chain"):
        chains.append(lis.default_filter_chain)
    return chains


def describe(fixtures: Path) -> dict[str, Any]:
    """Everything the catalogue tells, from the fixture files."""
    from google.protobuf import json_format

    modules = import_all_xds_protos()
    scen = [p.name for p in sorted(fixtures.iterdir()) if (p / "manifest.json").is_file()]
    order = scenario_names()
    scen.sort(key=lambda s: order.index(s) if s in order else 99)
    anys: dict[tuple[str, str], dict[str, Any]] = {}  # (resource kind, type_url) -> info
    per: dict[str, Any] = {}
    for s in scen:
        manifest = json.loads((fixtures / s / "manifest.json").read_text())
        per[s] = {"manifest": manifest, "clients": {}}
        for client, cm in manifest["clients"].items():
            info: dict[str, Any] = {}
            for short, fm in cm["files"].items():
                resp = load_fixture(fixtures / s / fm["file"])
                res = [decode_resource(a) for a in resp.resources]
                info[short] = res
                kind = short.upper()
                for r in res:
                    if short == "nds":
                        continue
                    found: list[dict[str, Any]] = []
                    walk_any(r, "", found)
                    for f in found:
                        key = (f"{client}:{kind}", f["type_url"])
                        e = anys.setdefault(
                            key,
                            {
                                "paths": set(),
                                "names": set(),
                                "scenarios": set(),
                                "decoded": f["decoded"],
                                "inner": set(),
                            },
                        )
                        e["paths"].add(f["path"].lstrip("."))
                        if f["name"]:
                            e["names"].add(f["name"])
                        e["scenarios"].add(s)
                        if "inner_type_url" in f:
                            e["inner"].add(f["inner_type_url"])
            per[s]["clients"][client] = info
    urls = sorted({u for (_, u) in anys} | {i for e in anys.values() for i in e["inner"]} | {CDS, EDS, LDS, RDS, NDS})
    agent = agent_pool_check(urls)
    where = {}
    for u in urls:
        full = u.split("/", 1)[-1]
        try:
            f = _pool().FindMessageTypeByName(full).file.name
            where[u] = modules.get(f, f)
        except KeyError:
            where[u] = None
    return {"scenarios": scen, "per": per, "anys": anys, "agent": agent, "where": where, "json_format": json_format}


def markdown_catalogue(d: dict[str, Any]) -> str:

    scen: list[str] = d["scenarios"]
    per = d["per"]
    out: list[str] = []
    w = out.append

    def scen_list(ss: set[str]) -> str:
        return "all" if set(scen) <= ss else ", ".join(s for s in scen if s in ss)

    w("### Recorded files\n")
    w("| scenario | client | cds | eds | lds | rds | nds |")
    w("| --- | --- | --- | --- | --- | --- | --- |")
    for s in scen:
        for client, cm in per[s]["manifest"]["clients"].items():
            cells = [
                str(cm["files"][k]["resource_count"]) if k in cm["files"] else "—"
                for k in ("cds", "eds", "lds", "rds", "nds")
            ]
            w(f"| {s} | {client} | " + " | ".join(cells) + " |")
    w("")
    w(
        "Counts are resources per DiscoveryResponse. istiod: "
        + ", ".join(
            f"{k} `{v}`"
            for k, v in per[scen[0]]["manifest"]["istiod"].items()
            if k in ("version", "revision", "golang_version")
        )
        + ".\n"
    )

    # type URLs
    w("### Every `Any` type URL, and whether today's agent can decode it\n")
    w(
        "`agent pool`: found in the default protobuf pool with only the modules today's agent imports "
        "(`AGENT_MODULES` in record.py); `module`: the xds-protos module that brings it in (import it "
        "to register it); **not in xds-protos**: no module has it. `where` is the field path inside the "
        "resource (`{T}` = inside an Any of type T), `names` the `name` of the nearest enclosing "
        "message that has one (the filter, transport socket, cluster or listener).\n"
    )
    for client in ("sidecar", "grpc"):
        for kind in ("CDS", "EDS", "LDS", "RDS"):
            rows = sorted((u, e) for (k, u), e in d["anys"].items() if k == f"{client}:{kind}")
            if not rows:
                continue
            w(f"#### {client} {kind}\n")
            w("| type URL | agent pool | module | names | where | scenarios |")
            w("| --- | --- | --- | --- | --- | --- |")
            for u, e in rows:
                mod = d["where"].get(u)
                mod_s = f"`{mod}`" if mod else "**not in xds-protos**"
                ok = "yes" if d["agent"].get(u) else "no"
                inner = ""
                if e["inner"]:
                    inner = " → inner " + ", ".join(
                        f"`{i}` ({'xds-protos: ' + d['where'][i] if d['where'].get(i) else 'not in xds-protos'})"
                        for i in sorted(e["inner"])
                    )
                names = ", ".join(f"`{n}`" for n in sorted(e["names"])[:6]) + (" …" if len(e["names"]) > 6 else "")
                paths = "<br>".join(f"`{_md(p)}`" for p in sorted(e["paths"])[:4]) + (
                    " …" if len(e["paths"]) > 4 else ""
                )
                where = scen_list(e["scenarios"])
                w(f"| `{u.split('/', 1)[-1]}`{inner} | {ok} | {mod_s} | {names} | {paths} | {where} |")
            w("")
    # summary lists
    all_urls = sorted({u for (_, u) in d["anys"]} | {i for e in d["anys"].values() for i in e["inner"]})
    w("Summary over all scenarios and both clients:\n")
    w(
        "- decodable by today's agent's pool: "
        + (", ".join(f"`{u.split('/', 1)[-1]}`" for u in all_urls if d["agent"].get(u)) or "none")
    )
    w(
        "- need another xds-protos import: "
        + ", ".join(
            f"`{u.split('/', 1)[-1]}` (`{d['where'][u]}`)"
            for u in all_urls
            if not d["agent"].get(u) and d["where"].get(u)
        )
    )
    w(
        "- not in xds-protos at all: "
        + (", ".join(f"`{u.split('/', 1)[-1]}`" for u in all_urls if not d["where"].get(u)) or "none")
    )
    w(
        "- the resource types themselves: "
        + ", ".join(f"`{u.split('/', 1)[-1]}` ({_pool_word(d, u)})" for u in (CDS, EDS, LDS, RDS, NDS))
    )
    w("")

    # resources: plain in full, the other scenarios as their differences from plain
    for title, kind, fn in (
        ("Clusters (CDS)", "cds", _cluster_summary),
        (
            "Listeners (LDS): address, listener filters, filter chains (name — match — network filters)",
            "lds",
            _listener_summary,
        ),
        ("Route configurations (RDS): virtual hosts, domains, routes", "rds", _routeconfig_summary),
        ("Endpoints (EDS): address, weight, locality weight, metadata", "eds", _cla_summary),
    ):
        w(f"### {title}\n")
        base = scen[0]
        for s in scen:
            for client in ("sidecar", "grpc"):
                res = per[s]["clients"].get(client, {}).get(kind, [])
                mine = {_res_name(kind, r): fn(r) for r in res}
                if s == base:
                    w(f"**{s} / {client}** ({len(mine)}):\n")
                    for n in mine:
                        w(_bullet(f"`{n}`: ", mine[n]))
                    w("")
                    continue
                ref = {_res_name(kind, r): fn(r) for r in per[base]["clients"].get(client, {}).get(kind, [])}
                lines = [_bullet(f"added `{n}`: ", v) for n, v in mine.items() if n not in ref]
                lines += [_bullet(f"changed `{n}`: ", v) for n, v in mine.items() if n in ref and ref[n] != v]
                lines += [f"- gone `{n}`" for n in ref if n not in mine]
                w(f"**{s} / {client}** vs {base}: " + ("same" if not lines else "") + "\n")
                for ln in lines:
                    w(ln)
                if lines:
                    w("")
    # NDS
    w("### NDS (NameTable), sidecar only\n")
    for s in scen:
        for t in per[s]["clients"].get("sidecar", {}).get("nds", []):
            rows = []
            for host in sorted(t.table):
                info = t.table[host]
                extra = ""
                if info.shortname or info.namespace:
                    extra = f" shortname={info.shortname!r} namespace={info.namespace!r}"
                rows.append(f"`{host}` → {list(info.ips)} registry={info.registry or '-'}{extra}")
            w(f"- **{s}**: " + "; ".join(rows))
    w("")
    return "\n".join(out) + "\n"


def _bullet(head: str, summary: str) -> str:
    """A list item: the summary's first line after head, its other lines as sub-items."""
    first, *rest = summary.split("\n")
    sub = [f"    - {x[4:]}" if x.startswith("  - ") else f"  - {x}" for x in rest]
    return "\n".join([f"- {head}{first}".rstrip(), *sub])


def _pool_word(d: dict[str, Any], u: str) -> str:
    if d["agent"].get(u):
        return "agent pool"
    return "pymesh.proto.nds, a pool of its own" if u == NDS else "not in the agent pool"


def _res_name(kind: str, r: Any) -> str:
    return str(r.cluster_name if kind == "eds" else r.name)


def _compact(d: Any) -> str:
    return json.dumps(d, separators=(",", ":"))


def _cluster_summary(c: Any) -> str:
    from envoy.config.cluster.v3 import cluster_pb2
    from google.protobuf import json_format

    parts = [_short_cluster_type(c)]
    if c.lb_policy:
        parts.append("lb=" + cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy))
    if c.eds_cluster_config.service_name and c.eds_cluster_config.service_name != c.name:
        parts.append(f"eds_service_name={c.eds_cluster_config.service_name}")
    if c.transport_socket_matches:
        parts.append(
            "transport_socket_matches=["
            + ", ".join(
                f"{m.name}{_compact(json_format.MessageToDict(m.match))}→{m.transport_socket.name}"
                for m in c.transport_socket_matches
            )
            + "]"
        )
    if c.HasField("transport_socket"):
        parts.append(f"transport_socket={c.transport_socket.name}")
    if c.typed_extension_protocol_options:
        parts.append(
            "protocol_options=["
            + ",".join(sorted(k.rsplit(".", 1)[-1] for k in c.typed_extension_protocol_options))
            + "]"
        )
    if c.filters:
        parts.append("filters=[" + ",".join(f.name for f in c.filters) + "]")
    if c.HasField("circuit_breakers"):
        t = c.circuit_breakers.thresholds[0] if c.circuit_breakers.thresholds else None
        if t is not None:
            parts.append("circuit_breakers=" + json.dumps(json_format.MessageToDict(t), separators=(",", ":")))
    if c.HasField("outlier_detection"):
        parts.append(
            "outlier_detection=" + json.dumps(json_format.MessageToDict(c.outlier_detection), separators=(",", ":"))
        )
    if c.HasField("ring_hash_lb_config") or c.HasField("least_request_lb_config"):
        parts.append(c.WhichOneof("lb_config") or "")
    if c.HasField("load_balancing_policy"):
        parts.append(
            "load_balancing_policy=["
            + ",".join(p.typed_extension_config.name for p in c.load_balancing_policy.policies)
            + "]"
        )
    if c.HasField("typed_dns_resolver_config"):
        parts.append(f"dns_resolver={c.typed_dns_resolver_config.name}")
    if c.HasField("load_assignment") and c.load_assignment.endpoints:
        sa = [e.endpoint.address.socket_address for le in c.load_assignment.endpoints for e in le.lb_endpoints]
        parts.append("load_assignment=[" + ",".join(f"{x.address}:{x.port_value}" for x in sa) + "]")
    if c.HasField("metadata"):
        parts.append(
            "metadata="
            + json.dumps(json_format.MessageToDict(c.metadata).get("filterMetadata", {}), separators=(",", ":"))
        )
    return " ".join(parts)


def _listener_summary(li: Any) -> str:
    sa = li.address.socket_address
    if li.HasField("api_listener"):
        h = hcm_of(li.api_listener.api_listener)
        if h is None:
            return f"api_listener at {sa.address}:{sa.port_value}"
        filters = ",".join(f.name for f in h.http_filters)
        return (
            f"api_listener at {sa.address}:{sa.port_value}, HCM rds=`{h.rds.route_config_name}` http_filters={filters}"
        )
    flags = []
    if li.use_original_dst.value:
        flags.append("use_original_dst")
    if li.HasField("bind_to_port") and not li.bind_to_port.value:
        flags.append("bind_to_port=false")
    if li.traffic_direction:
        flags.append(["", "INBOUND", "OUTBOUND"][li.traffic_direction])
    chains = []
    for fc in _chains(li):
        tag = "default_filter_chain " if li.HasField("default_filter_chain") and fc is li.default_filter_chain else ""
        fl = []
        for f in fc.filters:
            name = f.name.replace("envoy.filters.network.", "")
            h = hcm_of(f.typed_config) if f.HasField("typed_config") else None
            if f.typed_config.type_url.endswith(".TcpProxy"):
                from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

                tp = unpack(f.typed_config, tcp_proxy_pb2.TcpProxy)
                name += "→" + (tp.cluster or ",".join(c.name for c in tp.weighted_clusters.clusters))
            if h is not None:
                if h.WhichOneof("route_specifier") == "rds":
                    route = f"rds={h.rds.route_config_name}"
                else:
                    route = f"route_config={h.route_config.name}"
                name += f"({route}; " + ",".join(x.name for x in h.http_filters) + ")"
            fl.append(name)
        ts = f" [{fc.transport_socket.name}]" if fc.HasField("transport_socket") else ""
        chains.append(f"{tag}`{fc.name or '-'}` match `{_match_shape(fc.filter_chain_match)}`: {', '.join(fl)}{ts}")
    lf = ",".join(f.name for f in li.listener_filters)
    head = f"{sa.address}:{sa.port_value} {' '.join(flags)}; listener_filters=[{lf}]"
    return "\n".join([head, *chains])


def _routeconfig_summary(rc: Any) -> str:
    lines = []
    for vh in rc.virtual_hosts:
        lines.append(f"vhost `{vh.name}` domains {json.dumps(list(vh.domains))}")
        lines.extend(f"  - route {_route_summary(r)}" for r in vh.routes)
    return "\n".join(["", *lines]) if lines else "(no virtual hosts)"


def _cla_summary(cla: Any) -> str:
    from google.protobuf import json_format

    eps = []
    for le in cla.endpoints:
        loc = "/".join(x for x in (le.locality.region, le.locality.zone, le.locality.sub_zone) if x)
        for lb in le.lb_endpoints:
            sa = lb.endpoint.address.socket_address
            md = json_format.MessageToDict(lb.metadata).get("filterMetadata", {}) if lb.HasField("metadata") else {}
            wt = lb.load_balancing_weight.value if lb.HasField("load_balancing_weight") else None
            eps.append(
                f"{sa.address}:{sa.port_value}"
                + (f" w={wt}" if wt is not None else "")
                + (f" locality={loc}" if loc else "")
                + (f" lw={le.load_balancing_weight.value}" if le.HasField("load_balancing_weight") else "")
                + (f" {json.dumps(md, separators=(',', ':'), sort_keys=True)}" if md else "")
            )
    return "; ".join(f"`{e}`" for e in sorted(eps)) if eps else "(no endpoints)"


def _route_summary(r: Any) -> str:
    from google.protobuf import json_format

    m = json_format.MessageToDict(r.match, preserving_proto_field_name=True)
    if r.HasField("route"):
        ra = r.route
        if ra.cluster:
            act = f"→{ra.cluster}"
        elif ra.weighted_clusters.clusters:
            act = (
                "→{"
                + ",".join(f"{c.name.split('|')[2] or c.name}:{c.weight.value}" for c in ra.weighted_clusters.clusters)
                + "}"
            )
        else:
            act = "→?"
        extras = []
        if ra.HasField("timeout"):
            extras.append(f"timeout={ra.timeout.ToJsonString()}")
        if ra.HasField("max_stream_duration"):
            extras.append("msd=" + json.dumps(json_format.MessageToDict(ra.max_stream_duration), separators=(",", ":")))
        if ra.HasField("retry_policy"):
            extras.append(f"retry={ra.retry_policy.retry_on}/{ra.retry_policy.num_retries.value}")
        if r.typed_per_filter_config:
            extras.append("per_filter=[" + ",".join(sorted(r.typed_per_filter_config)) + "]")
        act += (" " + " ".join(extras)) if extras else ""
    elif r.HasField("direct_response"):
        act = f"direct_response {r.direct_response.status}"
    else:
        act = r.WhichOneof("action") or "?"
    return f"`{r.name or '-'}` {json.dumps(m, separators=(',', ':'))} {act}"


def cmd_catalogue(a: argparse.Namespace) -> int:
    d = describe(Path(a.fixtures))
    text = markdown_catalogue(d)
    if a.doc:
        doc = Path(a.doc)
        body = doc.read_text()
        start, end = "<!-- catalogue:start (scripts/istiod/record.py catalogue) -->", "<!-- catalogue:end -->"
        i, j = body.find(start), body.find(end)
        if i < 0 or j < 0:
            log(f"{doc}: no {start} ... {end} markers")
            return 1
        doc.write_text(body[: i + len(start)] + "\n\n" + text.rstrip("\n") + "\n\n" + body[j:])
        log(f"wrote the catalogue into {doc}")
    else:
        sys.stdout.write(text)
    return 0


def _mask_unknown_anys(msg: Any) -> None:
    """Replaces, in place, every Any the pool cannot resolve by a Struct Any saying what it was
    ({"unknown_type_url", "value_base64"}), so json_format can print the rest."""
    import base64

    from google.protobuf import struct_pb2

    if msg.DESCRIPTOR.full_name == "google.protobuf.Any":
        cls = message_class(msg.type_url.split("/", 1)[-1])
        if cls is None:
            st = struct_pb2.Struct()
            st.update({"unknown_type_url": msg.type_url, "value_base64": base64.b64encode(msg.value).decode()})
            msg.Pack(st)
            return
        inner = cls.FromString(msg.value)
        _mask_unknown_anys(inner)
        msg.Pack(inner, type_url_prefix=msg.type_url.split("/", 1)[0])
        return
    for fd, value in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            continue
        if fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            if vfd.type == vfd.TYPE_MESSAGE:
                for v in value.values():
                    _mask_unknown_anys(v)
        elif fd.is_repeated:
            for v in value:
                _mask_unknown_anys(v)
        else:
            _mask_unknown_anys(value)


def cmd_show(a: argparse.Namespace) -> int:
    """A fixture as JSON, every Any that xds-protos knows expanded; the others (Istio's own
    extensions) as {"unknown_type_url", "value_base64"}."""
    from google.protobuf import json_format

    import_all_xds_protos()
    resp = load_fixture(Path(a.file))
    out = {
        "version_info": resp.version_info,
        "type_url": resp.type_url,
        "nonce": resp.nonce,
        "resources": [],
    }
    for r in resp.resources:
        m = decode_resource(r)
        _mask_unknown_anys(m)
        out["resources"].append(json_format.MessageToDict(m, preserving_proto_field_name=True))
    print(json.dumps(out, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--istiod", help="pilot-discovery binary (default: $PYMESH_ISTIOD)")
        sp.add_argument("--grpc-addr", default=GRPC_ADDR)
        sp.add_argument("--http-addr", default=HTTP_ADDR)

    r = sub.add_parser("record", help="run the scenarios and write the fixtures")
    common(r)
    r.add_argument("--scenario", action="append", help="only these (default: all under scenarios/)")
    r.add_argument("--out", default=str(FIXTURES))
    r.add_argument("--timeout", type=float, default=30.0)
    r.add_argument("--quiet", type=float, default=2.0, help="seconds without a push before recording")
    r.add_argument("--keep-logs", help="copy each scenario's istiod log here")
    r.add_argument("--env", action="append", default=[], help="KEY=VALUE for istiod, over the scenario's (experiments)")
    r.set_defaults(fn=cmd_record)
    s = sub.add_parser("serve", help="run istiod for one scenario until Ctrl-C / --duration")
    common(s)
    s.add_argument("--scenario", default="plain")
    s.add_argument("--workdir")
    s.add_argument("--duration", type=float, default=0)
    s.add_argument("--env", action="append", default=[], help="KEY=VALUE for istiod")
    s.set_defaults(fn=cmd_serve)
    h = sub.add_parser("health", help="what a health report does to istiod without Kubernetes")
    common(h)
    h.set_defaults(fn=cmd_health)
    lv = sub.add_parser("live", help="today's agent against istiod: NACKs, warnings, DNS, istiod's fate")
    common(lv)
    lv.add_argument("--scenario", default="plain")
    lv.add_argument("--out", required=True, help="directory for the VM files, logs and result.json")
    lv.add_argument("--duration", type=float, default=15)
    lv.add_argument(
        "--probe",
        choices=("none", "exec"),
        default="none",
        help="exec: mesh.yaml gets an exec probe (`true`), so the agent reports health",
    )
    lv.add_argument("--env", action="append", default=[], metavar="K=V", help="istiod environment (repeatable)")
    lv.add_argument("--pymesh", help="PYTHONPATH for the agent (a checkout of pymesh; default: the installed one)")
    lv.add_argument("--agent-args", help=f"instead of {' '.join(AGENT_ARGS)!r} (older agents: no --capture off)")
    lv.set_defaults(fn=cmd_live)
    c = sub.add_parser("catalogue", help="the catalogue of the recorded fixtures (markdown)")
    c.add_argument("--fixtures", default=str(FIXTURES))
    c.add_argument("--doc", help="replace the catalogue section of this file (docs/istiod-interop.md)")
    c.set_defaults(fn=cmd_catalogue)
    sh = sub.add_parser("show", help="a fixture file as JSON")
    sh.add_argument("file")
    sh.set_defaults(fn=cmd_show)
    a = p.parse_args(argv)
    return int(a.fn(a))


if __name__ == "__main__":
    sys.exit(main())
