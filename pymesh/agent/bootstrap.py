"""The VM bootstrap files, read as Istio's VM guide installs them.

``istioctl x workload entry configure -o DIR`` writes five files
(https://istio.io/latest/docs/setup/install/virtual-machine/, "Create files
to transfer to the virtual machine"); the guide copies them to:

==================  ==========================================  ======================
file in DIR         installed at                                 what we take from it
==================  ==========================================  ======================
``cluster.env``     ``/var/lib/istio/envoy/cluster.env``         ``KEY='value'`` lines
``mesh.yaml``       ``/etc/istio/config/mesh``                   ``defaultConfig``
``root-cert.pem``   ``/etc/certs/root-cert.pem``                 trust anchor (TLS later)
``istio-token``     ``/var/run/secrets/tokens/istio-token``      JWT (CA auth later)
``hosts``           appended to ``/etc/hosts``                   discovery host → IP
==================  ==========================================  ======================

``load_bootstrap()`` reads them from those places, or all five from one
directory (``config_dir``), each path also overridable. Every error names
the file, the line and the key.

Precedence of settings follows what ``istio-start.sh`` does: it sources
``cluster.env`` with auto-export over the service's environment, and
pilot-agent fills ``proxyMetadata`` keys only where the environment has
none. So: mesh.yaml ``proxyMetadata`` < process environment < cluster.env.
``PROXY_CONFIG`` in that environment (YAML/JSON) overlays mesh.yaml's
``defaultConfig`` as pilot-agent does, ``proxyMetadata`` maps merged.

Values in cluster.env are literal after shell unquoting (istioctl single-
quotes every value); nothing is expanded.

Size: the five istioctl files and their environment, read in one place so "what the VM
was told" has one answer; most of it is the table of keys and their checks.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pymesh.agent.errors import BootstrapError
from pymesh.mesh.addr import format_host_port, parse_host_port
from pymesh.mesh.defaults import DEFAULT_DISCOVERY_ADDRESS, XDS_TLS_PORT
from pymesh.mesh.errors import AddressError, ProbeError
from pymesh.mesh.probe import ProbeSpec, parse_probe
from pymesh.mesh.values import truthy

DEFAULT_CLUSTER_ENV = "/var/lib/istio/envoy/cluster.env"
DEFAULT_MESH = "/etc/istio/config/mesh"
DEFAULT_ROOT_CERT = "/etc/certs/root-cert.pem"
DEFAULT_TOKEN = "/var/run/secrets/tokens/istio-token"
DEFAULT_HOSTS = "/etc/hosts"
# Names istioctl gives the five files in its output directory.
CONFIG_DIR_FILES = {
    "cluster_env": "cluster.env",
    "mesh": "mesh.yaml",
    "root_cert": "root-cert.pem",
    "token": "istio-token",
    "hosts": "hosts",
}

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
__all__ = [
    "CONFIG_DIR_FILES",
    "DEFAULT_DISCOVERY_ADDRESS",
    "Bootstrap",
    "BootstrapPaths",
    "EnvValue",
    "HostsEntry",
    "Token",
    "load_bootstrap",
    "parse_cluster_env",
    "parse_hosts",
    "parse_mesh",
    "parse_pem_certs",
    "parse_token",
    "split_host_port",
    "truthy",
    "write_vm_files",
]


@dataclass(frozen=True)
class EnvValue:
    value: str
    file: str = ""  # "" when it came from the process environment
    line: int = 0


@dataclass(frozen=True)
class BootstrapPaths:
    cluster_env: str = DEFAULT_CLUSTER_ENV
    mesh: str = DEFAULT_MESH
    root_cert: str = DEFAULT_ROOT_CERT
    token: str = DEFAULT_TOKEN
    hosts: str = DEFAULT_HOSTS

    @staticmethod
    def from_dir(directory: str | os.PathLike[str]) -> BootstrapPaths:
        d = Path(directory)
        return BootstrapPaths(**{k: str(d / v) for k, v in CONFIG_DIR_FILES.items()})


@dataclass(frozen=True)
class HostsEntry:
    address: str
    names: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class Token:
    text: str
    subject: str = ""
    audience: tuple[str, ...] = ()
    expires: float | None = None  # Unix time of "exp"


@dataclass
class Bootstrap:
    """Everything the bootstrap files (and the environment) say."""

    paths: BootstrapPaths
    env: dict[str, EnvValue]
    proxy_config: dict[str, Any]  # mesh.yaml defaultConfig (+ PROXY_CONFIG overlay)
    mesh: dict[str, Any]  # the whole mesh.yaml document
    discovery_address: str
    readiness_probe: ProbeSpec | None
    root_cert: str | None
    token: Token | None
    hosts: list[HostsEntry]
    notes: list[str] = field(default_factory=list)  # missing optional files and the like

    def get(self, key: str, default: str = "") -> str:
        v = self.env.get(key)
        return v.value if v is not None else default

    def where(self, key: str) -> tuple[str, int]:
        v = self.env.get(key)
        return (v.file, v.line) if v is not None else ("", 0)

    def error(self, key: str, message: str) -> BootstrapError:
        file, line = self.where(key)
        return BootstrapError(message, file=file or "environment", line=line, key=key)

    def resolve_host(self, host: str) -> str | None:
        """The address the hosts file gives ``host`` (first match, as glibc)."""
        h = host.rstrip(".").lower()
        for e in self.hosts:
            if h in e.names:
                return e.address
        return None

    def control_plane_target(self) -> str:
        """``discoveryAddress`` with its host resolved through the hosts file
        when that names it (istioctl's ``hosts`` maps istiod's name to the
        east-west gateway), as a gRPC target ``host:port``."""
        host, port = split_host_port(self.discovery_address, default_port=XDS_TLS_PORT)
        return format_host_port(self.resolve_host(host) or host, port)


def split_host_port(addr: str, *, default_port: int) -> tuple[str, int]:
    """``discoveryAddress`` as host and port (:func:`pymesh.mesh.addr.parse_host_port`)."""
    try:
        return tuple(parse_host_port(addr, default_port=default_port, what="discoveryAddress"))  # type: ignore[return-value]
    except AddressError as e:
        raise BootstrapError(str(e), key="discoveryAddress") from None


# --- cluster.env ----------------------------------------------------------------------


def parse_cluster_env(text: str, file: str = "cluster.env") -> dict[str, EnvValue]:
    """Parses ``KEY='value'`` lines as ``sh`` would read them (single and
    double quotes, backslash escapes, ``export`` prefix, comments and blank
    lines); the last assignment of a key wins."""
    out: dict[str, EnvValue] = {}
    # Lines end at "\n" only and blanks are space/tab (sh's IFS), not every
    # Unicode line break or space str.splitlines()/str.strip() know.
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip(" \t")
        key, eq, value = line.partition("=")
        if not eq:
            words = key.split()
            raise BootstrapError("expected KEY=value", file=file, line=lineno, key=words[0] if words else "")
        if not _KEY.match(key):
            raise BootstrapError(f"{key!r} is not a shell variable name", file=file, line=lineno, key=key)
        try:
            words = shlex.split(value, comments=True, posix=True)
        except ValueError as e:  # "No closing quotation", "No escaped character"
            raise BootstrapError(f"cannot unquote the value: {str(e).lower()}", file=file, line=lineno, key=key) from e
        if len(words) > 1:
            raise BootstrapError(
                "the value has unquoted whitespace (sh would run it as a command); quote it",
                file=file,
                line=lineno,
                key=key,
            )
        out[key] = EnvValue(words[0] if words else "", file, lineno)
    return out


# --- mesh.yaml ------------------------------------------------------------------------


def _node_line(node: Any, path: list[str]) -> int:
    """The 1-based line of the value at ``path`` in a composed YAML node
    (or of the deepest ancestor found)."""
    line = int(node.start_mark.line) + 1 if node is not None else 0
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                node = v
                line = int(k.start_mark.line) + 1
                break
        else:
            break
    return line


def parse_mesh(text: str, file: str = "mesh.yaml") -> tuple[dict[str, Any], Any]:
    """The mesh.yaml document and its composed node tree (for line numbers)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark is not None else 0
        raise BootstrapError(f"invalid YAML: {e.problem}", file=file, line=line) from e
    except yaml.YAMLError as e:
        raise BootstrapError(f"invalid YAML: {e}", file=file) from e
    if doc is None:
        return {}, node
    if not isinstance(doc, dict):
        raise BootstrapError(f"expected a mapping at the top, got {type(doc).__name__}", file=file, line=1)
    return doc, node


def _proxy_config(doc: Mapping[str, Any], node: Any, file: str) -> dict[str, Any]:
    pc = doc.get("defaultConfig")
    if pc is None:
        return {}
    if not isinstance(pc, dict):
        raise BootstrapError(
            "expected a mapping", file=file, line=_node_line(node, ["defaultConfig"]), key="defaultConfig"
        )
    return dict(pc)


def _check_proxy_config(pc: Mapping[str, Any], line_of: Any, file: str) -> None:
    md = pc.get("proxyMetadata")
    if md is not None:
        if not isinstance(md, dict):
            raise BootstrapError(
                "expected a mapping of strings",
                file=file,
                line=line_of(["proxyMetadata"]),
                key="defaultConfig.proxyMetadata",
            )
        for k, v in md.items():
            if not isinstance(k, str) or not _KEY.match(k) or isinstance(v, (dict, list)):
                raise BootstrapError(
                    "proxyMetadata keys are environment variable names with string values",
                    file=file,
                    line=line_of(["proxyMetadata", str(k)]),
                    key=f"defaultConfig.proxyMetadata.{k}",
                )
    da = pc.get("discoveryAddress")
    if da is not None and (not isinstance(da, str) or not da.strip()):
        raise BootstrapError(
            "expected host:port", file=file, line=line_of(["discoveryAddress"]), key="defaultConfig.discoveryAddress"
        )


def _metadata_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


# --- root-cert.pem, istio-token, hosts ------------------------------------------------

_PEM_BEGIN = re.compile(r"^-----BEGIN ([A-Z0-9 ]+)-----$")
_PEM_END = re.compile(r"^-----END ([A-Z0-9 ]+)-----$")


def parse_pem_certs(text: str, file: str = "root-cert.pem") -> int:
    """Checks the PEM structure (BEGIN/END pairs, base64 bodies); returns
    the number of certificates."""
    certs = 0
    label = ""
    start = 0
    body: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if not label:
            m = _PEM_BEGIN.match(line)
            if m:
                label, start, body = m.group(1), lineno, []
            continue
        m = _PEM_END.match(line)
        if m:
            if m.group(1) != label:
                raise BootstrapError(f"END {m.group(1)} closes BEGIN {label}", file=file, line=lineno, key="PEM")
            try:
                base64.b64decode("".join(body), validate=True)
            except (binascii.Error, ValueError) as e:
                raise BootstrapError(f"{label} block is not valid base64", file=file, line=start, key="PEM") from e
            certs += label == "CERTIFICATE"
            label = ""
            continue
        if ":" in line and not body:
            continue  # RFC 1421 headers
        body.append(line)
    if label:
        raise BootstrapError(f"BEGIN {label} has no END line", file=file, line=start, key="PEM")
    if certs == 0:
        raise BootstrapError("no PEM CERTIFICATE block", file=file, line=1, key="PEM")
    return certs


def parse_token(text: str, file: str = "istio-token") -> Token:
    """A Kubernetes service-account JWT: three base64url parts, the middle one
    a JSON object. Only its shape and claims are read (istiod validates it)."""
    tok = text.strip()
    parts = tok.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise BootstrapError("not a JWT (expected header.payload.signature)", file=file, line=1, key="token")
    try:
        pad = "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + pad))
    except (binascii.Error, ValueError) as e:
        raise BootstrapError("the JWT payload is not base64url JSON", file=file, line=1, key="token") from e
    if not isinstance(claims, dict):
        raise BootstrapError("the JWT payload is not a JSON object", file=file, line=1, key="token")
    aud = claims.get("aud")
    auds = tuple(str(a) for a in aud) if isinstance(aud, list) else ((str(aud),) if aud else ())
    exp = claims.get("exp")
    return Token(
        text=tok,
        subject=str(claims.get("sub") or ""),
        audience=auds,
        expires=float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None,
    )


def parse_hosts(text: str, file: str = "hosts") -> list[HostsEntry]:
    """``/etc/hosts`` lines: ``ADDRESS NAME [ALIAS...]``, ``#`` comments."""
    out = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        try:
            addr = str(ipaddress.ip_address(words[0].split("%", 1)[0]))
        except ValueError:
            raise BootstrapError(f"{words[0]!r} is not an IP address", file=file, line=lineno, key="address") from None
        if len(words) < 2:
            raise BootstrapError(f"{addr} has no host name", file=file, line=lineno, key="name")
        out.append(HostsEntry(addr, tuple(w.rstrip(".").lower() for w in words[1:]), lineno))
    return out


# --- loading ----------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        raise BootstrapError(f"not UTF-8 text (byte {e.start})", file=path) from e
    except OSError as e:
        raise BootstrapError(f"cannot read: {e.strerror}", file=path) from e


def load_bootstrap(
    config_dir: str | os.PathLike[str] | None = None,
    *,
    cluster_env: str | None = None,
    mesh: str | None = None,
    root_cert: str | None = None,
    token: str | None = None,
    hosts: str | None = None,
    environ: Mapping[str, str] | None = None,
    discovery_address: str | None = None,
) -> Bootstrap:
    """Reads the bootstrap files. ``config_dir`` takes all five from one
    directory as istioctl writes them (then cluster.env and mesh.yaml must
    exist); otherwise the guide's install locations, where a missing file
    means defaults (noted in ``Bootstrap.notes``). ``environ`` is the
    process environment to combine (None: none — the CLI passes
    ``os.environ``); ``discovery_address`` overrides mesh.yaml's."""
    base = BootstrapPaths.from_dir(config_dir) if config_dir is not None else BootstrapPaths()
    paths = BootstrapPaths(
        cluster_env=cluster_env or base.cluster_env,
        mesh=mesh or base.mesh,
        root_cert=root_cert or base.root_cert,
        token=token or base.token,
        hosts=hosts or base.hosts,
    )
    strict = config_dir is not None
    notes: list[str] = []

    def need(path: str, what: str, required: bool) -> str | None:
        text = _read(path)
        if text is None:
            if required:
                raise BootstrapError(f"missing ({what})", file=path)
            notes.append(f"{path}: not found; {what} defaults apply")
        return text

    env_text = need(paths.cluster_env, "cluster.env", strict)
    file_env = parse_cluster_env(env_text, paths.cluster_env) if env_text is not None else {}

    mesh_text = need(paths.mesh, "mesh config", strict)
    doc, node = parse_mesh(mesh_text, paths.mesh) if mesh_text is not None else ({}, None)
    pc = _proxy_config(doc, node, paths.mesh)
    _check_proxy_config(pc, lambda p: _node_line(node, ["defaultConfig", *p]), paths.mesh)

    # Environment: proxyMetadata < process env < cluster.env (istio-start.sh order).
    env: dict[str, EnvValue] = {}
    for k, v in (pc.get("proxyMetadata") or {}).items():
        env[str(k)] = EnvValue(_metadata_str(v), paths.mesh, _node_line(node, ["defaultConfig", "proxyMetadata", k]))
    for k, v in (environ or {}).items():
        env[k] = EnvValue(v)
    env.update(file_env)

    overlay = env.get("PROXY_CONFIG")
    if overlay is not None and overlay.value.strip():
        where = overlay.file or "environment"
        try:
            extra = yaml.safe_load(overlay.value)
        except yaml.YAMLError as e:
            raise BootstrapError(f"not valid YAML/JSON: {e}", file=where, line=overlay.line, key="PROXY_CONFIG") from e
        if not isinstance(extra, dict):
            raise BootstrapError("expected a mapping", file=where, line=overlay.line, key="PROXY_CONFIG")
        _check_proxy_config(extra, lambda p: overlay.line, where)
        merged_md = {**(pc.get("proxyMetadata") or {}), **(extra.get("proxyMetadata") or {})}
        pc = {**pc, **extra}
        if merged_md:
            pc["proxyMetadata"] = merged_md

    probe: ProbeSpec | None = None
    if pc.get("readinessProbe") is not None:
        try:
            probe = parse_probe(pc["readinessProbe"])
        except ProbeError as e:
            field_path = getattr(e, "field", "")
            line = _node_line(node, ["defaultConfig", "readinessProbe", *[p for p in field_path.split(".") if p]])
            key = "defaultConfig.readinessProbe" + (f".{field_path}" if field_path else "")
            raise BootstrapError(getattr(e, "reason", str(e)), file=paths.mesh, line=line, key=key) from e

    root_text = need(paths.root_cert, "no trust anchor (plaintext xDS needs none)", False)
    if root_text is not None:
        parse_pem_certs(root_text, paths.root_cert)
    tok_text = need(paths.token, "no token (plaintext xDS needs none)", False)
    tok = parse_token(tok_text, paths.token) if tok_text is not None and tok_text.strip() else None
    if tok is not None and tok.expires is not None and tok.expires < time.time():
        # Not fatal here: with a certificate held the agent renews with it; only a first
        # issuance needs the token (the CA refuses it then, naming the expiry).
        notes.append(
            f"{paths.token}: the token expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(tok.expires))}"
        )

    hosts_text = need(paths.hosts, "no host overrides", False)
    host_entries = parse_hosts(hosts_text, paths.hosts) if hosts_text is not None else []

    da = discovery_address or str(pc.get("discoveryAddress") or DEFAULT_DISCOVERY_ADDRESS)
    split_host_port(da, default_port=XDS_TLS_PORT)  # validates
    return Bootstrap(
        paths=paths,
        env=env,
        proxy_config=pc,
        mesh=doc,
        discovery_address=da,
        readiness_probe=probe,
        root_cert=root_text,
        token=tok,
        hosts=host_entries,
        notes=notes,
    )


# --- writing (the inverse of load_bootstrap) -----------------------------------------------


def write_vm_files(
    directory: str | os.PathLike[str],
    env: Mapping[str, str],
    *,
    discovery_address: str,
    probe: Mapping[str, Any] | None = None,
    hosts: Mapping[str, str] | None = None,
    root_cert: str | None = None,
    token: str | None = None,
    control_plane_auth: str | None = None,
    proxy_metadata_prefixes: tuple[str, ...] = ("ISTIO_META", "CANONICAL", "POD_", "SERVICE_", "TRUST"),
) -> Path:
    """The five files of ``istioctl x workload entry configure -o DIR``
    (istio/istio ``istioctl/pkg/workload/workload.go``, ``createClusterEnv``,
    ``createMeshConfig``, ``createHosts``): cluster.env as sorted
    ``KEY='value'`` lines, mesh.yaml with ``defaultConfig.discoveryAddress``,
    the environment's metadata keys mirrored in ``proxyMetadata`` and the
    group's probe as ``readinessProbe`` and ``controlPlaneAuthPolicy`` when
    given, hosts (``{name: ip}``), and root-cert.pem / istio-token when given. What :func:`load_bootstrap`
    reads back; ``pymesh up`` and the tests write VMs with it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # istioctl single-quotes every value; a quote inside is closed, escaped and reopened (sh).
    quoted = (f"{k}='" + v.replace("'", "'\\''") + "'\n" for k, v in sorted(env.items()))
    (d / "cluster.env").write_text("".join(quoted))
    md = {k: v for k, v in env.items() if k.startswith(proxy_metadata_prefixes)}
    cfg: dict[str, Any] = {"discoveryAddress": discovery_address, "proxyMetadata": md}
    if probe:
        cfg["readinessProbe"] = dict(probe)
    if control_plane_auth:
        cfg["controlPlaneAuthPolicy"] = control_plane_auth
    (d / "mesh.yaml").write_text(yaml.safe_dump({"defaultConfig": cfg}))
    (d / "hosts").write_text("".join(f"{ip} {name}\n" for name, ip in (hosts or {}).items()))
    if root_cert is not None:
        (d / "root-cert.pem").write_text(root_cert)
    if token is not None:
        (d / "istio-token").write_text(token)
    return d
