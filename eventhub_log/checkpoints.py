"""Signed checkpoints (contract section 8): a topic's head, signed with Ed25519.

A checkpoint is ``{"topic", "seq", "hash", "signed_at", "signature"}``: ``seq``
and ``hash`` are the topic's last event, ``signed_at`` RFC 3339 UTC text, and
``signature`` base64 (standard alphabet, padded) of the Ed25519 signature of the
UTF-8 text

    "eventhub-log checkpoint v1\\n" + topic + "\\n" + seq + "\\n" + hash + "\\n" + signed_at

(``seq`` in decimal, ``signed_at`` exactly as the checkpoint carries it). An
auditor keeps checkpoints outside the hub; ``check`` then tells whether the stored
chain still has that hash at that seq, which catches a rewrite of the history
below it even when every later hash was recomputed (the chain alone cannot).

Files: ``eventhub-log checkpoint`` writes one checkpoint object a line (NDJSON),
so that a periodic job can append to one file; ``read_file`` also takes a single
JSON object or a JSON array of them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import and_, select

from .errors import EventHubError
from .model import format_timestamp
from .store.database import Database
from .store.tables import events, topics

PREFIX = "eventhub-log checkpoint v1"
KEY_ENV = "EVENTHUB_AUDIT_KEY"
PUBLIC_KEY_ENV = "EVENTHUB_AUDIT_PUBLIC_KEY"
FIELDS = ("topic", "seq", "hash", "signed_at", "signature")
_HASH = re.compile(r"[0-9a-f]{64}")
# Far more than any auditor's record; a bound so that a wrong file is refused
# before it is read into memory whole.
MAX_FILE_BYTES = 256 * 1024 * 1024


class AuditKeyError(EventHubError):
    """An audit key that cannot be used: unreadable, not PEM, not Ed25519."""


class CheckpointFileError(EventHubError):
    """A checkpoint file that cannot be read or is not checkpoints."""


class NoStoredEvents(EventHubError):
    """A topic with no stored event (all pruned): there is no head to sign."""


@dataclass(frozen=True)
class Checkpoint:
    topic: str
    seq: int
    hash: str
    signed_at: str
    signature: str

    def message(self) -> bytes:
        return message(self.topic, self.seq, self.hash, self.signed_at)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, value: Any) -> Checkpoint:
        """The checkpoint ``value`` holds; ``ValueError`` naming what is wrong.
        Members beyond the five are ignored (the signature does not cover them)."""
        if not isinstance(value, Mapping):
            raise ValueError("a checkpoint must be a JSON object")
        missing = [name for name in FIELDS if name not in value]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        topic, seq, digest = value["topic"], value["seq"], value["hash"]
        signed_at, signature = value["signed_at"], value["signature"]
        if not isinstance(topic, str) or not topic:
            raise ValueError("'topic' must be a non-empty string")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("'seq' must be a positive integer")
        if not isinstance(digest, str) or not _HASH.fullmatch(digest):
            raise ValueError("'hash' must be 64 lowercase hex digits")
        if not isinstance(signed_at, str) or not isinstance(signature, str):
            raise ValueError("'signed_at' and 'signature' must be strings")
        return cls(topic, seq, digest, signed_at, signature)


def message(topic: str, seq: int, digest: str, signed_at: str) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return f"{PREFIX}\n{topic}\n{seq}\n{digest}\n{signed_at}".encode()


# Keys ----------------------------------------------------------------------


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def load_private_key(path: str | Path, what: str = KEY_ENV) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file at ``path``; ``AuditKeyError`` if not."""
    pem = _read(path, what)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # a passphrase-protected key
        raise AuditKeyError(
            f"{what}: {str(path)!r} is encrypted; give an unencrypted PEM key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise AuditKeyError(
            f"{what}: {str(path)!r} is not a PEM private key "
            "(make one with: openssl genpkey -algorithm ed25519 -out audit-key.pem)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(
            f"{what}: {str(path)!r} holds a key of type {_kind(key)}; checkpoints are signed with "
            "Ed25519 (openssl genpkey -algorithm ed25519 -out audit-key.pem)"
        )
    return key


def load_public_key(path: str | Path, what: str = PUBLIC_KEY_ENV) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file at ``path``; ``AuditKeyError`` if not."""
    pem = _read(path, what)
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        hint = " (it looks like a private key: use EVENTHUB_AUDIT_KEY)" if b"PRIVATE" in pem else ""
        raise AuditKeyError(f"{what}: {str(path)!r} is not a PEM public key{hint}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(
            f"{what}: {str(path)!r} holds a key of type {_kind(key)}; checkpoints are Ed25519"
        )
    return key


def _kind(key: object) -> str:
    return type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace("PublicKey", "")


def signing_key_from_env(env: Mapping[str, str] | None = None) -> Ed25519PrivateKey | None:
    """``EVENTHUB_AUDIT_KEY``'s key, ``None`` when unset; ``AuditKeyError`` when unusable."""
    path = (os.environ if env is None else env).get(KEY_ENV) or None
    return None if path is None else load_private_key(path)


def verification_key_from_env(env: Mapping[str, str] | None = None) -> Ed25519PublicKey | None:
    """The key checkpoints are checked with: ``EVENTHUB_AUDIT_PUBLIC_KEY`` when set,
    else the public half of ``EVENTHUB_AUDIT_KEY``; ``None`` when neither is."""
    env = os.environ if env is None else env
    public = env.get(PUBLIC_KEY_ENV) or None
    if public is not None:
        return load_public_key(public)
    private = signing_key_from_env(env)
    return None if private is None else private.public_key()


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo), as ``openssl pkey -pubout`` writes it."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


# Signing and checking --------------------------------------------------------


def sign(
    key: Ed25519PrivateKey, topic: str, seq: int, digest: str, signed_at: str | None = None
) -> Checkpoint:
    if signed_at is None:
        signed_at = format_timestamp(datetime.now(UTC))
    signature = key.sign(message(topic, seq, digest, signed_at))
    return Checkpoint(topic, seq, digest, signed_at, base64.b64encode(signature).decode("ascii"))


def signature_holds(key: Ed25519PublicKey, checkpoint: Checkpoint) -> bool:
    try:
        raw = base64.b64decode(checkpoint.signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(raw, checkpoint.message())
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Head:
    """A topic's last event (``hash`` ``None`` when no event is stored) and how
    far retention deleted."""

    topic: str
    last_seq: int
    pruned_through_seq: int
    hash: str | None


def _heads_query() -> Any:
    return (
        select(topics.c.topic, topics.c.last_seq, topics.c.pruned_through_seq, events.c.hash)
        .select_from(
            topics.outerjoin(
                events, and_(events.c.topic == topics.c.topic, events.c.seq == topics.c.last_seq)
            )
        )
        .order_by(topics.c.topic)
    )


async def heads(database: Database, names: Collection[str] | None = None) -> list[Head]:
    """The heads of the named topics (those that exist), or of every topic, by name.
    One statement: a topic's ``last_seq`` and its event are read together."""
    query = _heads_query()
    if names is not None:
        query = query.where(topics.c.topic.in_(sorted(set(names))))
    async with database.read() as conn:
        rows = (await conn.execute(query)).all()
    return [Head(row[0], int(row[1]), int(row[2]), row[3]) for row in rows]


async def checkpoint(database: Database, key: Ed25519PrivateKey, topic: str) -> Checkpoint | None:
    """A signed checkpoint of ``topic``'s last event; ``None`` for an unknown
    topic, ``NoStoredEvents`` when retention deleted every event."""
    found = await heads(database, [topic])
    if not found:
        return None
    return sign_head(key, found[0])


def sign_head(key: Ed25519PrivateKey, head: Head) -> Checkpoint:
    if head.hash is None:
        # The anchor (the last pruned event's hash) is known, but a checkpoint of
        # an event no longer stored could never be checked against the database.
        raise NoStoredEvents(
            f"topic {head.topic!r} has no stored event (retention deleted every event "
            f"through seq {head.pruned_through_seq}); there is nothing to checkpoint"
        )
    return sign(key, head.topic, head.last_seq, head.hash)


async def stored_hash(database: Database, topic: str, seq: int) -> str | None:
    async with database.read() as conn:
        return (
            await conn.execute(
                select(events.c.hash).where(events.c.topic == topic, events.c.seq == seq)
            )
        ).scalar()


@dataclass(frozen=True)
class Check:
    """What checking one checkpoint against the database found."""

    checkpoint: Checkpoint
    ok: bool
    reason: str


async def check(
    database: Database,
    key: Ed25519PublicKey,
    checkpoint: Checkpoint,
    *,
    broken_at: int | None = None,
) -> Check:
    """Whether ``checkpoint`` is signed by ``key`` and the stored chain still has
    its hash at its seq. ``broken_at`` is where a verification of the topic's
    chain found it broken (``None``: it holds, or was not verified): a checkpoint
    above a broken link cannot vouch for the history below it."""
    cp = checkpoint

    def result(ok: bool, reason: str) -> Check:
        return Check(cp, ok, reason)

    if not signature_holds(key, cp):
        return result(False, "bad signature: not signed by this key, or altered since")
    found = await heads(database, [cp.topic])
    if not found:
        return result(False, "no such topic")
    head = found[0]
    if cp.seq <= head.pruned_through_seq:
        return result(
            False,
            f"seq {cp.seq} is no longer stored (retention deleted through seq "
            f"{head.pruned_through_seq}); it cannot be checked",
        )
    if cp.seq > head.last_seq:
        return result(
            False,
            f"seq {cp.seq} is beyond the topic's last seq {head.last_seq}: events were removed",
        )
    stored = await stored_hash(database, cp.topic, cp.seq)
    if stored is None:
        return result(False, f"seq {cp.seq} is not stored: the event was deleted")
    if stored != cp.hash:
        return result(
            False,
            f"the stored hash at seq {cp.seq} is {stored}, the checkpoint's {cp.hash}: "
            f"history at or below seq {cp.seq} was rewritten",
        )
    if broken_at is not None and broken_at <= cp.seq:
        return result(False, f"the chain is broken at seq {broken_at}, at or below this checkpoint")
    return result(True, f"holds: seq {cp.seq} still has hash {cp.hash}")


# Files ---------------------------------------------------------------------


def parse(text: str, source: str = "checkpoint file") -> list[Checkpoint]:
    """The checkpoints of a file's text: one JSON object, a JSON array of them,
    or one object (or array) a line. ``CheckpointFileError`` says where it is wrong."""
    try:
        whole = json.loads(text)
    except ValueError:
        items: list[tuple[str, Any]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise CheckpointFileError(
                    f"{source} is not JSON (nor one JSON object a line): line {number}: {exc}"
                ) from None
            items.extend(_members(value, f"{source} line {number}"))
    else:
        items = list(_members(whole, source))
    if not items:
        raise CheckpointFileError(f"{source} holds no checkpoint")
    found = []
    for where, value in items:
        try:
            found.append(Checkpoint.from_dict(value))
        except ValueError as exc:
            raise CheckpointFileError(f"{where}: not a checkpoint: {exc}") from None
    return found


def _members(value: Any, where: str) -> list[tuple[str, Any]]:
    if isinstance(value, list):
        return [(f"{where} item {index}", item) for index, item in enumerate(value, start=1)]
    return [(where, value)]


def read_file(path: str | Path) -> list[Checkpoint]:
    name = str(path)
    try:
        with open(path, "rb") as source:
            raw = source.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CheckpointFileError(f"cannot read {name!r}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CheckpointFileError(f"{name!r} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointFileError(f"{name!r} is not JSON (not UTF-8 text)") from None
    return parse(text, repr(name))


__all__ = [
    "FIELDS",
    "KEY_ENV",
    "PREFIX",
    "PUBLIC_KEY_ENV",
    "AuditKeyError",
    "Check",
    "Checkpoint",
    "CheckpointFileError",
    "Head",
    "NoStoredEvents",
    "check",
    "checkpoint",
    "heads",
    "load_private_key",
    "load_public_key",
    "message",
    "parse",
    "public_pem",
    "read_file",
    "sign",
    "sign_head",
    "signature_holds",
    "signing_key_from_env",
    "stored_hash",
    "verification_key_from_env",
]
