"""Every MongoDB command on a tenant's collection names its tenant.

A sharded cluster routes a command to one shard only when its filter carries the shard key,
and every shard key we recommend starts with ``tenant_id`` (docs/scale-out.md). A command
without it is sent to every shard, and, worse, is one check in Python away from touching
another tenant's data. This listener sees every command this test process sends (the servers
the integration tests run in-process included) and keeps those on a tenant's collection whose
filter, or inserted document, does not name ``tenant_id``.

A command that must span tenants by design, such as a queue's poll for due work, says so at
its call site: its ``comment`` starts with ``cross-tenant:`` and gives the reason.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import monitoring

#: Collections whose documents belong to one tenant, and the field that names it.
TENANT_COLLECTIONS: dict[str, str] = {
    "conversations": "tenant_id",
    "messages": "tenant_id",
    "idempotency": "tenant_id",
    "users": "tenant_id",
    "ingested_events": "tenant_id",
    "reply_jobs": "tenant_id",
    "ingest_inbox": "tenant_id",
    "deliveries": "tenant_id",
    "early_receipts": "tenant_id",
    "analytics_minutes": "tenant_id",
    "audit_log": "tenant_id",
    "audit_heads": "tenant_id",
    "dead_letters": "tenant_id",
    "alerts": "tenant_id",
    "media.files": "metadata.tenant_id",
}
# Not here, and why:
# - outbox: one queue for the whole service, drained oldest first by the relay; small and
#   transient, it stays unsharded.
# - handled_events: the worker's record of applied Kafka events, keyed by the event id alone.
# - locks, tenants: the service's own state, not a tenant's.
# - media.chunks: GridFS names chunks by their file; its shard key is {files_id, n}.

CROSS_TENANT = "cross-tenant:"
MIGRATION = "migration:"

#: Commands that carry filters, and where each keeps them.
_FILTERED = {"find", "findAndModify", "count", "distinct", "aggregate", "update", "delete"}
_READS = {"find", "count", "distinct", "aggregate"}


@dataclass(frozen=True)
class Unscoped:
    """One command that did not name its tenant."""

    command: str
    collection: str
    shape: str
    where: str

    def __str__(self) -> str:
        return f"{self.command} on {self.collection} {self.shape} from {self.where}"


class TenantFilterCheck(monitoring.CommandListener):
    """Keeps the commands on tenant collections that do not name their tenant."""

    def __init__(self, *, caller: Callable[[], str | None] | None = None) -> None:
        self._caller = caller or _caller
        self._lock = threading.Lock()
        self._unscoped: list[Unscoped] = []
        self.seen = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name not in _FILTERED and name != "insert":
            return
        collection = event.command.get(name)
        if not isinstance(collection, str) or collection not in TENANT_COLLECTIONS:
            return
        field = TENANT_COLLECTIONS[collection]
        command = event.command
        comment = command.get("comment")
        with self._lock:
            self.seen += 1
        if isinstance(comment, str) and comment.startswith(MIGRATION):
            shapes = []  # a start-up migration giving older documents their tenant_id
        elif isinstance(comment, str) and comment.startswith(CROSS_TENANT):
            # Only a read may span tenants: a write names the tenant it changes.
            shapes = [] if name in _READS else [f"{name} marked {comment!r}"]
        else:
            shapes = list(_missing(name, command, field))
        where = self._caller() if shapes else None
        if where is None:
            return  # none missing, or a test's own read or seeding
        with self._lock:
            self._unscoped.extend(Unscoped(name, collection, shape, where) for shape in shapes)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> list[Unscoped]:
        """The commands kept since the last take."""
        with self._lock:
            taken, self._unscoped = self._unscoped, []
        return taken


def _missing(name: str, command: Mapping[str, Any], field: str) -> Iterator[str]:
    """The shapes of this command's filters (or documents) that do not name the tenant."""
    if name == "insert":
        for document in command.get("documents", []):
            if not _has(document, field):
                yield f"document {_keys(document)}"
        return
    if name == "update":
        filters = [statement.get("q", {}) for statement in command.get("updates", [])]
    elif name == "delete":
        filters = [statement.get("q", {}) for statement in command.get("deletes", [])]
    elif name == "aggregate":
        pipeline = command.get("pipeline", [])
        first = pipeline[0] if pipeline else {}
        filters = [first.get("$match", {})]
        for stage in pipeline:
            joined = stage.get("$lookup") or stage.get("$unionWith")
            target = (
                joined.get("from", joined.get("coll")) if isinstance(joined, Mapping) else joined
            )
            if target in TENANT_COLLECTIONS:
                # The joined documents' tenants are not named by the first $match.
                yield f"a join into {target}"
    elif name in ("count", "distinct"):
        filters = [command.get("query", {})]
    else:
        filters = [command.get("filter", command.get("query", {}))]
    for filter in filters:
        if not _names_tenant(filter, field):
            yield f"filter {_keys(filter)}"


def _names_tenant(filter: Mapping[str, Any], field: str) -> bool:
    """True when the filter names the tenants of every document it can match: the field equal
    to a tenant id, or $in a list of them, at the top, in every branch of an $or, or in any part
    of an $and. ($ne, $nin or $exists name no tenant: they match every other one.)"""
    if _is_tenants(filter.get(field)):
        return True
    parts = filter.get("$and", [])
    if any(isinstance(part, Mapping) and _names_tenant(part, field) for part in parts):
        return True
    branches = filter.get("$or")
    return bool(branches) and all(
        isinstance(branch, Mapping) and _names_tenant(branch, field) for branch in branches
    )


def _is_tenants(value: Any) -> bool:
    """A tenant id, or {"$in": [tenant ids]} (and nothing else)."""
    if isinstance(value, str):
        return True
    if isinstance(value, Mapping) and set(value) == {"$in"}:
        ids = value["$in"]
        return isinstance(ids, list) and bool(ids) and all(isinstance(i, str) for i in ids)
    return False


def _has(document: Mapping[str, Any], field: str) -> bool:
    """Whether the document holds a tenant id at ``field`` (a dotted path)."""
    value: Any = document
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return isinstance(value, str)


def _keys(document: Mapping[str, Any]) -> str:
    """The document's top-level keys, never its values (they hold message bodies)."""
    return "{" + ", ".join(sorted(str(key) for key in document)) + "}"


def _caller() -> str | None:
    """Where in the service's code the command was sent: the innermost frame of the project's
    own code, when it is the service's. None when that frame is a test's, or for GridFS's own
    check for an empty bucket before each upload (a read of one document, in the driver)."""
    for frame in reversed(traceback.extract_stack()):
        if frame.name == "_create_index" and "/gridfs/" in frame.filename:
            return None
        path = Path(frame.filename).resolve()
        if not path.is_relative_to(_PROJECT) or ".venv" in path.parts or path == _HERE:
            continue  # this check, the driver, asyncio, the standard library
        relative = path.relative_to(_PROJECT)
        if relative.parts[0] not in _OURS:
            return None
        return f"{relative}:{frame.lineno} ({frame.name})"
    return None


_HERE = Path(__file__).resolve()
_PROJECT = _HERE.parents[2]
_OURS = {"server", "webhook_bridge", "devstack"}

#: The one listener of the test process (registered by pytest_configure, before any client).
CHECK = TenantFilterCheck()


def pytest_configure(config: pytest.Config) -> None:
    monitoring.register(CHECK)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """What the last tests' servers sent while stopping fails the run too."""
    unscoped = CHECK.take()
    if unscoped:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for item in sorted({str(item) for item in unscoped}):
            if reporter is not None:
                reporter.write_line(f"command on a tenant collection without tenant_id: {item}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _commands_name_their_tenant() -> Iterator[None]:
    """Fails the test during which the service sent a command without its tenant."""
    yield
    unscoped = CHECK.take()
    if unscoped:
        listed = "\n".join(sorted({f"  {item}" for item in unscoped}))
        pytest.fail(f"commands on tenant collections without tenant_id:\n{listed}", pytrace=False)
