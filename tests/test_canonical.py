"""The fast JSON decoder behind canonical parsing gives exactly what ``json.loads`` gives, or json's own error."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from consent.canonical import decode

scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text())  # fmt: skip
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                      max_leaves=20)  # fmt: skip


def _same(a, b) -> bool:
    """Equal, with the same types throughout (an int that came back a float is a difference)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@settings(max_examples=400, deadline=None)
@given(values)
def test_decode_equals_json_loads_on_canonical_and_loose_encodings(value):
    for text in (json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
                 json.dumps(value, indent=1)):  # fmt: skip
        data = text.encode("utf-8", "surrogatepass")
        try:
            expected = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            continue  # lone surrogates in raw UTF-8: not JSON text at all
        assert _same(decode(data), expected)


def test_integers_beyond_64_bits_stay_integers():
    for n in (2**63, -(2**63) - 1, 2**64, 10**30, -(10**25)):
        assert decode(json.dumps({"n": n}).encode()) == {"n": n}
        assert type(decode(json.dumps({"n": n}).encode())["n"]) is int


def test_what_json_refuses_is_refused_with_json_s_error():
    for bad in (b"{", b'{"a":}', b"[1,]"):
        try:
            decode(bad)
        except json.JSONDecodeError:
            continue
        raise AssertionError(f"{bad!r} decoded")


def test_what_only_json_accepts_is_decoded_as_json_does():
    assert math.isnan(decode(b'{"a":NaN}')["a"])  # canonical parsing then refuses it: not canonical JSON
    assert decode(b'{"a":"\\ud800"}') == {"a": "\ud800"}
