"""Every query on imaged's hot path is answered from an index, on MongoDB and on the local FerretDB.

FerretDB's `explain` shows SQLite's plan: `SEARCH ... USING INDEX` is an index lookup, `SCAN` reads the whole
table. MongoDB names the winning plan's stages (IDHACK, EXPRESS_IXSCAN, IXSCAN; COLLSCAN is a full scan).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from ..support import MONGODB_URL

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def database(namespace: str) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URL, serverSelectionTimeoutMS=5000)
    try:
        yield client[namespace]
    finally:
        await client.drop_database(namespace)
        await client.close()


def plan_text(explained: dict[str, Any]) -> str:
    return repr(explained.get("queryPlanner"))


def uses_index(explained: dict[str, Any]) -> bool:
    text = plan_text(explained)
    if "ferretdbVersion" in explained.get("serverInfo", {}):
        return "USING INDEX" in text and "SCAN " not in text.replace("USING INDEX", "")
    return "COLLSCAN" not in text and any(s in text for s in ("IDHACK", "EXPRESS", "IXSCAN"))


async def test_lookup_by_id_uses_the_id_index(database: Any) -> None:
    tasks = database["tasks"]
    await tasks.insert_many([{"_id": f"task{i:05d}", "status": "completed"} for i in range(50)])
    explained = await database.command(
        {"explain": {"find": "tasks", "filter": {"_id": "task00042"}}, "verbosity": "queryPlanner"}
    )
    assert uses_index(explained), plan_text(explained)
