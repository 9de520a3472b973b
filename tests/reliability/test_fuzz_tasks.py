"""The queue contract's validator (`worker.celery_app.comparison_ids`) against arbitrary JSON-like
messages: it returns the ids of a message that keeps the contract and raises its own ValueError,
in a short message fit for one log line, for anything else; nothing else ever escapes it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.celery_app import MAX_IDS_PER_MESSAGE, comparison_ids

MAX_MESSAGE = 160  # the longest fixed text (59 characters) plus a value shortened to 80
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=300)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=300), inner, max_size=4),
    max_leaves=12,
)
IDS = st.one_of(
    st.lists(st.integers(min_value=-3, max_value=2**70), max_size=8),  # ints: the only right type, but not every value
    st.lists(st.integers(min_value=1, max_value=50) | JSON_VALUES, min_size=1, max_size=6),
    JSON_VALUES,
)
KEYS = st.sampled_from(["comparison_ids", "ids", ""]) | st.text(max_size=300)
KWARGS = st.one_of(
    st.builds(lambda ids: {"comparison_ids": ids}, IDS),
    st.builds(lambda ids, extra: {"comparison_ids": ids, **extra}, IDS, st.dictionaries(KEYS, JSON_VALUES, max_size=3)),
    st.dictionaries(KEYS, JSON_VALUES, max_size=4),
)
ARGS = st.just([]) | st.lists(JSON_VALUES, max_size=3)


def keeps_the_contract(args, kwargs) -> bool:
    ids = kwargs.get("comparison_ids")
    return (
        not args
        and set(kwargs) == {"comparison_ids"}
        and isinstance(ids, list)
        and 1 <= len(ids) <= MAX_IDS_PER_MESSAGE
        and all(type(i) is int and i >= 1 for i in ids)
    )


@settings(max_examples=200, deadline=None)
@given(args=ARGS, kwargs=KWARGS)
def test_any_message_gets_its_ids_or_a_short_value_error(args, kwargs):
    kwargs = json.loads(json.dumps(kwargs))  # as the broker hands it over (tuples become lists)
    try:
        ids = comparison_ids(args, kwargs)
    except ValueError as exc:
        assert not keeps_the_contract(args, kwargs)
        assert 0 < len(str(exc)) <= MAX_MESSAGE, str(exc)
    else:
        assert keeps_the_contract(args, kwargs)
        assert ids == list(dict.fromkeys(kwargs["comparison_ids"]))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (
            {"comparison_ids": list(range(1, MAX_IDS_PER_MESSAGE + 2))},
            "comparison_ids: at most 1000 per message, got 1001",
        ),
        ({"k" * 1_000_000: 1}, f"kwargs must be exactly {{'comparison_ids': [...]}}, got keys ['{'k' * 75}..."),
        (
            {f"key{i:05}": i for i in range(10_000)},
            (
                "kwargs must be exactly {'comparison_ids': [...]}, got keys "
                "['key00000', 'key00001', 'key00002', 'key00003', 'key00004', 'key00005', 'key..."
            ),
        ),
    ],
)
def test_the_largest_messages_are_named_in_one_short_line(kwargs, error):
    with pytest.raises(ValueError) as raised:
        comparison_ids([], kwargs)
    assert str(raised.value) == error


def test_the_largest_message_that_keeps_the_contract_is_accepted():
    ids = list(range(MAX_IDS_PER_MESSAGE, 1, -1)) + [5]  # 1000 ids, one of them twice: kept once, in first place
    assert comparison_ids([], {"comparison_ids": ids}) == list(range(MAX_IDS_PER_MESSAGE, 1, -1))
