"""The agent's xDS identity: node id and metadata, built as istio-agent
builds them (istio/istio ``pkg/bootstrap/config.go``, ``getNodeMetaData``).
The id's form and the metadata keys are :mod:`pymesh.mesh.node`, which the
control plane parses with.

- Node id ``sidecar~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.<domain>``.
- ``INSTANCE_IP``: ``ISTIO_SVC_IP`` (what istioctl's ``--internalIP`` /
  ``--externalIP`` set), else ``INSTANCE_IP``, else the host's first
  address (``hostname --all-ip-addresses``, as istio-start.sh); the proxy's
  IPs are that one first, then the host's other addresses.
- ``POD_NAME``: ``POD_NAME``, else ``hostname -s``. ``POD_NAMESPACE``:
  ``POD_NAMESPACE``, else ``ISTIO_NAMESPACE``, else ``default``.
- Metadata: every ``ISTIO_META_<KEY>`` as the string ``<KEY>``, every
  ``ISTIO_METAJSON_<KEY>`` parsed as JSON (``LABELS`` from
  ``ISTIO_METAJSON_LABELS``); then what the agent itself knows:
  ``NAMESPACE``, ``INSTANCE_IPS`` (comma-joined), ``NAME``,
  ``PROXY_CONFIG`` (the ProxyConfig, with ``readinessProbe``: it is what
  makes the control plane mark a registered entry health-checked),
  ``SERVICE_ACCOUNT``, ``ISTIO_VERSION``, ``INTERCEPTION_MODE``.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymesh.agent.bootstrap import Bootstrap
from pymesh.agent.errors import BootstrapError
from pymesh.mesh import node as meta
from pymesh.mesh.defaults import DEFAULT_DOMAIN, DEFAULT_NAMESPACE
from pymesh.mesh.node import META_PREFIX, METAJSON_PREFIX, NodeIdError, node_id
from pymesh.mesh.values import truthy


def host_ips() -> list[str]:
    """The host's addresses in ``hostname --all-ip-addresses`` order
    (non-loopback, non-link-local), falling back to the source address of
    the default route."""
    out: list[str] = []
    try:
        r = subprocess.run(["hostname", "--all-ip-addresses"], capture_output=True, text=True, timeout=2, check=False)
        for w in r.stdout.split():
            try:
                ip = ipaddress.ip_address(w.split("%", 1)[0])
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local):
                out.append(str(ip))
    except (OSError, subprocess.SubprocessError):
        pass
    if not out:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent
                out.append(s.getsockname()[0])
        except OSError:
            pass
    return out


@dataclass(frozen=True)
class NodeInfo:
    id: str
    ip: str
    ips: tuple[str, ...]
    name: str
    namespace: str
    domain: str
    metadata: dict[str, Any] = field(default_factory=dict)
    user_agent: str = "pymesh-agent"

    @property
    def dns_capture(self) -> bool:
        return truthy(self.metadata.get(meta.DNS_CAPTURE, ""))

    def to_proto(self) -> Any:
        """The ``envoy.config.core.v3.Node`` sent on the first request of a stream."""
        from envoy.config.core.v3 import base_pb2
        from google.protobuf import struct_pb2

        md = struct_pb2.Struct()
        md.update(self.metadata)
        from pymesh import __version__

        return base_pb2.Node(
            id=self.id,
            metadata=md,
            user_agent_name=self.user_agent,
            user_agent_version=__version__,
        )


def _ip(value: str, b: Bootstrap, key: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise b.error(key, f"{value!r} is not an IP address") from None


def build_node(
    b: Bootstrap,
    *,
    instance_ip: str | None = None,
    extra_ips: Sequence[str] | None = None,
    pod_name: str | None = None,
    namespace: str | None = None,
    domain: str = DEFAULT_DOMAIN,
    metadata: Mapping[str, Any] | None = None,
    node_type: str = "sidecar",
) -> NodeInfo:
    """The node for bootstrap ``b``; keyword arguments override what the
    files and environment say (``extra_ips=None`` asks the host)."""
    if instance_ip:
        ip = _ip(instance_ip, b, "INSTANCE_IP")
    elif b.get("ISTIO_SVC_IP").strip():
        ip = _ip(b.get("ISTIO_SVC_IP"), b, "ISTIO_SVC_IP")
    elif b.get("INSTANCE_IP").strip():
        ip = _ip(b.get("INSTANCE_IP"), b, "INSTANCE_IP")
    else:
        found = host_ips() if extra_ips is None else list(extra_ips)
        ip = found[0] if found else "127.0.0.1"
    others = host_ips() if extra_ips is None else list(extra_ips)
    ips = [ip, *(x for x in others if x != ip)]
    name = pod_name or b.get("POD_NAME").strip() or socket.gethostname().split(".", 1)[0]
    ns = namespace or b.get("POD_NAMESPACE").strip() or b.get("ISTIO_NAMESPACE").strip() or DEFAULT_NAMESPACE

    md: dict[str, Any] = {}
    for key in sorted(b.env):
        value = b.env[key].value
        if key.startswith(METAJSON_PREFIX) and len(key) > len(METAJSON_PREFIX):
            try:
                md[key[len(METAJSON_PREFIX) :]] = json.loads(value) if value.strip() else {}
            except ValueError as e:
                raise b.error(key, f"not valid JSON: {e}") from None
        elif key.startswith(META_PREFIX) and len(key) > len(META_PREFIX):
            md[key[len(META_PREFIX) :]] = value
    labels = md.get(meta.LABELS)
    if labels is not None and not isinstance(labels, dict):
        raise b.error("ISTIO_METAJSON_LABELS", "expected a JSON object of label: value")
    md[meta.NAMESPACE] = ns
    md[meta.INSTANCE_IPS] = ",".join(ips)
    md.setdefault(meta.NAME, name)
    md[meta.PROXY_CONFIG] = _jsonable(b.proxy_config)
    if b.get("SERVICE_ACCOUNT"):
        md.setdefault(meta.SERVICE_ACCOUNT, b.get("SERVICE_ACCOUNT"))
    md.setdefault(meta.INTERCEPTION_MODE, b.get("ISTIO_INBOUND_INTERCEPTION_MODE", "REDIRECT") or "REDIRECT")
    from pymesh import __version__

    md.setdefault(meta.ISTIO_VERSION, f"pymesh-{__version__}")
    for k, v in (metadata or {}).items():
        md[k] = v
    try:
        nid = node_id(ip, name, ns, domain, node_type)
    except NodeIdError as e:
        raise BootstrapError(f"{e} (POD_NAME / POD_NAMESPACE)", key="POD_NAME") from None
    return NodeInfo(id=nid, ip=ip, ips=tuple(ips), name=name, namespace=ns, domain=domain, metadata=md)


def _jsonable(v: Any) -> Any:
    """ProxyConfig as JSON-compatible data (a Struct takes no ints > 2^53,
    no non-string keys)."""
    return json.loads(json.dumps(v, default=str))
