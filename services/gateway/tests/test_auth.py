"""``ragfleet_gateway.auth`` on its own: keys and their hashes, the keys file (parsing, adding,
re-reading), the role each RPC needs and the tenant a request may act in. No servers."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from ragfleet.runtime.errors import PermissionDenied, Unauthenticated
from ragfleet_gateway.auth import (
    GRPC_ROLES,
    OPEN,
    Authenticator,
    KeyStore,
    Principal,
    Role,
    add_key,
    grpc_authenticate,
    hash_key,
    new_key,
    parse_keys,
)

pytestmark = pytest.mark.unit

DIGEST = "a" * 64


def test_a_new_key_names_its_entry_and_the_entry_holds_only_its_hash() -> None:
    key, entry = new_key("acme", frozenset({Role.QUERY}), "ci")
    prefix, key_id, secret = key.split("_", 2)
    assert (prefix, key_id) == ("rfk", entry.id) and len(key_id) == 12
    assert len(secret) >= 43  # 32 random bytes, URL-safe base64
    assert entry.sha256 == hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(entry.to_json())
    assert new_key("acme", frozenset({Role.QUERY}))[0] != key


@pytest.mark.parametrize(
    ("tenant", "roles", "message"),
    [(" ", frozenset({Role.QUERY}), "tenant"), ("acme", frozenset(), "roles")],
)
def test_a_key_needs_a_tenant_and_a_role(tenant: str, roles: frozenset[Role], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        new_key(tenant, roles)


def test_keys_files_are_json_or_yaml() -> None:
    yaml_text = (
        "keys:\n  - id: k1\n    tenant: acme\n    roles: [query, ingest]\n"
        f"    sha256: {DIGEST.upper()}\n"
    )
    json_text = json.dumps(
        {"keys": [{"id": "k1", "tenant": "acme", "roles": ["query", "ingest"], "sha256": DIGEST}]}
    )
    assert parse_keys(yaml_text, "f") == parse_keys(json_text, "f")
    entry = parse_keys(yaml_text, "f")["k1"]
    assert entry.roles == {Role.QUERY, Role.INGEST} and entry.sha256 == DIGEST
    assert parse_keys("", "f") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just a list", "a 'keys' list"),
        ("keys: {}", "a 'keys' list"),
        ("keys: [{id: k1, tenant: acme, roles: [query]}]", r"keys\[0\] is malformed"),
        (f"keys: [{{id: k1, tenant: acme, roles: [root], sha256: {DIGEST}}}]", "malformed"),
        ("keys: [{id: k1, tenant: acme, roles: [query], sha256: abc}]", "SHA-256"),
        (f"keys: [{{id: k1, tenant: '', roles: [query], sha256: {DIGEST}}}]", "tenant"),
        (
            f"keys: [{{id: k1, tenant: a, roles: [query], sha256: {DIGEST}}},"
            f" {{id: k1, tenant: b, roles: [query], sha256: {DIGEST}}}]",
            r"keys\[1\] repeats the id",
        ),
    ],
)
def test_a_malformed_keys_file_names_the_entry(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_keys(text, "keys.yaml")


def test_add_key_keeps_earlier_entries_in_an_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "keys.json"
    _, first_entry = new_key("acme", frozenset({Role.QUERY}))
    _, second_entry = new_key("acme", frozenset({Role.ADMIN}), "ops")
    add_key(path, first_entry)
    add_key(path, second_entry)
    assert parse_keys(path.read_text(), str(path)) == {
        first_entry.id: first_entry,
        second_entry.id: second_entry,
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]


def test_the_store_finds_only_whole_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, entry = new_key("acme", frozenset({Role.QUERY}))
    add_key(path, entry)
    store = KeyStore(path)
    assert store.find(key) == entry
    prefix, key_id, secret = key.split("_", 2)
    for wrong in (
        f"{prefix}_{key_id}_{secret[:-1]}x" if secret[-1] != "x" else f"{prefix}_{key_id}_y",
        f"xyz_{key_id}_{secret}",
        f"{prefix}_{key_id}",
        f"{prefix}_000000000000_{secret}",
        "",
    ):
        assert store.find(wrong) is None, wrong


def test_the_store_rereads_the_file_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    old, old_entry = new_key("acme", frozenset({Role.QUERY}))
    add_key(path, old_entry)
    store = KeyStore(path)
    new, new_entry = new_key("acme", frozenset({Role.QUERY}))
    add_key(path, new_entry)  # rotation: a new key beside the old one
    assert store.find(new) == new_entry and store.find(old) == old_entry
    path.write_text(json.dumps({"keys": [new_entry.to_json()]}))  # revoking the old one
    assert store.find(old) is None and store.find(new) == new_entry


def test_a_file_that_no_longer_parses_keeps_the_keys_last_read(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, entry = new_key("acme", frozenset({Role.QUERY}))
    add_key(path, entry)
    store = KeyStore(path)
    path.write_text("keys: [{id: broken")
    assert store.find(key) == entry
    path.unlink()
    assert store.find(key) == entry


def test_the_authenticator_refuses_to_run_open_by_accident(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RAGFLEET_GATEWAY_API_KEYS_FILE"):
        Authenticator.from_settings(None, auth_disabled=False)
    assert Authenticator.from_settings(None, auth_disabled=True).principal(None) is OPEN
    path = tmp_path / "keys.json"
    key, entry = new_key("acme", frozenset({Role.QUERY}))
    add_key(path, entry)
    authenticator = Authenticator.from_settings(path, auth_disabled=True)
    assert authenticator.principal(key) == Principal(entry.id, "acme", frozenset({Role.QUERY}))
    with pytest.raises(Unauthenticated, match="required"):
        authenticator.principal(None)
    with pytest.raises(Unauthenticated, match="not valid"):
        authenticator.principal("rfk_000000000000_nope")


def test_every_rpc_has_a_role_and_an_unlisted_one_needs_admin(tmp_path: Path) -> None:
    assert GRPC_ROLES == {
        "/ragfleet.gateway.v1.GatewayService/Ask": Role.QUERY,
        "/ragfleet.gateway.v1.GatewayService/Retrieve": Role.QUERY,
        "/ragfleet.gateway.v1.GatewayService/Ingest": Role.INGEST,
        "/ragfleet.gateway.v1.GatewayService/Feedback": Role.QUERY,
    }
    path = tmp_path / "keys.json"
    keys = {}
    for roles in ({Role.QUERY}, {Role.INGEST}, {Role.ADMIN}):
        key, entry = new_key("acme", frozenset(roles))
        add_key(path, entry)
        keys[min(roles)] = key
    check = grpc_authenticate(Authenticator(KeyStore(path)))

    def allowed(role: Role, method: str) -> bool:
        try:
            check(method, (("authorization", f"Bearer {keys[role]}"),))
        except PermissionDenied:
            return False
        return True

    service = "/ragfleet.gateway.v1.GatewayService"
    assert allowed(Role.QUERY, f"{service}/Ask") and allowed(Role.QUERY, f"{service}/Retrieve")
    assert not allowed(Role.QUERY, f"{service}/Ingest")
    assert allowed(Role.INGEST, f"{service}/Ingest") and not allowed(Role.INGEST, f"{service}/Ask")
    assert not allowed(Role.QUERY, f"{service}/DeleteEverything")
    assert not allowed(Role.INGEST, f"{service}/DeleteEverything")
    assert all(allowed(Role.ADMIN, f"{service}/{m}") for m in ("Ask", "Ingest", "New"))
    with pytest.raises(Unauthenticated):
        check(f"{service}/Ask", ())


@pytest.mark.parametrize(
    ("roles", "requested", "acts_in"),
    [
        ({Role.QUERY}, "", "acme"),
        ({Role.QUERY}, "acme", "acme"),
        ({Role.QUERY, Role.INGEST}, "other", None),
        ({Role.ADMIN}, "other", "other"),
        ({Role.ADMIN}, "", "acme"),
    ],
)
def test_a_key_narrows_the_tenant_to_its_own(
    roles: set[Role], requested: str, acts_in: str | None
) -> None:
    principal = Principal("k1", "acme", frozenset(roles))
    if acts_in is None:
        with pytest.raises(PermissionDenied, match=r"filter\.tenant: this key belongs"):
            principal.tenant_for(requested, "filter.tenant")
    else:
        assert principal.tenant_for(requested) == acts_in


def test_open_access_names_any_tenant_and_empty_means_no_filter() -> None:
    assert OPEN.tenant_for("") == "" and OPEN.tenant_for("other") == "other"
    OPEN.require(Role.ADMIN, "anything")


def test_a_missing_role_names_the_door_and_the_key_roles() -> None:
    with pytest.raises(PermissionDenied, match="Ingest: needs the ingest role; this key has query"):
        Principal("k1", "acme", frozenset({Role.QUERY})).require(Role.INGEST, "Ingest")
