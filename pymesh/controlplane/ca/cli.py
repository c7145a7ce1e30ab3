"""``pymesh token create``, ``pymesh token rotate-key`` and ``pymesh ca
root-cert``, plus the control plane's TLS flags (added to ``pymesh
controlplane`` by its parser).

    pymesh token create --namespace NS --service-account SA [--ttl 1h] [--audience istio-ca]

prints a JWT the control plane (same data directory) accepts as the VM's
``istio-token``; ``pymesh token rotate-key`` replaces the signing key, which
revokes every token issued before (a running control plane notices at its next
verification); ``pymesh ca root-cert`` prints the mesh root for the VM's
``root-cert.pem``. They create the keys on first use, as the control plane would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pymesh.mesh.defaults import DEFAULT_TRUST_DOMAIN
from pymesh.mesh.files import data_dir


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir else data_dir()


def cmd_token_create(args: argparse.Namespace) -> int:
    from pymesh.controlplane.ca.tokens import TokenAuthority, parse_duration

    ta = TokenAuthority(_data_dir(args) / "tokens", trust_domain=args.trust_domain)
    print(ta.create(args.namespace, args.service_account, ttl=parse_duration(args.ttl), audience=args.audience))
    return 0


def cmd_token_rotate(args: argparse.Namespace) -> int:
    from pymesh.controlplane.ca.tokens import TokenAuthority

    ta = TokenAuthority(_data_dir(args) / "tokens", trust_domain=args.trust_domain)
    old = ta.kid
    print(ta.rotate_key())
    print(
        f"pymesh: token signing key {old} replaced: every token it signed is refused from now on, by a running "
        "control plane too (VMs that hold a certificate renew with it and are not affected); "
        "issue new tokens with `pymesh token create`",
        file=sys.stderr,
    )
    return 0


def cmd_ca_root(args: argparse.Namespace) -> int:
    from pymesh.controlplane.ca.ca import CertificateAuthority

    ca = CertificateAuthority(_data_dir(args) / "ca", trust_domain=args.trust_domain)
    sys.stdout.write(ca.root_pem)
    return 0


def add_commands(sub: Any) -> None:
    data_help = "the control plane's data directory (default as for `pymesh controlplane`; $PYMESH_DATA_DIR)"
    tok = sub.add_parser("token", help="bootstrap tokens for VMs (the agent's istio-token)")
    tsub = tok.add_subparsers(dest="token_command", required=True)
    c = tsub.add_parser("create", help="print a signed JWT for NAMESPACE/SERVICE-ACCOUNT")
    c.add_argument("--namespace", "-n", required=True)
    c.add_argument("--service-account", "-s", required=True)
    c.add_argument("--ttl", default="1h", help="lifetime: seconds or 30m/1h/7d (default %(default)s, as istioctl)")
    c.add_argument("--audience", default="istio-ca", help="aud claim (default %(default)s)")
    c.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    c.add_argument("--data-dir", default=None, help=data_help)
    c.set_defaults(func=cmd_token_create)
    rk = tsub.add_parser(
        "rotate-key", help="replace the token signing key: revokes every token issued before (prints the new kid)"
    )
    rk.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    rk.add_argument("--data-dir", default=None, help=data_help)
    rk.set_defaults(func=cmd_token_rotate)
    ca = sub.add_parser("ca", help="the mesh CA")
    csub = ca.add_subparsers(dest="ca_command", required=True)
    r = csub.add_parser("root-cert", help="print the mesh root certificate (the VM's root-cert.pem)")
    r.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    r.add_argument("--data-dir", default=None, help=data_help)
    r.set_defaults(func=cmd_ca_root)


def add_controlplane_flags(p: Any) -> None:
    """TLS flags of ``pymesh controlplane``."""
    p.add_argument(
        "--secure-listen",
        metavar="ADDR:PORT",
        default=None,
        help="TLS port for xDS and the CA (default 0.0.0.0:15012; off when only --xds-listen is given; '' = off)",
    )
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="SPIFFE trust domain (default %(default)s)")
    p.add_argument("--plugin-ca", metavar="DIR", help="Istio cacerts layout: ca-cert/ca-key/root-cert/cert-chain.pem")
    p.add_argument("--cert-ttl", default="24h", help="default workload certificate lifetime (default %(default)s)")
    p.add_argument(
        "--cluster-id",
        default="Kubernetes",
        help="this control plane's cluster (istiod's --clusterID): token requests must name it, meshNetworks "
        "fromRegistry selects it (default %(default)s)",
    )
    p.add_argument(
        "--xds-auth",
        choices=("mtls", "token"),
        default="mtls",
        help="xDS on the TLS port needs a client certificate (mtls), or also accepts a bearer token",
    )


def security_options(args: argparse.Namespace) -> Any:
    """SecurityOptions from the flags, or None when the TLS port is off."""
    from pymesh.controlplane.ca.service import DEFAULT_SECURE_LISTEN, SecurityOptions
    from pymesh.controlplane.ca.tokens import parse_duration

    listen = args.secure_listen
    if listen is None:
        listen = "" if args.xds_listen is not None else DEFAULT_SECURE_LISTEN
    if not listen:
        return None
    ttl = parse_duration(args.cert_ttl)
    return SecurityOptions(
        secure_listen=listen,
        trust_domain=args.trust_domain,
        plugin_ca_dir=args.plugin_ca,
        cert_ttl=ttl,
        server_cert_ttl=max(ttl, 3600.0),
        xds_auth=args.xds_auth,
        cluster_id=args.cluster_id,
    )
