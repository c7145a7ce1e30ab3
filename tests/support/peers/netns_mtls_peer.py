"""Runs one side of the netns mTLS test inside a namespace:

netns_mtls_peer.py inbound CERT_DIR HOST PORT MODE     # echo app + InboundMtls; prints "ready"
netns_mtls_peer.py client CERT_DIR HOST PORT IDENTITY PAYLOAD   # MtlsOriginator + one exchange; prints JSON
netns_mtls_peer.py plain HOST PORT PAYLOAD              # plaintext exchange (the control case)
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def exchange(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(payload)
        out = b""
        try:
            while len(out) < len(payload) and (d := s.recv(65536)):
                out += d
        except ConnectionResetError:
            pass  # refused with our bytes unread
        return out


def main() -> int:
    role = sys.argv[1]
    if role == "inbound":
        from pymesh.relay.pytls import InboundMtls

        cert_dir, host, port, mode = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        app = socket.create_server(("127.0.0.1", 0))

        def serve() -> None:
            while True:
                c, _ = app.accept()

                def echo(c: socket.socket) -> None:
                    with c:
                        while d := c.recv(65536):
                            c.sendall(d)

                threading.Thread(target=echo, args=(c,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        InboundMtls(cert_dir, ("127.0.0.1", app.getsockname()[1]), listen=(host, port), mode=mode).start()
        print("ready", flush=True)
        while True:
            time.sleep(3600)
    if role == "client":
        from pymesh.relay.pytls import MtlsOriginator

        cert_dir, host, port, ident, payload = sys.argv[2:7]
        out = MtlsOriginator(cert_dir, (host, int(port)), [ident]).start()
        got = exchange(out.port, payload.encode())
        print(json.dumps({"echo": got.decode(errors="replace"), "refused": out.stats["refused"]}))
        out.stop()
        return 0
    if role == "plain":
        host, port, payload = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        print(json.dumps({"echo": exchange(port, payload.encode(), host).decode(errors="replace")}))
        return 0
    raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    sys.exit(main())
