"""Peers for the VM end-to-end test with mTLS on (tests/e2e/test_vm_mtls.py),
run inside network namespaces (``ip netns exec NS python tests/support/peers/e2e_mtls_peer.py ...``).

Subcommands:
  pod CERT_DIR TAG ADDR:PORT     a pod with an Istio sidecar's inbound: HTTP on
                                 loopback answering TAG (e2e_http.py's
                                 server), STRICT mTLS terminated on ADDR:PORT with
                                 the pod's workload certificate (pymesh's Python
                                 InboundMtls, so the VM's rustls speaks to another
                                 TLS stack). Prints "ready".
  get HOST PORT PATH [CERT_DIR IDENTITY]
                                 one ``GET PATH``: plaintext, or over mTLS with the
                                 workload certificate in CERT_DIR and Istio's ALPN,
                                 the server's SPIFFE identity checked against
                                 IDENTITY. Prints JSON {"status", "body"} or {"error"}.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time


def pod(cert_dir: str, tag: str, addr: str) -> None:
    import threading
    from http.server import ThreadingHTTPServer

    from e2e_http import handler

    from pymesh.relay.pytls import InboundMtls

    host, port = addr.rsplit(":", 1)
    # The app in this process (a thread), so nothing outlives the peer when the test kills it.
    app = ThreadingHTTPServer(("127.0.0.1", 0), handler(tag, None))
    app.daemon_threads = True
    threading.Thread(target=app.serve_forever, daemon=True).start()
    InboundMtls(cert_dir, ("127.0.0.1", app.server_address[1]), listen=(host, int(port)), mode="STRICT").start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def get(host: str, port: int, path: str, cert_dir: str | None, ident: str | None) -> dict[str, object]:
    from pymesh.relay.pytls import ALPN_TCP, check_peer, peer_identity

    try:
        sock: socket.socket = socket.create_connection((host, port), timeout=10)
        if cert_dir is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.check_hostname = False  # SPIFFE identities: checked below, as sidecars do
            ctx.load_verify_locations(cafile=f"{cert_dir}/root-cert.pem")
            ctx.load_cert_chain(f"{cert_dir}/cert-chain.pem", f"{cert_dir}/key.pem")
            ctx.set_alpn_protocols(list(ALPN_TCP))
            sock = ctx.wrap_socket(sock)
            assert isinstance(sock, ssl.SSLSocket)
            check_peer(peer_identity(sock), [ident or ""], "cluster.local")
        with sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except (OSError, ssl.SSLError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    except Exception as e:  # an identity mismatch (AuthError) and the like
        return {"error": f"{type(e).__name__}: {e}"}
    if not data:
        return {"error": "closed without a response"}
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return {"status": status, "body": body.decode(errors="replace")}


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "pod":
        pod(args[0], args[1], args[2])
    elif cmd == "get":
        tls = args[3:5] if len(args) >= 5 else [None, None]
        print(json.dumps(get(args[0], int(args[1]), args[2], tls[0], tls[1])), flush=True)
    else:
        sys.exit(f"unknown command {cmd!r}")
