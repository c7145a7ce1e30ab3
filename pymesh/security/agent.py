"""TLS for the VM agent's control-plane connection (what the agent's xDS
client and the CA calls share).

The mode follows Istio: ``controlPlaneAuthPolicy`` in mesh.yaml's
``defaultConfig`` (istio-start.sh sets ``MUTUAL_TLS`` for VMs), overridden
by ``AgentOptions.control_plane_auth``; ``NONE`` is plaintext. With
``MUTUAL_TLS`` the agent verifies the control plane against root-cert.pem
under the host name of ``discoveryAddress``, gets its certificate with the
istio-token (re-read from its file on every use, so an operator's fresh
token is picked up), keeps it in ``cert_dir`` (``OUTPUT_CERTS``, else
``<state-dir>/certs``), renews it with itself at half its life, and makes
every xDS stream with the current one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pymesh.security.client import WorkloadCerts
from pymesh.security.errors import SecurityError
from pymesh.security.tokens import parse_duration

log = logging.getLogger("pymesh.agent")

MODES = ("MUTUAL_TLS", "NONE")


def auth_mode(bootstrap: Any, option: str | None) -> str:
    mode = option or str(bootstrap.proxy_config.get("controlPlaneAuthPolicy") or "NONE")
    mode = mode.upper()
    if mode not in MODES:
        raise SecurityError(f"controlPlaneAuthPolicy {mode!r}: expected MUTUAL_TLS or NONE")
    return mode


def server_name(bootstrap: Any) -> str:
    from pymesh.agent.bootstrap import split_host_port

    return split_host_port(bootstrap.discovery_address, default_port=15012)[0]


def attach_tls(agent: Any, client: Any) -> WorkloadCerts:
    """Makes ``client`` (an XdsClient) connect with mTLS; returns the started certificate keeper."""
    b, o = agent.bootstrap, agent.options
    if not b.root_cert:
        raise SecurityError(f"{b.paths.root_cert}: MUTUAL_TLS to the control plane needs root-cert.pem")
    cert_dir = o.cert_dir or b.get("OUTPUT_CERTS") or str(Path(agent.state.path if agent.state else ".") / "certs")
    ttl = o.cert_ttl or parse_duration(b.get("SECRET_TTL") or "24h")
    token_path = Path(b.paths.token)

    def token() -> str | None:
        try:
            text = token_path.read_text().strip()
        except OSError:
            text = ""
        return text or (b.token.text if b.token is not None else None)

    certs = WorkloadCerts(
        agent.target,
        b.root_cert,
        cert_dir,
        server_name=server_name(b),
        token=token,
        cluster_id=str(agent.node.metadata.get("CLUSTER_ID") or ""),
        ttl=ttl,
        root_file=b.paths.root_cert,
    )
    client.channel_factory = certs.channel
    certs.start()
    log.info("mTLS to the control plane as %s (certificates in %s)", server_name(b), cert_dir)
    return certs


def split_addr(addr: str, what: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SecurityError(f"{what} {addr!r}: expected ADDRESS:PORT")
    return host.strip("[]"), int(port)


def start_inbound(agent: Any, spec: str, mode: str = "STRICT") -> Any:
    """The inbound mTLS listener (Istio's 15006) for ``LISTEN=TARGET``: mTLS
    from mesh workloads terminated with the agent's own certificate (fetched
    now if the agent holds none yet), plaintext handed to the local app at
    TARGET. Rotation: the listener reloads the files the agent renews."""
    from pymesh.security.datapath import InboundMtls

    if agent.certs is None:
        raise SecurityError("--inbound-mtls needs MUTUAL_TLS to the control plane (the workload certificate)")
    listen, sep, target = spec.partition("=")
    if not sep:
        raise SecurityError(f"--inbound-mtls {spec!r}: expected LISTEN=TARGET, e.g. 0.0.0.0:15006=127.0.0.1:8080")
    agent.certs.ensure()
    td = agent.bootstrap.get("TRUST_DOMAIN") or "cluster.local"
    inbound = InboundMtls(
        agent.certs.dir,
        split_addr(target, "inbound target"),
        listen=split_addr(listen, "inbound listen"),
        mode=mode,
        trust_domain=td,
    ).start()
    log.info("inbound mTLS (%s) on %s:%d to %s", mode, inbound.listen[0], inbound.port, target)
    return inbound
