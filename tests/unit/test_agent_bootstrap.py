"""Reading the VM bootstrap files: istioctl-shaped fixtures (reference
istio-vm-workloads.md §5.3, the keys of istioctl's golden files), shell
quoting edge cases, the environment's precedence, node id and metadata,
capture settings, and bad files rejected with file, line and key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pymesh import PymeshError
from pymesh.agent import AgentOptions, BootstrapError, build_node, load_bootstrap
from pymesh.agent.bootstrap import BootstrapPaths, parse_cluster_env, parse_hosts
from pymesh.agent.config import capture_config
from support.agent import ROOT_CERT, TOKEN, write_vm_files

# Shaped exactly like istioctl's output (istioctl/pkg/workload/testdata/vmconfig/ipv4):
# sorted KEY='value' lines, every proxyMetadata key mirrored in mesh.yaml.
CLUSTER_ENV = """\
CANONICAL_REVISION='latest'
CANONICAL_SERVICE='foo'
CA_ADDR='istiod-rev-1.istio-system.svc:15012'
CLUSTER_MESH_CONFIG_VALUE='foo'
IDENTITY_PATH_PREFIX=''
ISTIO_INBOUND_PORTS='*'
ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'
ISTIO_METAJSON_LABELS='{"service.istio.io/canonical-name":"foo","service.istio.io/canonical-revision":"latest"}'
ISTIO_META_AUTO_REGISTER_GROUP='foo'
ISTIO_META_CLUSTER_ID='Kubernetes'
ISTIO_META_DNS_CAPTURE='true'
ISTIO_META_MESH_ID=''
ISTIO_META_NETWORK='vm-net'
ISTIO_META_POD_PORTS='[{"name":"http","containerPort":8080}]'
ISTIO_META_WORKLOAD_NAME='foo'
ISTIO_NAMESPACE='bar'
ISTIO_SERVICE='foo.bar'
ISTIO_SERVICE_CIDR='*'
ISTIO_SVC_IP='10.10.10.10'
POD_NAMESPACE='bar'
PROXY_CONFIG_ANNOT_VALUE='bar'
SERVICE_ACCOUNT='vm-serviceaccount'
TRUST_DOMAIN=''
"""

MESH_YAML = """\
defaultConfig:
  discoveryAddress: istiod-rev-1.istio-system.svc:15012
  proxyMetadata:
    CANONICAL_REVISION: latest
    CANONICAL_SERVICE: foo
    CLUSTER_MESH_CONFIG_VALUE: foo
    IDENTITY_PATH_PREFIX: ""
    ISTIO_META_CLUSTER_ID: Kubernetes
    ISTIO_META_DNS_CAPTURE: "true"
    ISTIO_META_MESH_ID: ""
    ISTIO_META_NETWORK: ""
    ISTIO_META_WORKLOAD_NAME: foo
    ISTIO_METAJSON_LABELS: '{"service.istio.io/canonical-name":"foo","service.istio.io/canonical-revision":"latest"}'
    POD_NAMESPACE: bar
    PROXY_CONFIG_ANNOT_VALUE: bar
    SERVICE_ACCOUNT: vm-serviceaccount
    TRUST_DOMAIN: ""
  readinessProbe:
    httpGet:
      port: 8080
"""

HOSTS = "10.0.0.254 istiod-rev-1.istio-system.svc\n"


@pytest.fixture
def vmdir(tmp_path: Path) -> Path:
    d = tmp_path / "vm"
    d.mkdir()
    (d / "cluster.env").write_text(CLUSTER_ENV)
    (d / "mesh.yaml").write_text(MESH_YAML)
    (d / "root-cert.pem").write_text(ROOT_CERT)
    (d / "istio-token").write_text(TOKEN)
    (d / "hosts").write_text(HOSTS)
    return d


def test_istioctl_files_from_a_config_dir(vmdir: Path) -> None:
    b = load_bootstrap(vmdir)
    assert b.paths == BootstrapPaths.from_dir(vmdir)
    assert b.get("ISTIO_SVC_IP") == "10.10.10.10"
    assert b.get("IDENTITY_PATH_PREFIX") == ""
    assert b.get("ISTIO_METAJSON_LABELS").startswith('{"service.istio.io/canonical-name":"foo"')
    assert b.discovery_address == "istiod-rev-1.istio-system.svc:15012"
    # The hosts file maps istiod's name to the east-west gateway.
    assert b.control_plane_target() == "10.0.0.254:15012"
    assert b.readiness_probe is not None and b.readiness_probe.kind == "httpGet"
    assert (b.readiness_probe.port, b.readiness_probe.path, b.readiness_probe.scheme) == (8080, "/", "http")
    # Istio agent's effective defaults (fillInDefaults): failureThreshold 0 -> 1.
    assert (b.readiness_probe.period, b.readiness_probe.timeout, b.readiness_probe.failure_threshold) == (10, 1, 1)
    assert b.token is not None and b.token.subject == "system:serviceaccount:default:product"
    assert b.token.audience == ("istio-ca",) and b.token.expires == 1893456000
    assert b.root_cert == ROOT_CERT and b.notes == []
    # cluster.env wins over mesh.yaml proxyMetadata (ISTIO_META_NETWORK differs).
    assert b.get("ISTIO_META_NETWORK") == "vm-net"
    assert b.where("ISTIO_META_NETWORK") == (str(vmdir / "cluster.env"), 13)


def test_node_id_and_metadata_like_istio_agent(vmdir: Path) -> None:
    b = load_bootstrap(vmdir, environ={"POD_NAME": "vm-7"})
    n = build_node(b, extra_ips=["10.10.10.10", "192.168.1.5"])
    assert n.id == "sidecar~10.10.10.10~vm-7.bar~bar.svc.cluster.local"
    md = n.metadata
    assert md["AUTO_REGISTER_GROUP"] == "foo" and md["CLUSTER_ID"] == "Kubernetes"
    assert md["NETWORK"] == "vm-net" and md["DNS_CAPTURE"] == "true" and md["MESH_ID"] == ""
    assert md["LABELS"] == {"service.istio.io/canonical-name": "foo", "service.istio.io/canonical-revision": "latest"}
    assert md["POD_PORTS"] == '[{"name":"http","containerPort":8080}]'  # ISTIO_META_: kept as a string
    assert md["NAMESPACE"] == "bar" and md["INSTANCE_IPS"] == "10.10.10.10,192.168.1.5"
    assert md["SERVICE_ACCOUNT"] == "vm-serviceaccount" and md["WORKLOAD_NAME"] == "foo"
    assert md["PROXY_CONFIG"]["readinessProbe"] == {"httpGet": {"port": 8080}}
    assert md["PROXY_CONFIG"]["discoveryAddress"] == "istiod-rev-1.istio-system.svc:15012"
    # The control plane's own parser accepts it.
    from pymesh.controlplane.node import parse_node

    p = parse_node(n.to_proto())
    assert p.auto_register_group == "foo" and p.ip_addresses == ("10.10.10.10", "192.168.1.5")
    assert p.namespace == "bar" and p.dns_capture and p.labels["service.istio.io/canonical-name"] == "foo"


def test_capture_settings_from_cluster_env(vmdir: Path) -> None:
    # One reader of istio-iptables' variables (pymesh.capture.CaptureConfig.from_env).
    c = capture_config(load_bootstrap(vmdir), AgentOptions(), True, ())
    assert c.outbound_include == "*" and c.inbound_ports == "*"
    assert set(c.inbound_exclude_ports) == {22, 15090, 15021, 15020}
    assert c.redirect_dns and not c.capture_all_dns and c.interception_mode == "REDIRECT"


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("K='it'\\''s'", "it's"),  # sh's way of quoting a quote
        ("K='a b  c'", "a b  c"),
        ('K="double \\"quoted\\" $HOME"', 'double "quoted" $HOME'),  # literal: nothing expanded
        ("K=bare", "bare"),
        ("K=", ""),
        ("K=''", ""),
        ("export K='x'", "x"),
        ("K='{\"a\":[1,2]}'", '{"a":[1,2]}'),
        ("K='x' # trailing comment", "x"),
        ("K='a=b=c'", "a=b=c"),
        ("K='line1\nline2'", None),  # a quoted newline is an error on one line (unterminated)
    ],
)
def test_cluster_env_quoting(line: str, value: str | None) -> None:
    if value is None:
        with pytest.raises(BootstrapError, match=r"cluster.env:1: key K: cannot unquote"):
            parse_cluster_env(line, "cluster.env")
        return
    assert parse_cluster_env(line, "cluster.env")["K"].value == value


def test_cluster_env_comments_blank_lines_and_last_wins() -> None:
    env = parse_cluster_env("# generated\n\nA='1'\n  B='2'\nA='3'\n", "f")
    assert {k: v.value for k, v in env.items()} == {"A": "3", "B": "2"}
    assert env["A"].line == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A='1'\nB='unterminated\n", r"cluster\.env:2: key B: cannot unquote the value: no closing quotation"),
        ("A='1'\nnot a line\n", r"cluster\.env:2: key not: expected KEY=value"),
        ("1BAD='x'\n", r"cluster\.env:1: key 1BAD: '1BAD' is not a shell variable name"),
        ("A=two words\n", r"cluster\.env:1: key A: the value has unquoted whitespace"),
    ],
)
def test_bad_cluster_env_names_file_line_key(vmdir: Path, text: str, message: str) -> None:
    (vmdir / "cluster.env").write_text(text)
    with pytest.raises(BootstrapError, match=message) as e:
        load_bootstrap(vmdir)
    assert e.value.file == str(vmdir / "cluster.env")
    assert isinstance(e.value, PymeshError)


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("defaultConfig:\n  discoveryAddress: [a\n", 3, "", "invalid YAML"),
        ("- a\n", 1, "", "expected a mapping at the top"),
        ("defaultConfig: 5\n", 1, "defaultConfig", "expected a mapping"),
        ("defaultConfig:\n  proxyMetadata: [1]\n", 2, "defaultConfig.proxyMetadata", "mapping of strings"),
        ("defaultConfig:\n  proxyMetadata:\n    bad-key: x\n", 3, "defaultConfig.proxyMetadata.bad-key", "environment"),
        (
            "defaultConfig:\n  readinessProbe:\n    periodSeconds: 5\n    tcpSocket:\n      port: 99999\n",
            5,
            "defaultConfig.readinessProbe.tcpSocket.port",
            "expected a port 1-65535",
        ),
        (
            "defaultConfig:\n  readinessProbe:\n    periodSeconds: 5\n",
            2,
            "defaultConfig.readinessProbe",
            "exactly one of httpGet, tcpSocket, exec, grpc",
        ),
        (
            "defaultConfig:\n  readinessProbe:\n    exec:\n      command: []\n",
            4,
            "defaultConfig.readinessProbe.exec.command",
            "non-empty list",
        ),
        (
            "defaultConfig:\n  readinessProbe:\n    httpGet: {port: 80, scheme: FTP}\n",
            3,
            "defaultConfig.readinessProbe.httpGet.scheme",
            "not HTTP or HTTPS",
        ),
        (
            "defaultConfig:\n  readinessProbe:\n    failureThreshold: -1\n    exec: {command: [x]}\n",
            3,
            "defaultConfig.readinessProbe.failureThreshold",
            "integer >= 0",
        ),
    ],
)
def test_bad_mesh_yaml_names_file_line_key(vmdir: Path, text: str, line: int, key: str, message: str) -> None:
    (vmdir / "mesh.yaml").write_text(text)
    with pytest.raises(BootstrapError, match=message) as e:
        load_bootstrap(vmdir)
    assert (e.value.file, e.value.line, e.value.key) == (str(vmdir / "mesh.yaml"), line, key)
    assert str(e.value).startswith(f"{vmdir / 'mesh.yaml'}:{line}")


@pytest.mark.parametrize(
    ("name", "text", "line", "message"),
    [
        ("hosts", "10.0.0.1 ok\nnot-an-ip istiod\n", 2, "'not-an-ip' is not an IP address"),
        ("hosts", "10.0.0.1\n", 1, "has no host name"),
        ("istio-token", "not-a-jwt\n", 1, "not a JWT"),
        ("istio-token", "a.!!!.c\n", 1, "not base64url JSON"),
        ("root-cert.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n", 1, "has no END line"),
        ("root-cert.pem", "-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n", 1, "not valid base64"),
        ("root-cert.pem", "hello\n", 1, "no PEM CERTIFICATE block"),
        ("root-cert.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END PRIVATE KEY-----\n", 3, "closes BEGIN"),
    ],
)
def test_bad_other_files(vmdir: Path, name: str, text: str, line: int, message: str) -> None:
    (vmdir / name).write_text(text)
    with pytest.raises(BootstrapError, match=message) as e:
        load_bootstrap(vmdir)
    assert (e.value.file, e.value.line) == (str(vmdir / name), line)


def test_bad_values_name_their_key_and_line(vmdir: Path) -> None:
    (vmdir / "cluster.env").write_text("ISTIO_SVC_IP='10.0.0.300'\nISTIO_SERVICE_CIDR='10.0.0.0/8,nope'\n")
    b = load_bootstrap(vmdir)
    with pytest.raises(BootstrapError, match=r"cluster\.env:2: key ISTIO_SERVICE_CIDR: 'nope' is not an IP"):
        capture_config(b, AgentOptions(), False, ())
    with pytest.raises(BootstrapError, match=r"cluster\.env:1: key ISTIO_SVC_IP: '10.0.0.300' is not an IP"):
        build_node(b, extra_ips=[])
    (vmdir / "cluster.env").write_text("A='1'\nISTIO_METAJSON_LABELS='{not json'\n")
    with pytest.raises(BootstrapError, match=r"cluster\.env:2: key ISTIO_METAJSON_LABELS: not valid JSON"):
        build_node(load_bootstrap(vmdir), extra_ips=[])


def test_config_dir_requires_cluster_env_and_mesh(vmdir: Path) -> None:
    (vmdir / "mesh.yaml").unlink()
    with pytest.raises(BootstrapError, match=r"mesh\.yaml: missing"):
        load_bootstrap(vmdir)


def test_install_locations_tolerate_missing_optional_files(tmp_path: Path) -> None:
    env = tmp_path / "cluster.env"
    env.write_text("ISTIO_SVC_IP='10.1.1.1'\n")
    b = load_bootstrap(
        cluster_env=str(env),
        mesh=str(tmp_path / "none-mesh"),
        root_cert=str(tmp_path / "none.pem"),
        token=str(tmp_path / "none-token"),
        hosts=str(tmp_path / "none-hosts"),
    )
    assert b.discovery_address == "istiod.istio-system.svc:15012"
    assert b.root_cert is None and b.token is None and b.readiness_probe is None
    assert len(b.notes) == 4 and all("not found" in n for n in b.notes)
    assert b.control_plane_target() == "istiod.istio-system.svc:15012"


def test_environment_precedence_and_proxy_config_overlay(vmdir: Path) -> None:
    environ = {
        "ISTIO_META_CLUSTER_ID": "from-env",  # cluster.env wins (istio-start.sh sources it last)
        "ISTIO_META_EXTRA": "env-only",
        "PROXY_CONFIG": "readinessProbe:\n  tcpSocket: {port: 9000}\nproxyMetadata: {ISTIO_META_FROM_PC: 'y'}\n",
    }
    b = load_bootstrap(vmdir, environ=environ)
    assert b.get("ISTIO_META_CLUSTER_ID") == "Kubernetes"
    assert b.get("ISTIO_META_EXTRA") == "env-only"
    assert b.readiness_probe is not None and (b.readiness_probe.kind, b.readiness_probe.port) == ("tcpSocket", 9000)
    assert b.proxy_config["proxyMetadata"]["CANONICAL_SERVICE"] == "foo"  # merged, not replaced
    assert b.proxy_config["proxyMetadata"]["ISTIO_META_FROM_PC"] == "y"
    b2 = load_bootstrap(vmdir, discovery_address="10.9.9.9:15010")
    assert b2.control_plane_target() == "10.9.9.9:15010"


def test_hosts_file_forms() -> None:
    hs = parse_hosts("# c\nfd00:10:96::2 istiod-rev-1.istio-system.svc\n10.0.0.1 a B.example. # x\n\n")
    assert [(h.address, h.names) for h in hs] == [
        ("fd00:10:96::2", ("istiod-rev-1.istio-system.svc",)),
        ("10.0.0.1", ("a", "b.example")),
    ]


def test_dry_run_prints_the_plan(tmp_path: Path) -> None:
    vm = write_vm_files(tmp_path / "vm", 15010, probe={"grpc": {"port": 8080}, "periodSeconds": 5})
    cmd = [sys.executable, "-m", "pymesh", "agent", "--config-dir", str(vm), "--dry-run", "--state-dir", "/nonexist"]
    out = subprocess.run([*cmd, "--dns-listen", "127.0.0.1:5353", "--pod-name", "vm-1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    plan = yaml.safe_load(out.stdout)
    assert plan["node"]["id"] == "sidecar~127.0.0.3~vm-1.default~default.svc.cluster.local"
    assert plan["node"]["metadata"]["AUTO_REGISTER_GROUP"] == "product-vm"
    assert plan["control_plane"]["target"] == "127.0.0.1:15010"
    assert plan["dns"]["enabled"] is True and plan["dns"]["listen"] == ["127.0.0.1:5353"]
    assert plan["capture"]["outbound_cidrs"] == ["*"] and plan["capture"]["dns"] is True
    assert plan["probe"]["kind"] == "grpc" and plan["probe"]["periodSeconds"] == 5
    assert plan["probe"]["default_host"] == "127.0.0.3"
    assert plan["state_dir"] == "/nonexist"
    assert not Path("/nonexist").exists()  # a dry run writes nothing
    # Istio's VM service runs the whole sidecar: by default the agent plans capture, 15001, 15006.
    assert plan["capture"]["install"] == "auto" and plan["outbound_listen"][0] == "127.0.0.1:15001"
    assert plan["inbound_listen"][0] == "0.0.0.0:15006"
    for dns_only in (["--capture", "off"], ["--no-dataplane"]):
        off = yaml.safe_load(subprocess.run([*cmd, *dns_only], capture_output=True, text=True, check=True).stdout)
        assert off["capture"]["install"] is None and off["outbound_listen"] == [] and off["inbound_listen"] == []
        assert off["dns"]["enabled"] is True
    js = subprocess.run([*cmd, "-o", "json", "--capture", "nftables", "--outbound-listen", "127.0.0.1:15001"],
                        capture_output=True, text=True)  # fmt: skip
    assert js.returncode == 0, js.stderr
    full = json.loads(js.stdout)
    assert full["node"]["metadata"]["DNS_CAPTURE"] == "true"
    assert full["capture"]["install"] == "nftables" and full["outbound_listen"] == ["127.0.0.1:15001"]
    assert full["capture"]["proxy_uid"] == os.getuid()  # the agent's own user is never captured


def test_cli_reports_a_bad_file_and_exits_1(vmdir: Path) -> None:
    (vmdir / "cluster.env").write_text("A='ok'\nB='oops\n")
    out = subprocess.run(
        [sys.executable, "-m", "pymesh", "agent", "--config-dir", str(vmdir), "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert f"{vmdir / 'cluster.env'}:2: key B: cannot unquote the value" in out.stderr


def test_options_are_plain_data() -> None:
    o = AgentOptions(dns_listen=["127.0.0.1:0"])
    assert o.dns_listen == ["127.0.0.1:0"] and o.state_dir is None


def test_an_expired_token_is_noted(vmdir: Path) -> None:
    import base64

    claims = base64.urlsafe_b64encode(b'{"exp":1000000000,"sub":"x"}').decode().rstrip("=")
    (vmdir / "istio-token").write_text(f"eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln")
    b = load_bootstrap(vmdir)
    assert b.token is not None and b.token.expires == 1e9
    assert b.notes == [f"{vmdir / 'istio-token'}: the token expired at 2001-09-09T01:46:40Z"]


def test_the_control_plane_is_spoken_to_over_tls_unless_mesh_yaml_says_none(tmp_path: Path) -> None:
    """Istio's default proxy config has controlPlaneAuthPolicy MUTUAL_TLS: an
    agent whose mesh.yaml is silent speaks TLS to :15012, never plaintext."""
    from pymesh.agent import resolve

    silent = write_vm_files(tmp_path / "silent", 15012, control_plane_auth="")
    assert "controlPlaneAuthPolicy" not in (silent / "mesh.yaml").read_text()
    assert resolve(load_bootstrap(silent), AgentOptions(extra_ips=[])).control_plane_auth == "MUTUAL_TLS"
    plain = write_vm_files(tmp_path / "plain", 15010, control_plane_auth="NONE")
    assert resolve(load_bootstrap(plain), AgentOptions(extra_ips=[])).control_plane_auth == "NONE"
