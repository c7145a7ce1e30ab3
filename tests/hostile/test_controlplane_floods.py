"""Hostile load on the control plane: ``pymesh controlplane`` in its own
process, on loopback (plaintext xDS and the TLS port with the CA), its memory and
descriptors read from /proc/PID, while a prober asks it for what legitimate
clients need every 0.3 s: CDS over a new ADS stream (xDS), a certificate for a
bootstrap token over TLS (the CA), and an auto-registration (a VM joining).

Each probe runs for well under a minute and sends traffic to loopback only. It
asserts on behaviour: memory and descriptors stay bounded, the hostile input is
refused or shed, legitimate clients keep being answered, and a later config
edit is still applied. The figures of each probe are printed as one JSON line
(``pytest -s``); running the same probes against another build
(``PYTHONPATH=<its tree> pytest tests/hostile/test_controlplane_floods.py -s``)
gives the before/after comparison."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from pymesh.mesh.pki import make_csr, new_key
from pymesh.mesh.xds import CDS
from pymesh.proto import ca as ca_pb
from support.cp import example_config, vm_node
from support.procs import reap
from support.sec import SERVER_NAME
from support.wait import wait_until

PORT = 18080


def _proc(pid: int) -> dict[str, int]:
    out = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def service(name: str) -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
        "spec: {ports: [{name: http, port: 80}]}\n"
    )


class Plane:
    """A control plane process on loopback, sampled every 100 ms."""

    def __init__(self, tmp: Path, nofile: int | None = None) -> None:
        self.cfg = example_config(tmp / "mesh", PORT)
        self.data = tmp / "data"
        cli = [sys.executable, "-m", "pymesh"]
        run: dict[str, Any] = {"capture_output": True, "text": True, "check": True, "cwd": tmp, "timeout": 60}
        self.token = subprocess.run(
            [*cli, "token", "create", "-n", "default", "-s", "product", "--data-dir", str(self.data)], **run
        ).stdout.strip()
        self.root = subprocess.run([*cli, "ca", "root-cert", "--data-dir", str(self.data)], **run).stdout
        self.log = tmp / "controlplane.log"
        argv = [*cli, "controlplane", "--config", str(self.cfg), "--data-dir", str(self.data)]
        argv += ["--xds-listen", "127.0.0.1:0", "--secure-listen", "127.0.0.1:0", "--debounce", "0.05"]

        def limit() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=limit)
        ports: dict[str, int] = {}
        assert self.proc.stdout is not None
        while len(ports) < 2:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the control plane did not start: {self.log.read_text()[-2000:]}")
            m = re.match(r"(xds|xds-tls) \S+:(\d+)", line)
            if m:
                ports[m.group(1)] = int(m.group(2))
        self.xds, self.tls = ports["xds"], ports["xds-tls"]
        self.csr = make_csr(new_key()).decode()
        self.samples: list[dict[str, int]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        time.sleep(0.5)
        self.idle = _proc(self.proc.pid)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError):
                self.samples.append(_proc(self.proc.pid))

    def figures(self) -> dict[str, Any]:
        peak_rss = max((s["VmRSS"] for s in self.samples), default=0) / 1024
        return {
            "rss_idle_mb": round(self.idle["VmRSS"] / 1024),
            "rss_peak_mb": round(peak_rss),
            "rss_growth_mb": round(peak_rss - self.idle["VmRSS"] / 1024),
            "fds_idle": self.idle["fds"],
            "fds_peak": max((s["fds"] for s in self.samples), default=0),
        }

    def stop(self) -> None:
        self._stop.set()
        self._sampler.join()
        self.proc.terminate()
        reap(self.proc)

    # What legitimate clients do.

    def first_cds(self, node: Any, timeout: float = 2.0) -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{self.xds}") as ch:
            req = discovery_pb2.DiscoveryRequest(type_url=CDS)
            req.node.CopyFrom(node)
            done = threading.Event()

            def requests() -> Iterator[Any]:
                yield req
                done.wait(timeout + 1)

            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(
                requests(), timeout=timeout
            )
            try:
                return next(iter(call)) is not None
            except grpc.RpcError:
                return False
            finally:
                done.set()
                call.cancel()

    def xds_ok(self) -> bool:
        return self.first_cds(vm_node("127.0.0.9", group="", name="probe"))

    def registration_ok(self) -> bool:
        return self.first_cds(vm_node("127.0.0.10", name="vm-probe"))

    def ca_ok(self, timeout: float = 2.0) -> bool:
        creds = grpc.ssl_channel_credentials(self.root.encode())
        with grpc.secure_channel(
            f"127.0.0.1:{self.tls}", creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        ) as ch:
            call = ch.unary_unary(
                ca_pb.METHOD,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=ca_pb.IstioCertificateResponse.FromString,
            )
            try:
                call(
                    ca_pb.IstioCertificateRequest(csr=self.csr, validity_duration=3600),
                    timeout=timeout,
                    metadata=(("authorization", f"Bearer {self.token}"),),
                )
                return True
            except grpc.RpcError:
                return False

    def serves(self, name: str) -> bool:
        """Whether CDS names the cluster of Service ``name`` (a config edit was applied)."""
        with grpc.insecure_channel(f"127.0.0.1:{self.xds}") as ch:
            req = discovery_pb2.DiscoveryRequest(type_url=CDS)
            req.node.CopyFrom(vm_node("127.0.0.9", group="", name="probe"))
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(iter([req]), timeout=2)
            try:
                r = next(iter(call))
            except grpc.RpcError:
                return False
            finally:
                call.cancel()
            return any(f"{name}.default.svc".encode() in a.value for a in r.resources)


class Prober:
    """xDS, the CA and a registration, asked again and again until stopped."""

    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self.results: dict[str, list[bool]] = {"xds": [], "ca": [], "registration": []}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            self.results["xds"].append(self.plane.xds_ok())
            self.results["ca"].append(self.plane.ca_ok())
            self.results["registration"].append(self.plane.registration_ok())

    def stop(self) -> dict[str, str]:
        self._stop.set()
        self._t.join()
        return {k: f"{sum(v)}/{len(v)}" for k, v in self.results.items()}

    def all_answered(self) -> bool:
        return all(v and all(v) for v in self.results.values())


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    p = Plane(tmp_path)
    yield p
    p.stop()


def report(name: str, **figures: Any) -> None:
    print(json.dumps({"probe": name, **figures}), flush=True)


def eventually(predicate: Any, timeout: float) -> bool:
    """``wait_until`` as a figure: False instead of an error, so the report is printed first."""
    try:
        return bool(wait_until(predicate, timeout=timeout))
    except AssertionError:
        return False


def bomb() -> str:
    """709 bytes: a ServiceEntry carrying go-yaml's nine-by-nine alias bomb (9^9 values)."""
    lines = ["apiVersion: networking.istio.io/v1", "kind: ServiceEntry", "metadata: {name: bomb, namespace: default}"]
    lines += ["spec:", "  hosts: [bomb.example.com]", "  resolution: DNS", "  ports: [{number: 80, name: http}]"]
    lines.append("  x:")
    prev = ""
    for c in "abcdefghi":
        lines.append(f"    {c}: &{c} [{','.join(['x0'] * 9 if not prev else [f'*{prev}'] * 9)}]")
        prev = c
    text = "\n".join(lines) + "\n"
    return text + "#" + "x" * (709 - len(text) - 2) + "\n"


@pytest.mark.timeout(90)
def test_alias_bomb(plane: Plane) -> None:
    probe = Prober(plane)
    time.sleep(1)
    text = bomb()
    (plane.cfg / "bomb.yaml").write_text(text)
    time.sleep(8)
    (plane.cfg / "later.yaml").write_text(service("later"))
    started = time.monotonic()
    applied = eventually(lambda: plane.serves("later"), timeout=20)
    answered = probe.stop()
    report(
        "alias bomb",
        bytes=len(text),
        **plane.figures(),
        answered=answered,
        later_edit_s=round(time.monotonic() - started, 1),
    )
    assert applied and probe.all_answered(), answered
    assert plane.figures()["rss_growth_mb"] < 64
    assert "excessive aliasing" in plane.log.read_text()


@pytest.mark.timeout(90)
def test_node_metadata_flood(plane: Plane) -> None:
    probe = Prober(plane)
    blob = "x" * 3_500_000
    channels, calls, refused = [], [], 0
    try:
        for i in range(100):
            ch = grpc.insecure_channel(f"127.0.0.1:{plane.xds}", options=[("grpc.max_send_message_length", 8 << 20)])
            channels.append(ch)
            req = discovery_pb2.DiscoveryRequest(type_url=CDS)
            req.node.CopyFrom(vm_node(f"127.0.1.{i + 1}", group="", name=f"big{i}", extra={"BLOB": blob}))
            hold = threading.Event()

            def requests(req: Any = req, hold: threading.Event = hold) -> Iterator[Any]:
                yield req
                hold.wait(30)

            calls.append((ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(requests()), hold))
        for call, _ in calls:
            try:
                next(iter(call))
            except grpc.RpcError as e:
                refused += e.code() == grpc.StatusCode.INVALID_ARGUMENT
        time.sleep(2)
    finally:
        for call, hold in calls:
            hold.set()
            call.cancel()
        for ch in channels:
            ch.close()
    answered = probe.stop()
    report("node metadata 100 x 3.5 MB", **plane.figures(), refused=refused, answered=answered)
    assert refused == 100 and probe.all_answered(), answered
    assert plane.figures()["rss_growth_mb"] < 256


@pytest.mark.timeout(90)
def test_silent_tls_connections_at_1024_descriptors(tmp_path: Path) -> None:
    plane = Plane(tmp_path, nofile=1024)
    socks: list[socket.socket] = []
    try:
        for _ in range(1500):  # never a ClientHello
            s = socket.socket()
            s.settimeout(2)
            with contextlib.suppress(OSError):
                s.connect(("127.0.0.1", plane.tls))
            socks.append(s)
        probe = Prober(plane)
        time.sleep(8)
        answered = probe.stop()
        report("1,500 silent TLS connections, RLIMIT_NOFILE 1024", **plane.figures(), answered=answered)
        assert probe.all_answered(), answered
        figures = plane.figures()
        assert figures["rss_growth_mb"] < 32 and figures["fds_peak"] < 512
    finally:
        for s in socks:
            s.close()
        plane.stop()


@pytest.mark.timeout(90)
def test_nack_flood(plane: Plane) -> None:
    before = plane.log.stat().st_size
    requests: queue.Queue[Any] = queue.Queue()
    first = discovery_pb2.DiscoveryRequest(type_url=CDS)
    first.node.CopyFrom(vm_node("127.0.0.11", group="", name="nacker"))
    requests.put(first)
    with grpc.insecure_channel(f"127.0.0.1:{plane.xds}") as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(iter(requests.get, None))
        r = next(iter(call))
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < 4:
            nack = discovery_pb2.DiscoveryRequest(type_url=CDS, response_nonce=r.nonce)
            nack.error_detail.CopyFrom(status_pb2.Status(code=13, message="x" * 60_000))
            requests.put(nack)
            sent += 1
            if requests.qsize() > 500:
                time.sleep(0.01)
        time.sleep(2)
        requests.put(None)
        call.cancel()
    grew = plane.log.stat().st_size - before
    report("NACK flood, 4 s", nacks=sent, log_bytes=grew, **plane.figures())
    assert plane.xds_ok() and grew < 64 * 1024


@pytest.mark.timeout(90)
def test_50mb_config_file(plane: Plane) -> None:
    probe = Prober(plane)
    time.sleep(1)
    entry = (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se-{i}, namespace: big}}\n"
        "spec: {{hosts: [h{i}.example.com], resolution: STATIC, ports: [{{number: 80, name: http}}], "
        "endpoints: [{{address: 10.1.{a}.{b}}}]}}\n---\n"
    )
    # Written beside the directory and renamed in (as a config-management tool does), so the
    # watcher sees the whole 50 MB file, over the size limit, and never a partial one: a
    # partial file under the limit is ~70,000 valid ServiceEntries, which are served (slowly
    # on a small machine), not refused.
    staged = plane.cfg.parent / "big.yaml.staged"
    with staged.open("w") as f:
        i = 0
        while f.tell() < 50_000_000:
            f.write(entry.format(i=i, a=i // 256 % 256, b=i % 256))
            i += 1
    os.replace(staged, plane.cfg / "big.yaml")
    (plane.cfg / "later.yaml").write_text(service("later"))
    applied = eventually(lambda: plane.serves("later"), timeout=20)
    time.sleep(3)
    answered = probe.stop()
    report("50 MB config file", objects=i, **plane.figures(), answered=answered)
    assert applied and probe.all_answered(), answered
    assert "not read" in plane.log.read_text()
    assert plane.figures()["rss_growth_mb"] < 64


@pytest.mark.timeout(90)
def test_watcher_survives_running_out_of_descriptors(tmp_path: Path) -> None:
    plane = Plane(tmp_path, nofile=256)
    socks: list[socket.socket] = []
    try:
        for _ in range(300):  # gRPC holds a TCP connection until its HTTP/2 preface (120 s)
            s = socket.socket()
            with contextlib.suppress(OSError):
                s.connect(("127.0.0.1", plane.xds))
            socks.append(s)
        time.sleep(1)
        (plane.cfg / "during.yaml").write_text(service("during"))
        get = [sys.executable, "-m", "pymesh", "get", "svc", "--data-dir", str(plane.data)]
        warned = eventually(
            lambda: (
                "config watcher is failing"
                in subprocess.run(get, capture_output=True, text=True, cwd=tmp_path, timeout=30).stderr
            ),
            timeout=20,
        )
    finally:
        for s in socks:
            s.close()
    try:
        applied = eventually(lambda: plane.serves("during"), timeout=30)
        (plane.cfg / "after.yaml").write_text(service("after"))
        later = eventually(lambda: plane.serves("after"), timeout=20)
        report(
            "out of descriptors (RLIMIT_NOFILE 256, 300 idle connections)",
            **plane.figures(),
            reported=warned,
            edits_applied=applied and later,
        )
        assert warned and applied and later
    finally:
        plane.stop()
