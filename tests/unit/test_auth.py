"""API keys: the file format, names, hashed entries, rotation, and a comparison whose time tells nothing."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from service import auth
from service.auth import ApiKeys, ApiKeysError, parse_keys


def test_named_unnamed_and_hashed_entries(tmp_path):
    hashed = hashlib.sha256(b"s3cret-three").hexdigest()
    path = tmp_path / "keys"
    path.write_text(f"# comment\n\nci:s3cret-one\ns3cret-two\nbatch:sha256:{hashed}\n")
    keys = ApiKeys(path)
    assert keys.enabled and keys.names == ["ci", "key-4", "batch"]
    assert keys.identify("s3cret-one") == "ci"
    assert keys.identify("s3cret-two") == "key-4"
    assert keys.identify("s3cret-three") == "batch"
    assert keys.identify("s3cret") is None and keys.identify("") is None


def test_inline_keys_and_no_keys():
    assert not ApiKeys().enabled
    keys = ApiKeys(inline="a:one, b:two")
    assert keys.identify("two") == "b" and keys.names == ["a", "b"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("x:sha256:abcd", "entry 1 (x) is not a 64-digit SHA-256 hex digest"),
        ("a:one\na:two", "the name 'a' is given twice"),
        (":nokey", "entry 1 has an empty name or key"),
    ],
)
def test_bad_entries_are_refused_naming_the_line_never_the_key(text, message):
    with pytest.raises(ApiKeysError) as error:
        parse_keys(text, "keys.txt")
    assert message in str(error.value)
    assert "two" not in str(error.value) and "one" not in str(error.value)


def test_the_file_is_re_read_when_it_changes(tmp_path):
    now = [0.0]
    path = tmp_path / "keys"
    path.write_text("old:first\n")
    keys = ApiKeys(path, clock=lambda: now[0])
    assert keys.identify("first") == "old"
    path.write_text("new:second\n")
    os.utime(path, ns=(10**18, 10**18))
    assert keys.identify("second") is None  # looked at less than a second ago: not yet
    now[0] += auth.RELOAD_EVERY_S
    assert keys.identify("second") == "new" and keys.identify("first") is None
    path.write_text("broken:sha256:nothex\n")
    os.utime(path, ns=(2 * 10**18, 2 * 10**18))
    now[0] += auth.RELOAD_EVERY_S
    assert keys.identify("second") == "new"  # a broken rewrite keeps the keys read before


def test_every_key_is_compared_whatever_matches(monkeypatch):
    """The time taken must not depend on how much of a key matches, nor on which key matches: every presented
    key is hashed, and its digest compared in constant time with every stored digest."""
    keys = ApiKeys(inline=",".join(f"k{i}:secret-number-{i}" for i in range(8)))
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for presented in ("secret-number-0", "secret-number-7", "secret-number-", "x", "secret-number-7" + "x" * 100):
        calls.clear()
        keys.identify(presented)
        assert len(calls) == 8  # no early exit on a match or a mismatch
        assert {len(a) for a, _ in calls} == {len(b) for _, b in calls} == {32}  # equal lengths: digests only
