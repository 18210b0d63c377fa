"""A database of its own for a repository test, on the session's real store: created with the
service's indexes, dropped after."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from devstack.stack import Endpoints
from server.repositories.mongo import Document, create_indexes


@pytest.fixture
async def mongo_client(stack: Endpoints) -> AsyncIterator[AsyncMongoClient[Document]]:
    """A client of the session's store (time zone aware, as the service's)."""
    mongo_client: AsyncMongoClient[Document] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    yield mongo_client
    await mongo_client.close()


@pytest.fixture
async def scratch_database(
    mongo_client: AsyncMongoClient[Document],
) -> AsyncIterator[AsyncDatabase[Document]]:
    """A fresh database with every index the service creates; dropped after the test."""
    database = mongo_client[f"scratch_{uuid.uuid4().hex[:8]}"]
    await create_indexes(database)
    yield database
    await mongo_client.drop_database(database.name)
