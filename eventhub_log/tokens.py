"""Signed tokens (contract section 6): the keys that verify them, and minting.

A token is a JWT whose ``sub`` says who it is and whose ``eventhub`` claim is its
grant. What each right allows is decided by the server (``api/authz.py``); this
module only knows keys, signatures and claims, so that the command line can mint
tokens and check a key before a server starts, without the web app.

What each check defends against:

- One algorithm per key, chosen from the key, never from the token. A token's
  header names its algorithm, and a verifier that believed it would accept
  ``alg: none`` (no signature at all) or an HS256 token whose "secret" is the
  RSA public key's PEM text, which anyone can read (algorithm confusion). PyJWT
  is given the single algorithm the configured key is for.
- Minimum key sizes, enforced rather than warned about: a short HMAC secret can
  be brute-forced offline from any token it signed (RFC 7518 3.2: at least the
  hash's 32 bytes), and RSA below 2048 bits is not considered safe.
- ``sub`` required: every right and every subscriber id is tied to it.
- ``exp`` honoured with a leeway of a few seconds for clocks that disagree;
  ``nbf`` and ``iat`` as PyJWT checks them. A token with an ``aud`` is only
  accepted when an audience is configured and it matches.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .errors import EventHubError

GRANT_CLAIM = "eventhub"
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
MAX_LEEWAY = 30.0


class AuthKeyError(EventHubError):
    """The configured key cannot be used (missing, unreadable, too weak, two kinds)."""


class InvalidToken(EventHubError):
    """A token that is malformed, badly signed, expired, unsigned or without ``sub``.

    The message says which, and never contains the token itself."""


@dataclass(frozen=True)
class VerificationKey:
    """The key that verifies tokens, with the one algorithm it is for."""

    algorithm: str
    key: Any  # bytes (HS256) or a cryptography public key
    audience: str | None = None

    def decode(self, token: str, *, leeway: float = 5.0) -> dict[str, Any]:
        """The verified claims of ``token``; raises ``InvalidToken``."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                leeway=leeway,
                options={"require": ["sub"], "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token has no {exc.claim!r} claim") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise InvalidToken("the token is not meant for this hub (aud)") from None
        except jwt.InvalidAlgorithmError:
            raise InvalidToken(f"the token is not signed with {self.algorithm}") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except jwt.PyJWTError:
            # DecodeError and the rest: PyJWT's messages do not quote the token,
            # but there is nothing in them a client needs either.
            raise InvalidToken("the token is malformed") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("the token's 'sub' must be a non-empty string")
        return claims


def load_verification_key(
    *,
    secret: str | None = None,
    secret_file: str | Path | None = None,
    public_key_file: str | Path | None = None,
    audience: str | None = None,
) -> VerificationKey | None:
    """The configured key, or ``None`` for an open hub; raises ``AuthKeyError``."""
    if secret_file is not None:
        if secret is not None:
            raise AuthKeyError("give the secret or a secret file, not both")
        try:
            secret = Path(secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AuthKeyError(f"cannot read the secret file {str(secret_file)!r}: {exc}") from None
    if secret is not None and public_key_file is not None:
        raise AuthKeyError(
            "EVENTHUB_AUTH_SECRET and EVENTHUB_AUTH_PUBLIC_KEY are both set: choose one"
        )
    if secret is not None:
        raw = secret.encode()
        if len(raw) < MIN_SECRET_BYTES:
            raise AuthKeyError(
                f"the HS256 secret is {len(raw)} bytes; it needs at least "
                f"{MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)"
            )
        return VerificationKey("HS256", raw, audience)
    if public_key_file is not None:
        try:
            pem = Path(public_key_file).read_bytes()
        except OSError as exc:
            raise AuthKeyError(
                f"cannot read the public key {str(public_key_file)!r}: {exc}"
            ) from None
        try:
            public = serialization.load_pem_public_key(pem)
        except ValueError:
            raise AuthKeyError(f"{str(public_key_file)!r} is not a PEM public key") from None
        return VerificationKey(algorithm_of(public), public, audience)
    return None


def algorithm_of(key: Any) -> str:
    """The one JWS algorithm a key (public or private) is used with here."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise AuthKeyError(f"an RSA key needs at least {MIN_RSA_BITS} bits, not {key.key_size}")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise AuthKeyError(f"ES256 needs a P-256 key, not {key.curve.name}")
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise AuthKeyError("the key must be RSA, EC P-256 or Ed25519")


def mint_token(
    sub: str,
    grant: Mapping[str, Any],
    *,
    secret: str | None = None,
    private_key_file: str | Path | None = None,
    ttl: float | None = 3600.0,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """A token for ``sub`` with ``grant`` as its ``eventhub`` claim, signed with
    the HS256 ``secret`` or the private key in ``private_key_file`` (PEM)."""
    if not sub:
        raise InvalidToken("a token needs a non-empty sub")
    claims: dict[str, Any] = {"sub": sub, GRANT_CLAIM: dict(grant), **(extra_claims or {})}
    now = int(time.time())
    claims.setdefault("iat", now)
    if ttl is not None:
        claims["exp"] = now + max(1, round(ttl))
    if private_key_file is not None:
        try:
            private = serialization.load_pem_private_key(
                Path(private_key_file).read_bytes(), password=None
            )
        except (OSError, ValueError, TypeError) as exc:
            raise AuthKeyError(
                f"cannot load the private key {str(private_key_file)!r}: {exc}"
            ) from None
        return jwt.encode(claims, private, algorithm=algorithm_of(private))  # type: ignore[arg-type]
    if secret is None:
        raise AuthKeyError("minting needs EVENTHUB_AUTH_SECRET (HS256) or a private key")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise AuthKeyError(f"an HS256 secret needs at least {MIN_SECRET_BYTES} bytes")
    return jwt.encode(claims, secret.encode(), algorithm="HS256")


def grant_of(selectors: Mapping[str, Sequence[str]], *, admin: bool = False) -> dict[str, Any]:
    """A grant claim from selector lists (empty lists are left out)."""
    grant: dict[str, Any] = {name: list(values) for name, values in selectors.items() if values}
    if admin:
        grant["admin"] = True
    return grant


__all__ = [
    "GRANT_CLAIM",
    "AuthKeyError",
    "InvalidToken",
    "VerificationKey",
    "algorithm_of",
    "grant_of",
    "load_verification_key",
    "mint_token",
]
