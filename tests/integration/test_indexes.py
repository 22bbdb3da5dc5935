"""Every query on imaged's hot path is answered from an index, on MongoDB and on the local FerretDB.

FerretDB's `explain` shows SQLite's plan: `SEARCH ... USING INDEX` is an index lookup, `SCAN` reads the whole
table. FerretDB 1.24 pushes only `_id` equality down to SQLite, so the hot path addresses documents by `_id`
alone; queries on other fields (the replica registry, a handful of documents) are checked on MongoDB only,
whose winning plan names its stages (IDHACK, EXPRESS_IXSCAN, IXSCAN; COLLSCAN is a full scan).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from imaged.claims import MongoClaims
from imaged.contract import utcnow
from imaged.replicas import Replicas
from imaged.store import MongoTaskStore

from ..support import MONGODB_URL

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def database(namespace: str) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URL, serverSelectionTimeoutMS=5000)
    db = client[namespace]
    replicas = Replicas(db["replicas"], "host:1:abc", 30.0)
    await MongoTaskStore(client, namespace).ensure_indexes()
    await replicas.ensure_indexes()
    await MongoClaims(db["claims"], replicas).ensure_indexes()
    await db["tasks"].insert_many([{"_id": f"task{i:05d}", "status": "completed"} for i in range(50)])
    await db["claims"].insert_many(
        [{"_id": f"task{i:05d}", "holder": "h", "at": utcnow()} for i in range(50)]
    )
    await db["shares"].insert_many([{"_id": f"slot:aliyun:aliyun-1:{i}", "holder": "h"} for i in range(50)])
    await db["replicas"].insert_many(
        [{"_id": f"host:{i}:x", "expires_at": utcnow() + timedelta(seconds=i)} for i in range(50)]
    )
    try:
        yield db
    finally:
        await client.drop_database(namespace)
        await client.close()


def is_ferretdb(explained: dict[str, Any]) -> bool:
    return "ferretdbVersion" in explained.get("serverInfo", {})


def uses_index(explained: dict[str, Any]) -> bool:
    text = repr(explained.get("queryPlanner"))
    if is_ferretdb(explained):
        return "USING INDEX" in text and "SCAN " not in text.replace("USING INDEX", "")
    return "COLLSCAN" not in text and any(s in text for s in ("IDHACK", "EXPRESS", "IXSCAN"))


async def explain(db: Any, collection: str, query: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await db.command(
        {"explain": {"find": collection, "filter": query}, "verbosity": "queryPlanner"}
    )
    return result


# What the hot path asks, by module: a task or a claim by _id (store.get, updates and deletes by _id, claims.take),
# a pool's units by _id prefix (shares._holders), and the live replicas (replicas.beat).
BY_ID = [("tasks", {"_id": "task00042"}), ("claims", {"_id": "task00042"})]
OTHER = [
    ("shares", {"_id": {"$regex": "^slot:aliyun:aliyun\\-1:"}}),
    ("replicas", {"expires_at": {"$gt": utcnow()}}),
]


@pytest.mark.parametrize(("collection", "query"), BY_ID, ids=[c for c, _ in BY_ID])
async def test_lookups_by_id_use_the_id_index(database: Any, collection: str, query: dict[str, Any]) -> None:
    explained = await explain(database, collection, query)
    assert uses_index(explained), explained.get("queryPlanner")


@pytest.mark.parametrize(("collection", "query"), OTHER, ids=[c for c, _ in OTHER])
async def test_other_hot_path_queries_use_an_index_where_the_server_can(
    database: Any, collection: str, query: dict[str, Any]
) -> None:
    explained = await explain(database, collection, query)
    if is_ferretdb(explained):
        pytest.skip("FerretDB 1.24 answers only _id equality from an index; these collections stay small")
    assert uses_index(explained), explained.get("queryPlanner")
