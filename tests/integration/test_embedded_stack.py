"""The embedded stack's MongoDB is started as the service needs it."""

from __future__ import annotations

import os

import pytest
from pymongo import AsyncMongoClient

from devstack.stack import OPLOG_MAX_ENTRIES
from server.repositories.mongo import Document


async def test_the_oplog_holds_millions_of_entries_as_a_real_mongod_does(
    mongo_client: AsyncMongoClient[Document],
) -> None:
    # At SecantusDB's default cap (100,000 entries) every write slows to about a third once a
    # long run fills it; the stack raises the cap. A MongoDB given by URL keeps its own.
    if os.environ.get("CHAT_MONGODB_URI"):
        pytest.skip("CHAT_MONGODB_URI names a MongoDB the stack did not start")
    cursor = await mongo_client.local.list_collections(filter={"name": "oplog.rs"})
    (oplog,) = await cursor.to_list()
    assert oplog["options"]["capped"] is True
    assert oplog["options"]["max"] == OPLOG_MAX_ENTRIES >= 1_000_000
