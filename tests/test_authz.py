"""The authorization module's pure parts: selectors, grants, identities, and the
token checks of eventhub_log/tokens.py. No server, no database."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from api.auth import Auth, Forbidden, Unauthorized, require, require_subscriber
from api.authz import OPEN, Grant, GrantError, Identity, Right, matches
from eventhub_log.tokens import (
    AuthKeyError,
    InvalidToken,
    VerificationKey,
    load_verification_key,
    mint_token,
)

SECRET = "s" * 32


@pytest.mark.parametrize(
    ("selector", "value", "sub", "expected"),
    [
        ("room:lobby", "room:lobby", None, True),
        ("room:lobby", "room:lobby2", None, False),
        ("room:*", "room:lobby", None, True),
        ("room:*", "room:", None, True),
        ("room:*", "rooms:x", None, False),
        ("orders/*", "orders/eu/1", None, True),
        ("*", "anything/at:all", None, True),
        ("*:lobby", "room:lobby", None, True),
        ("a*b*c", "axxbyyc", None, True),
        ("a*b*c", "axxbyy", None, False),
        # Regular-expression characters in a selector or topic are plain text.
        ("room.lobby", "roomXlobby", None, False),
        ("a+", "aa", None, False),
        ("notifications:{sub}", "notifications:alice", "alice", True),
        ("notifications:{sub}", "notifications:bob", "alice", False),
        ("{sub}", "alice", "alice", True),
        ("{sub}:*", "alice:tab-1", "alice", True),
        ("{sub}:*", "alice", "alice", False),
        ("{sub}:*", "bob:tab-1", "alice", False),
        ("{sub}/{sub}", "al/al", "al", True),
        # A sub is taken literally: "a*" is not a wildcard, "." is not "any".
        ("user:{sub}", "user:a*", "a*", True),
        ("user:{sub}", "user:abc", "a*", False),
        ("user:{sub}", "user:aXb", "a.b", False),
        # Anonymous clients have no sub: a selector that names it matches nothing.
        ("{sub}", "", None, False),
        ("user:{sub}", "user:", None, False),
        ("{sub}:*", ":x", None, False),
    ],
)
def test_selector_matching(selector: str, value: str, sub: str | None, expected: bool) -> None:
    assert matches(selector, value, sub) is expected


def test_grant_parsing_defaults_and_refusals() -> None:
    grant = Grant.parse({"publish": ["room:*"], "admin": False})
    assert grant.publish == ("room:*",)
    assert grant.subscribe == ()
    assert grant.subscribers == ("{sub}", "{sub}:*")  # the contract's default
    assert Grant.parse(None) == Grant()
    assert Grant.parse({"subscribers": []}).subscribers == ()
    for bad in (
        [],
        "publish",
        {"publish": "room:*"},
        {"publish": [1]},
        {"publish": [""]},
        {"admin": "yes"},
        {"publish": ["x"], "rights": ["y"]},
    ):
        with pytest.raises(GrantError):
            Grant.parse(bad)


def test_identity_rights() -> None:
    alice = Identity(
        sub="alice",
        grant=Grant.parse(
            {
                "publish": ["room:*"],
                "subscribe": ["room:*", "notifications:{sub}"],
                "history": ["audit/*"],
            }
        ),
    )
    assert alice.may(Right.PUBLISH, "room:lobby")
    assert not alice.may(Right.PUBLISH, "notifications:alice")
    assert alice.may(Right.SUBSCRIBE, "notifications:alice")
    assert not alice.may(Right.SUBSCRIBE, "notifications:bob")
    assert alice.may_read("audit/2026")
    assert alice.may_read("room:x")
    assert not alice.may_read("secret")
    assert alice.may_act_as("alice")
    assert alice.may_act_as("alice:tab")
    assert not alice.may_act_as("bob")
    assert not alice.may_act_as("alicex")
    admin = Identity(sub="root", grant=Grant(admin=True))
    assert admin.may(Right.HISTORY, "anything")
    assert admin.may_act_as("bob")
    assert OPEN.may(Right.PUBLISH, "x")
    assert OPEN.may_act_as("anyone")
    assert not OPEN.anonymous


def test_refusals_are_403_with_a_token_and_401_without() -> None:
    alice = Identity(sub="alice", grant=Grant.parse({"publish": ["room:*"]}))
    with pytest.raises(Forbidden, match="secret"):
        require(alice, Right.PUBLISH, "secret")
    with pytest.raises(Forbidden, match="'bob'"):
        require_subscriber(alice, "bob")
    anonymous = Identity(sub=None, grant=Grant.parse({"subscribe": ["public:*"]}))
    require(anonymous, Right.SUBSCRIBE, "public:news")
    with pytest.raises(Unauthorized) as refused:
        require(anonymous, Right.SUBSCRIBE, "room:x")
    assert refused.value.status == 401
    assert refused.value.headers is not None
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


# Tokens ------------------------------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _hs256_key() -> VerificationKey:
    key = load_verification_key(secret=SECRET)
    assert key is not None
    return key


def test_a_minted_token_verifies_with_its_grant() -> None:
    token = mint_token("alice", {"publish": ["room:*"]}, secret=SECRET, ttl=60)
    claims = _hs256_key().decode(token)
    assert claims["sub"] == "alice"
    assert claims["eventhub"] == {"publish": ["room:*"]}
    assert claims["exp"] - time.time() == pytest.approx(60, abs=2)


def test_alg_none_and_unsigned_tokens_are_refused() -> None:
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'mallory'})}."
    with pytest.raises(InvalidToken):
        _hs256_key().decode(unsigned)
    # The same claims under "none", also with a signature part that is not empty.
    with pytest.raises(InvalidToken):
        _hs256_key().decode(unsigned + "c2ln")


def test_algorithm_confusion_is_refused(tmp_path: Path) -> None:
    """An HS256 token whose 'secret' is the public key's PEM text: anyone can
    make one, since the public key is public."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "public.pem"
    path.write_bytes(pem)
    key = load_verification_key(public_key_file=path)
    assert key is not None
    assert key.algorithm == "RS256"
    header = _b64({"alg": "HS256", "typ": "JWT"})
    body = _b64({"sub": "mallory", "eventhub": {"admin": True}})
    import hashlib
    import hmac

    signature = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    with pytest.raises(InvalidToken, match="RS256"):
        key.decode(forged)
    # And an honest RS256 token verifies.
    honest = jwt.encode({"sub": "alice"}, private, algorithm="RS256")
    assert key.decode(honest)["sub"] == "alice"


@pytest.mark.parametrize(
    ("make", "algorithm"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
    ],
)
def test_public_key_algorithms(tmp_path: Path, make: Any, algorithm: str) -> None:
    private = make()
    public_path = tmp_path / "public.pem"
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private_path = tmp_path / "private.pem"
    private_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key = load_verification_key(public_key_file=public_path)
    assert key is not None
    assert key.algorithm == algorithm
    token = mint_token("alice", {}, private_key_file=private_path)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert key.decode(token)["sub"] == "alice"
    # A token signed with another key of the same kind does not verify.
    other = mint_token("alice", {}, secret=SECRET)
    with pytest.raises(InvalidToken):
        key.decode(other)


def test_expiry_leeway_sub_and_signature() -> None:
    key = _hs256_key()
    now = int(time.time())
    with pytest.raises(InvalidToken, match="expired"):
        key.decode(jwt.encode({"sub": "a", "exp": now - 10}, SECRET, algorithm="HS256"))
    # Within the leeway: still taken.
    assert key.decode(jwt.encode({"sub": "a", "exp": now - 2}, SECRET, algorithm="HS256"))
    with pytest.raises(InvalidToken, match="expired"):
        key.decode(jwt.encode({"sub": "a", "exp": now - 2}, SECRET, algorithm="HS256"), leeway=0)
    with pytest.raises(InvalidToken, match="sub"):
        key.decode(jwt.encode({"eventhub": {}}, SECRET, algorithm="HS256"))
    with pytest.raises(InvalidToken, match="sub"):
        key.decode(jwt.encode({"sub": ""}, SECRET, algorithm="HS256"))
    with pytest.raises(InvalidToken, match="signature"):
        key.decode(jwt.encode({"sub": "a"}, "t" * 32, algorithm="HS256"))
    for junk in ("", "abc", "a.b.c", "x" * 100):
        with pytest.raises(InvalidToken, match="malformed"):
            key.decode(junk)


def test_audience_is_required_when_configured_and_refused_when_not() -> None:
    with_aud = jwt.encode({"sub": "a", "aud": "hub-1"}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        _hs256_key().decode(with_aud)
    key = load_verification_key(secret=SECRET, audience="hub-1")
    assert key is not None
    assert key.decode(with_aud)["sub"] == "a"
    with pytest.raises(InvalidToken):
        key.decode(jwt.encode({"sub": "a"}, SECRET, algorithm="HS256"))


def test_weak_or_conflicting_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AuthKeyError, match="32"):
        load_verification_key(secret="short")
    with pytest.raises(AuthKeyError, match="both"):
        load_verification_key(secret=SECRET, public_key_file=tmp_path / "x.pem")
    with pytest.raises(AuthKeyError, match="cannot read"):
        load_verification_key(public_key_file=tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(AuthKeyError, match="PEM"):
        load_verification_key(public_key_file=tmp_path / "junk.pem")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "small.pem").write_bytes(
        small.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(AuthKeyError, match="2048"):
        load_verification_key(public_key_file=tmp_path / "small.pem")
    (tmp_path / "secret").write_text(SECRET + "\n")
    key = load_verification_key(secret_file=tmp_path / "secret")
    assert key is not None
    assert key.key == SECRET.encode()


def test_auth_reads_the_token_where_it_travels_and_caches_verification() -> None:
    auth = Auth(_hs256_key())
    token = mint_token("alice", {}, secret=SECRET)
    assert auth.token_from(f"Bearer {token}", None, None) == token
    assert auth.token_from(None, token, "eventhub_token=other") == token
    assert auth.token_from(None, None, f"a=1; eventhub_token={token}") == token
    assert Auth(_hs256_key(), query_token=False).token_from(None, token, None) is None
    with pytest.raises(Unauthorized):
        auth.token_from("Basic dXNlcjpwYXNz", None, None)
    first = auth.identify(token)
    assert first.sub == "alice"
    assert auth.identify(token) is first
    with pytest.raises(Unauthorized) as refused:
        auth.identify(token[:-4] + "AAAA")
    assert token not in refused.value.message
    with pytest.raises(Unauthorized, match="needs a token"):
        auth.identify(None)
    anonymous = Auth(_hs256_key(), anonymous=Grant.parse({"subscribe": ["public:*"]}))
    assert anonymous.identify(None).anonymous
