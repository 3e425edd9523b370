"""``eventhub-log token``: mint a signed token (contract section 6) for a client.

The command signs with the same key material the server verifies with, read the
same way (``EVENTHUB_AUTH_SECRET`` or a secret file for HS256, or a PEM private
key for RS256, ES256 and EdDSA, the algorithm following from the key), so a
token it prints is one the server accepts. Bad input is one line on stderr and
exit status 2, never a traceback: the command runs in scripts and in shells.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from .tokens import AuthKeyError, InvalidToken, grant_of, load_verification_key, mint_token

_TTL = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RIGHTS = ("publish", "subscribe", "history", "subscribers")


class UsageError(Exception):
    """Input the command cannot use; its message is printed as is."""


def parse_ttl(text: str) -> float | None:
    """``90s``, ``15m``, ``1h``, ``7d`` in seconds; ``never`` is ``None`` (no ``exp``)."""
    value = text.strip().lower()
    if value == "never":
        return None
    match = _TTL.match(value)
    if match is None or int(match.group(1)) == 0:
        raise UsageError(
            f"--ttl {text!r}: give a positive number with s, m, h or d (90s, 15m, 1h, 7d), or never"
        )
    return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def add_token_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser(
        "token",
        help="print a signed token for a client",
        description="Print a token signed with EVENTHUB_AUTH_SECRET (or --auth-secret-file, "
        "or --private-key). Each right takes topic selectors: an exact topic, or a pattern "
        "with * (room:*); {sub} stands for the token's sub.",
    )
    token.add_argument("--sub", required=True, help="who the token is (its sub claim)")
    for right in RIGHTS:
        token.add_argument(
            f"--{right}",
            action="append",
            default=[],
            metavar="SEL",
            help=f"a {right} selector (repeatable)"
            + (" (default: {sub} and {sub}:*)" if right == "subscribers" else ""),
        )
    token.add_argument("--admin", action="store_true", help="allow everything")
    token.add_argument(
        "--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d, or never (default 1h)"
    )
    keys = token.add_mutually_exclusive_group()
    keys.add_argument(
        "--auth-secret-file", metavar="PATH", help="read the HS256 secret from this file"
    )
    keys.add_argument(
        "--private-key", metavar="PATH", help="PEM private key: RS256, ES256 or EdDSA by its type"
    )


def run_token(args: argparse.Namespace) -> int:
    try:
        print(_mint(args))
    except (UsageError, AuthKeyError, InvalidToken) as exc:
        print(f"eventhub-log token: {exc}", file=sys.stderr)
        return 2
    return 0


def _mint(args: argparse.Namespace) -> str:
    sub = args.sub.strip()
    if not sub:
        raise UsageError("--sub must not be empty")
    ttl = parse_ttl(args.ttl)
    grant: dict[str, Any] = grant_of(
        {right: getattr(args, right) for right in RIGHTS}, admin=args.admin
    )
    if args.private_key is not None:
        token = mint_token(sub, grant, private_key_file=args.private_key, ttl=ttl)
    else:
        token = mint_token(sub, grant, secret=_secret(args.auth_secret_file), ttl=ttl)
    if ttl is None:
        # A token without exp is valid until the key changes: say so every time.
        print(
            "eventhub-log token: warning: --ttl never: this token does not expire; "
            "only changing the key revokes it",
            file=sys.stderr,
        )
    return token


def _secret(secret_file: str | None) -> str:
    if secret_file is not None:
        try:
            secret = Path(secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(
                f"cannot read the secret file {secret_file!r}: {exc.strerror}"
            ) from None
    else:
        secret = os.environ.get("EVENTHUB_AUTH_SECRET", "")
        if not secret:
            raise UsageError(
                "no key to sign with: set EVENTHUB_AUTH_SECRET, or give --auth-secret-file "
                "or --private-key"
            )
    # The server's own check, so that both refuse the same secrets in the same words.
    load_verification_key(secret=secret)
    return secret


__all__ = ["add_token_command", "parse_ttl", "run_token"]
