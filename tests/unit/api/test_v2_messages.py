"""The V2 REST message helpers: JSON within its limits (depth found without parsing, integers bounded, NaN
refused), and the answer's content coding from Accept-Encoding weights."""

from __future__ import annotations

import json

import pytest

from service.api.v2 import response_encoding
from service.api.v2_messages import JsonLimits, json_depth_exceeds, load_json
from service.errors import InvalidTensor, MalformedRequest


@pytest.mark.parametrize(
    "text,depth",
    [
        (b"[]", 1),
        (b'{"a": [[1, 2], {"b": {}}]}', 4),
        (b'["[[[[[[", "]]]]"]', 1),  # brackets in strings do not count
        (b'["\\"[[[[[[[[", 1]', 1),  # nor after an escaped quote
        (b'["\\\\", [[[[1]]]]]', 5),  # an escaped backslash ends before the quote
        (b"[" * 40 + b"]" * 40, 40),
    ],
)
def test_json_depth_is_found_without_parsing(text, depth):
    assert not json_depth_exceeds(text, depth)
    assert json_depth_exceeds(text, depth - 1)


def test_depth_beyond_the_limit_is_refused_before_parsing():
    with pytest.raises(MalformedRequest, match="more than 32 levels deep"):
        load_json(b"[" * 100_000 + b"]" * 100_000, JsonLimits())


def test_long_integers_and_non_json_constants_are_refused():
    with pytest.raises(InvalidTensor, match="at most 40 digits"):
        load_json(b"[" + b"1" * 41 + b"]", JsonLimits())
    assert load_json(b"[-" + b"1" * 40 + b"]", JsonLimits()) == [-int("1" * 40)]
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(InvalidTensor, match="is not a JSON number"):
            load_json(b"[" + constant + b"]", JsonLimits())
    with pytest.raises(MalformedRequest, match="not valid JSON"):
        load_json(b"{", JsonLimits())


def test_a_valid_body_parses_as_json_does():
    body = {"inputs": [{"name": "input", "data": [[0.5, 1e-30], [3, -2]], "shape": [2, 2]}], "id": "[{"}
    assert load_json(json.dumps(body).encode(), JsonLimits()) == body


@pytest.mark.parametrize(
    "header,expected",
    [
        (None, "identity"),
        ("", "identity"),
        ("gzip", "gzip"),
        ("GZIP", "gzip"),
        ("x-gzip", "gzip"),
        ("deflate", "deflate"),
        ("gzip;q=0, identity", "identity"),
        ("gzip;q=0", "identity"),
        ("gzip;q=0.5, identity", "identity"),
        ("gzip;q=0.5, deflate;q=0.6", "deflate"),
        ("gzip, deflate", "gzip"),
        ("*", "gzip"),
        ("*;q=0.2, gzip;q=0", "deflate"),
        ("identity;q=0, gzip;q=0", "identity"),  # nothing acceptable: uncompressed rather than 406
        ("gzip;q=banana", "identity"),
        ("gzip;q=2", "identity"),
        ("br, zstd", "identity"),
    ],
)
def test_accept_encoding_weights_choose_the_coding(header, expected):
    assert response_encoding(header) == expected
