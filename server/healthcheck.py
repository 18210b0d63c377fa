"""``python -m server.healthcheck [ADDRESS] [--service NAME]``: exit 0 when the chat server at
ADDRESS (default 127.0.0.1:8001) reports SERVING for NAME (default "", the whole server), 1
otherwise, with the status on standard error.

For a container's health check where no grpc_health_probe or grpcurl is installed (the
compose file uses it); Kubernetes probes the same service natively (deploy/kubernetes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def check(address: str, service: str, seconds: float) -> str:
    """The status's name (``SERVING``...), or ``UNREACHABLE (CODE)``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=seconds
            )
        except grpc.aio.AioRpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.healthcheck")
    parser.add_argument("address", nargs="?", default="127.0.0.1:8001")
    parser.add_argument("--service", default="", help='health service name ("": the server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    status = asyncio.run(check(args.address, args.service, args.timeout))
    sys.stderr.write(f"{args.address} {args.service or '(server)'}: {status}\n")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
