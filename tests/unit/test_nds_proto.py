"""The NDS descriptor built in pymesh.proto.nds matches nds.proto (compiled
here with protoc from grpcio-tools) and Istio's wire format."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

from pymesh.proto import nds
from support.system import require_module

PROTO_DIR = Path(nds.__file__).parent


def test_descriptor_matches_the_proto_file(tmp_path: Path) -> None:
    protoc = require_module("grpc_tools.protoc", "grpcio-tools is a test dependency (pip install -e .[test])")
    out = tmp_path / "nds.desc"
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", str(PROTO_DIR / "nds.proto")])
    assert rc == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    ours = nds.file_descriptor()
    compiled.name = ours.name
    for msg in (compiled, ours):
        for m in msg.message_type:
            for sub in m.nested_type:
                for f in sub.field:
                    f.ClearField("json_name")
            for f in m.field:
                f.ClearField("json_name")
    assert compiled.message_type == ours.message_type
    assert compiled.package == ours.package == "istio.networking.nds.v1"


def test_wire_bytes_are_the_istio_encoding() -> None:
    msg = nds.NameTable()
    msg.table["a.b"].ips.append("1.2.3.4")
    # map entry = field 1 (LEN) { key = 1 "a.b", value = 2 { ips = 1 "1.2.3.4" } }
    assert msg.SerializeToString() == b"\n\x10\n\x03a.b\x12\t\n\x071.2.3.4"
