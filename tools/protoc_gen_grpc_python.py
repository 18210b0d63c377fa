"""protoc plugin that runs grpcio-tools' built-in grpc_python generator.

buf only knows protoc's own built-in generators, and grpcio-tools ships gRPC's Python
generator inside its bundled protoc rather than as a `protoc-gen-grpc_python` executable.
This shim speaks the plugin protocol: it hands the request's descriptors to that protoc via
--descriptor_set_in and returns the files it writes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse()
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp) / "descriptors.binpb"
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        args = [
            "grpc_tools.protoc",
            f"--descriptor_set_in={descriptors}",
            f"--grpc_python_out={request.parameter + ':' if request.parameter else ''}{out_dir}",
            *request.file_to_generate,
        ]
        if protoc.main(args) != 0:
            response.error = "grpc_tools.protoc failed for " + ", ".join(request.file_to_generate)
        else:
            for path in sorted(out_dir.rglob("*.py")):
                response.file.add(
                    name=path.relative_to(out_dir).as_posix(), content=path.read_text()
                )
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
