"""Security through the CLI only: `pymesh controlplane` with its TLS port,
`pymesh token create` and `pymesh ca root-cert` for the VM's files, `pymesh
agent --control-plane-auth MUTUAL_TLS`, the VM registered as `pymesh get`
shows it; a token for the wrong account gets nothing registered."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.agent import write_vm_files
from support.cp import example_config, pymesh_cli
from support.ports import free_port
from support.procs import reap
from support.wait import wait_until

PORT = 18080


def run(*args: str) -> str:
    out = subprocess.run([*pymesh_cli(), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    cfg = example_config(tmp_path / "mesh", PORT)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [*pymesh_cli(), "controlplane", "--config", str(cfg), "--secure-listen", "127.0.0.1:0", "--data-dir",
         str(data), "--grace-period", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("xds-tls 127.0.0.1:"), proc.stderr.read() if proc.stderr else line
        yield int(line.rsplit(":", 1)[1]), data
    finally:
        proc.terminate()
        proc.wait(10)
        reap(proc)


def agent(tmp: Path, port: int, data: Path, sa: str, *extra: str) -> subprocess.Popen[str]:
    vm = write_vm_files(tmp / f"vm-{sa}", port)
    (vm / "istio-token").write_text(
        run("token", "create", "-n", "default", "-s", sa, "--ttl", "10m", "--data-dir", str(data))
    )
    (vm / "root-cert.pem").write_text(run("ca", "root-cert", "--data-dir", str(data)))
    return subprocess.Popen(
        [*pymesh_cli(), "agent", "--config-dir", str(vm), "--control-plane-auth", "MUTUAL_TLS", "--no-dns",
         "--no-dataplane", "--status-listen", "", "--state-dir", str(tmp / f"state-{sa}"), "--pod-name", "vm-1",
         "--backoff-max", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def we(data: Path) -> str:
    return run("get", "we", "--data-dir", str(data))


def test_vm_joins_over_mtls_through_the_cli(controlplane: tuple[int, Path], tmp_path: Path) -> None:
    port, data = controlplane
    assert (data / "ca" / "ca-key.pem").stat().st_mode & 0o077 == 0
    wrong = agent(tmp_path, port, data, "intruder")
    try:
        lines: list[str] = []
        assert wrong.stdout is not None
        while not any("PERMISSION_DENIED" in ln for ln in lines):
            ln = wrong.stdout.readline()
            assert ln, "".join(lines)
            lines.append(ln)
        assert any("intruder) does not match the proxy's metadata" in ln for ln in lines), "".join(lines)
        assert "product-vm-127.0.0.3" not in we(data)
    finally:
        wrong.terminate()
        wrong.wait(30)
        reap(wrong)
    inbound = free_port("127.0.0.1")
    good = agent(tmp_path, port, data, "product", "--inbound-mtls", f"127.0.0.1:{inbound}=127.0.0.1:1")
    try:
        # The entry, then its Connected condition (written once the stream is held).
        wait_until(lambda: "product-vm-127.0.0.3" in we(data), timeout=30)
        wait_until(lambda: "Connected" in we(data), timeout=10)
    finally:
        good.terminate()
        out = good.communicate(timeout=30)[0]
        reap(good)
    assert f"(discoveryAddress istiod.istio-system.svc:{port}, mTLS)" in out
    assert f"inbound mTLS (STRICT) on 127.0.0.1:{inbound}" in out
