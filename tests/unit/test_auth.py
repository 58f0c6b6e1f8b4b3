"""API keys: the file format, names, hashed entries, rotation, and a comparison whose time tells nothing."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from service import auth
from service.auth import ApiKey, ApiKeys, ApiKeysError, Priority, Role, parse_keys


def test_named_unnamed_and_hashed_entries(tmp_path):
    hashed = hashlib.sha256(b"s3cret-three").hexdigest()
    path = tmp_path / "keys"
    path.write_text(f"# comment\n\nci:s3cret-one\ns3cret-two\nbatch:sha256:{hashed}\n")
    keys = ApiKeys(path)
    assert keys.enabled and keys.names == ["ci", "key-4", "batch"]
    assert keys.identify("s3cret-one").name == "ci"
    assert keys.identify("s3cret-two").name == "key-4"
    assert keys.identify("s3cret-three").name == "batch"
    assert keys.identify("s3cret") is None and keys.identify("") is None
    assert keys.identify("s3cret-one") == ApiKey("ci", Role.INFER, None, Priority.NORMAL)  # the defaults


def test_inline_keys_and_no_keys():
    assert not ApiKeys().enabled
    keys = ApiKeys(inline="a:one, b:two")
    assert keys.identify("two").name == "b" and keys.names == ["a", "b"]


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
    assert keys.identify("first").name == "old"
    path.write_text("new:second\n")
    os.utime(path, ns=(10**18, 10**18))
    assert keys.identify("second") is None  # looked at less than a second ago: not yet
    now[0] += auth.RELOAD_EVERY_S
    assert keys.identify("second").name == "new" and keys.identify("first") is None
    path.write_text("broken:sha256:nothex\n")
    os.utime(path, ns=(2 * 10**18, 2 * 10**18))
    now[0] += auth.RELOAD_EVERY_S
    assert keys.identify("second").name == "new"  # a broken rewrite keeps the keys read before


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


def test_settings_after_the_key_give_its_role_rate_and_priority():
    hashed = hashlib.sha256(b"ops-key").hexdigest()
    text = (
        f"ops:sha256:{hashed} role=admin\n"
        "batch:batch-key rate=600/minute priority=low\n"
        "interactive:live-key   priority=high rate=20/second role=infer\n"
        "legacy: spaced-key\n"  # as read before: white space around the key is not part of it
        "bare-key rate=1/day\n"
    )
    keys = {entry.key.name: entry.key for entry in parse_keys(text, "keys.txt")}
    assert keys["ops"] == ApiKey("ops", Role.ADMIN)
    assert keys["batch"] == ApiKey("batch", Role.INFER, "600/minute", Priority.LOW)
    assert keys["interactive"] == ApiKey("interactive", Role.INFER, "20/second", Priority.HIGH)
    assert keys["legacy"] == ApiKey("legacy")
    assert keys["key-5"] == ApiKey("key-5", rate="1/day")
    parsed = ApiKeys(inline="a:one rate=5/second, b:two role=admin priority=low")
    assert parsed.identify("one") == ApiKey("a", rate="5/second")
    assert parsed.identify("two") == ApiKey("b", Role.ADMIN, None, Priority.LOW)
    assert Priority.HIGH.rank < Priority.NORMAL.rank == 0 < Priority.LOW.rank


@pytest.mark.parametrize(
    "entry,message",
    [
        ("ci:sekrit role=root", "entry 1 (ci): role must be infer or admin, got 'root'"),
        ("ci:sekrit priority=urgent", "entry 1 (ci): priority must be high, normal, low, got 'urgent'"),
        ("ci:sekrit rate=10/s", "entry 1 (ci): rate must be a number of requests per second, minute, hour or day"),
        ("ci:sekrit rate=0/second", "rate must be a number of requests"),
        ("ci:sekrit rate=1/second;5/minute", "rate must be a number of requests"),
        ("ci:sekrit colour=red", "entry 1 (ci): unknown setting 'colour'; the settings are role, rate and priority"),
        ("ci:sekrit role=admin role=infer", "(given once each); a key cannot contain white space"),
        ("ci:sek rit", "a key cannot contain white space"),
    ],
)
def test_bad_settings_are_refused_naming_the_entry_never_the_key(entry, message):
    with pytest.raises(ApiKeysError) as error:
        parse_keys(entry, "keys.txt")
    assert message in str(error.value)
    assert "sekrit" not in str(error.value) and "sek" not in str(error.value)
