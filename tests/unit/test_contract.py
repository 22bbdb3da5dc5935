"""The public message contract: requests, schema export, metadata rules."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from imaged.contract import Request, Status, is_valid_task_id, json_schemas, new_task_id

from ..support import SEED_MODELS, seed_body


@pytest.mark.parametrize("model", SEED_MODELS)
def test_original_request_bodies_are_valid(model: str) -> None:
    request = Request.model_validate_json(seed_body(model))
    assert request.model == model
    assert request.is_async is True
    assert request.task_id is None


def test_unknown_top_level_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match="callback_url"):
        Request.model_validate({"model": "m", "callback_url": "http://x"})


@pytest.mark.parametrize(
    "metadata",
    [{"a.b": 1}, {"$where": 1}, {"ok": {"nested.dot": 1}}, {"ok": [{"$x": 1}]}],
)
def test_metadata_keys_must_be_plain_names(metadata: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="plain name"):
        Request.model_validate({"model": "m", "metadata": metadata})


def test_metadata_size_is_capped() -> None:
    with pytest.raises(ValidationError, match="larger than"):
        Request.model_validate({"model": "m", "metadata": {"blob": "x" * 10_000}})


@pytest.mark.parametrize("task_id", ["", "a" * 65, "has space", "dot.ted", "slash/"])
def test_bad_task_ids_are_rejected(task_id: str) -> None:
    assert not is_valid_task_id(task_id)
    with pytest.raises(ValidationError, match="task_id"):
        Request.model_validate({"model": "m", "task_id": task_id})


def test_generated_task_ids_are_24_hex() -> None:
    task_id = new_task_id()
    assert len(task_id) == 24 and int(task_id, 16) >= 0 and is_valid_task_id(task_id)


def test_json_schemas_export_every_message() -> None:
    schemas = json_schemas()
    assert set(schemas) == {"request", "event", "result", "error"}
    assert schemas["request"]["additionalProperties"] is False
    assert "model" in schemas["request"]["required"]
    json.dumps(schemas)  # serialisable as is


def test_statuses_are_exactly_the_contract_words() -> None:
    assert [s.value for s in Status] == ["pending", "processing", "completed", "failed", "canceled"]
    assert [s.value for s in Status if s.terminal] == ["completed", "failed", "canceled"]
