"""Sanitizing provider data: plain keys, bounded strings/lists/nesting/size, BSON- and JSON-safe values."""

from __future__ import annotations

import enum
import json
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import bson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imaged.sanitize import (
    DROPPED_KEYS,
    MAX_KEY_CHARS,
    TOO_DEEP,
    TRUNCATED,
    clean,
    clean_text,
    has_lone_surrogate,
    json_size,
)

pytestmark = pytest.mark.timeout(30)

MB17 = 17 * 1024 * 1024


def storable(value: Any) -> None:
    """Fails unless ``value`` round-trips through strict JSON and encodes as BSON."""
    assert json.loads(json.dumps(value, allow_nan=False)) == value
    bson.encode({"x": value})


def keys_of(value: Any) -> list[str]:
    """Every key of every dict inside ``value`` (iteratively)."""
    keys: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return keys


def depth_of(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            break
        depth += 1
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return depth


# ------------------------------------------------------------------------------------------------- keys


def test_operator_and_dotted_keys_become_plain() -> None:
    out = clean({"$where": "sleep(1000)", "a.b": 1, "ok": {"$gt": 1, "x.y.z": [{"$in": 2}]}})
    assert out == {"_where": "sleep(1000)", "a_b": 1, "ok": {"_gt": 1, "x_y_z": [{"_in": 2}]}}
    storable(out)


def test_empty_nul_and_non_string_keys_become_plain() -> None:
    out = clean({"": 1, "a\x00b": 2, 3: "three", None: 4, (1, 2): 5})
    assert out == {"_": 1, "a_b": 2, "3": "three", "None": 4, "(1, 2)": 5}
    storable(out)


def test_renamed_keys_stay_unique_and_plain_keys_keep_their_name() -> None:
    out = clean({"a.b": 1, "a_b": 2, "a$b": 3, "$a_b": 4, 1: 5, "1": 6})
    assert out["a_b"] == 2 and out["a$b"] == 3 and out["1"] == 6
    assert sorted(out.values()) == [1, 2, 3, 4, 5, 6]
    assert all(not k.startswith("$") and "." not in k for k in out)


def test_long_keys_are_capped() -> None:
    out = clean({"k" * 10_000: 1, "k" * 10_001: 2})
    assert len(out) == 2
    assert all(len(k) <= MAX_KEY_CHARS for k in out)


def test_lone_surrogates_in_keys_and_values_are_replaced() -> None:
    value = {"\ud800key": "va\udfffl", "pair\ud83d\ude00": ["\udc00", "ok 😀"]}
    assert has_lone_surrogate(value)
    out = clean(value)
    assert out == {"\ufffdkey": "va\ufffdl", "pair😀": ["\ufffd", "ok 😀"]}
    assert not has_lone_surrogate(out)
    storable(out)


# ---------------------------------------------------------------------------------------------- strings


def test_a_17_mb_string_is_cut_first_and_fast() -> None:
    huge = "x" * MB17 + "\ud800"
    start = time.perf_counter()
    out = clean({"message": huge})
    seconds = time.perf_counter() - start
    assert len(out["message"]) == 2000 and out["message"].endswith(TRUNCATED)
    assert seconds < 2, f"{seconds:.2f}s"
    storable(out)


def test_strings_are_cut_to_max_str_and_nul_removed() -> None:
    out = clean(["a" * 50, "b\x00c", "short"], max_str=20)
    assert out == ["a" * (20 - len(TRUNCATED)) + TRUNCATED, "bc", "short"]
    assert all(len(s) <= 20 for s in out)


# -------------------------------------------------------------------------------------- breadth, depth


def test_a_10000_item_list_keeps_the_first_items_and_says_how_many_were_dropped() -> None:
    out = clean({"items": list(range(10_000))})
    assert out["items"][:100] == list(range(100))
    assert out["items"][100] == "…[9900 more items]"
    assert len(out["items"]) == 101
    storable(out)


def test_a_wide_dict_keeps_the_first_keys_and_counts_the_rest() -> None:
    out = clean({f"k{i}": i for i in range(10_000)})
    assert [out[f"k{i}"] for i in range(100)] == list(range(100))
    assert out[DROPPED_KEYS] == 9900
    storable(out)


def test_a_dropped_count_key_does_not_overwrite_a_real_key() -> None:
    out = clean({DROPPED_KEYS: "mine", **{f"k{i}": i for i in range(10)}}, max_items=5)
    assert out[DROPPED_KEYS] == "mine"
    assert out[f"{DROPPED_KEYS}_2"] == 6


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_1000_levels_of_nesting_are_cut(kind: str) -> None:
    deep: Any = "bottom"
    for _ in range(1000):  # built iteratively
        deep = [deep] if kind == "list" else {"n": deep}
    out = clean(deep)
    assert depth_of(out) == 6
    inner = out
    for _ in range(5):
        inner = inner[0] if kind == "list" else inner["n"]
    assert inner == [TOO_DEEP] if kind == "list" else inner == {"n": TOO_DEEP}
    storable(out)


def test_max_depth_counts_the_top_level_container() -> None:
    assert clean({"a": {"b": 1}}, max_depth=1) == {"a": TOO_DEEP}
    assert clean([1], max_depth=0) == TOO_DEEP
    assert clean("scalar", max_depth=0) == "scalar"


def test_cycles_end_at_the_depth_limit() -> None:
    cyclic: dict[str, Any] = {"name": "loop"}
    cyclic["self"] = cyclic
    out = clean(cyclic)
    assert depth_of(out) == 6
    storable(out)


# ------------------------------------------------------------------------------------------- other types


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Broken:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_non_json_types_become_json_values() -> None:
    value = {
        "bytes": b"caf\xc3\xa9 \xff\x00end",
        "bytearray": bytearray(b"abc"),
        "nan": float("nan"),
        "inf": float("-inf"),
        "set": {3},
        "frozenset": frozenset({"a"}),
        "tuple": (1, "two", None),
        "huge": 2**80,
        "small": -(2**63),
        "enum": Color.RED,
        "intenum": Level.HIGH,
        "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "broken": Broken(),
        "ordered": OrderedDict(b=1),
        "flag": True,
        "float": 1.5,
        "none": None,
    }
    out = clean(value)
    assert out == {
        "bytes": "café \ufffdend",
        "bytearray": "abc",
        "nan": None,
        "inf": None,
        "set": [3],
        "frozenset": ["a"],
        "tuple": [1, "two", None],
        "huge": str(2**80),
        "small": -(2**63),
        "enum": "Color.RED",
        "intenum": 3,
        "when": "2024-01-02 03:04:05+00:00",
        "broken": "<Broken>",
        "ordered": {"b": 1},
        "flag": True,
        "float": 1.5,
        "none": None,
    }
    assert type(out["intenum"]) is int
    storable(out)


def test_the_input_is_not_modified() -> None:
    value = {"$where": ["x" * 5000, {"a.b": 1}], "list": list(range(200))}
    snapshot = json.dumps(value)
    clean(value)
    assert json.dumps(value) == snapshot


# -------------------------------------------------------------------------------------------- max_bytes


@pytest.mark.parametrize(
    "value",
    [
        {f"k{i}": "v" * 1500 for i in range(100)},
        [["y" * 3000] * 100] * 100,
        {"a": [{"b": [{"c": list(range(100))} for _ in range(100)]} for _ in range(100)]},
        ["é" * 2000] * 100,  # 2 bytes a character
        {f"{i}": {f"{j}": i * j for j in range(100)} for i in range(100)},
    ],
)
def test_the_result_fits_max_bytes(value: Any) -> None:
    out = clean(value)
    assert json_size(out) <= 16384
    storable(out)


def test_small_max_bytes_fall_back_to_a_marker() -> None:
    out = clean({f"key{i}": [i] * 50 for i in range(100)}, max_bytes=64)
    assert json_size(out) <= 64
    storable(out)


def test_a_value_within_the_limits_is_returned_as_is() -> None:
    usage = {"input_tokens": 12, "output_tokens": 345, "image_count": 1, "models": ["wanx-v1"], "ok": True}
    assert clean(usage) == usage


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        clean({}, max_bytes=10)
    with pytest.raises(ValueError):
        clean({}, max_items=-1)


JSONISH_TEXT = st.text(
    alphabet=st.characters() | st.sampled_from("\ud800\udbff\udc00\udfff\x00.$"), max_size=30
) | st.sampled_from(["$where", "a.b", "", "\x00", "\ud800", "x" * 3000])
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | JSONISH_TEXT | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(JSONISH_TEXT, children, max_size=8),
    max_leaves=60,
)


@settings(database=None, deadline=None, max_examples=200)
@given(value=JSONISH, max_bytes=st.integers(64, 5000))
def test_any_value_becomes_storable(value: Any, max_bytes: int) -> None:
    out = clean(value, max_bytes=max_bytes, max_depth=4, max_items=5, max_str=100)
    storable(out)
    assert json_size(out) <= max_bytes
    assert not has_lone_surrogate(out)
    assert depth_of(out) <= 4
    for key in keys_of(out):
        assert key and not key.startswith("$") and "." not in key and "\x00" not in key


# -------------------------------------------------------------------------------------------- clean_text


def test_clean_text_collapses_control_characters_but_keeps_lines_and_tabs() -> None:
    raw = "line 1\r\nline 2\rline 3\u2028line 4\tcol\x1b[31mred\x1b[0m\x00\x07\x08 bell\x85x\x7fz"
    assert clean_text(raw) == "line 1\nline 2\nline 3\nline 4\tcol [31mred [0m  bell x z"


def test_clean_text_fixes_surrogates_and_truncates() -> None:
    out = clean_text("bad \ud800 pair \ud83d\ude00 " + "z" * 5000, max_chars=50)
    assert out.startswith("bad \ufffd pair 😀 ")
    assert out.endswith(TRUNCATED) and len(out) == 50
    out.encode("utf-8")


def test_clean_text_on_17_mb_is_fast() -> None:
    start = time.perf_counter()
    out = clean_text("\x01" * MB17)
    seconds = time.perf_counter() - start
    assert seconds < 2, f"{seconds:.2f}s"
    assert len(out) <= 2000 and out.endswith(TRUNCATED)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"caf\xc3\xa9 \xff", "café \ufffd"),
        (ValueError("boom"), "boom"),
        (None, "None"),
        (42, "42"),
        (Broken(), "<Broken>"),
        ("", ""),
    ],
)
def test_clean_text_coerces_to_str(value: Any, expected: str) -> None:
    assert clean_text(value) == expected


def test_clean_text_limits() -> None:
    assert clean_text("abcdef", max_chars=6) == "abcdef"
    assert len(clean_text("abcdefg", max_chars=3)) == 3
    assert clean_text("abc", max_chars=0) == ""
    with pytest.raises(ValueError):
        clean_text("x", max_chars=-1)


# ------------------------------------------------------------------------------------- has_lone_surrogate


@pytest.mark.parametrize(
    "value",
    ["\ud800", {"a": "\udfff"}, {"\ud800": 1}, [1, ("x", {"y": ["\udc00"]})], {frozenset({"\ud811"})}],
)
def test_lone_surrogates_are_found_anywhere(value: Any) -> None:
    assert has_lone_surrogate(value)


@pytest.mark.parametrize(
    "value", ["plain", "emoji 😀", {"ключ": ["значение", 1, 2.5, None, True]}, b"\xed\xa0\x80", 3]
)
def test_values_without_surrogates_pass(value: Any) -> None:
    assert not has_lone_surrogate(value)


def test_has_lone_surrogate_walks_deep_and_cyclic_values_without_recursion() -> None:
    deep: Any = "\ud800"
    for _ in range(100_000):
        deep = {"n": [deep]}
    assert has_lone_surrogate(deep)

    cyclic: list[Any] = ["ok"]
    cyclic.append(cyclic)
    assert not has_lone_surrogate(cyclic)


def test_has_lone_surrogate_on_17_mb_is_fast() -> None:
    start = time.perf_counter()
    assert has_lone_surrogate({"m": "é" * MB17 + "\udc00"})
    assert not has_lone_surrogate({"m": "é" * MB17})
    assert time.perf_counter() - start < 2
