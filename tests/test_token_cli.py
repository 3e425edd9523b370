"""``eventhub-log token``: what it mints verifies with the server's own key loader."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from eventhub_log.cli import main
from eventhub_log.cli_token import parse_ttl
from eventhub_log.tokens import load_verification_key

SECRET = "s" * 32


def mint(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["token", *args]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count(".") == 2  # a JWS in compact form, nothing else on stdout
    return out


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["token", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_minted_token_carries_the_grant(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTHUB_AUTH_SECRET", SECRET)
    token = mint(
        capsys,
        "--sub",
        "alice",
        "--publish",
        "room:*",
        "--subscribe",
        "room:*",
        "--subscribe",
        "notifications:{sub}",
        "--history",
        "room:*",
        "--subscribers",
        "{sub}",
        "--ttl",
        "15m",
    )
    key = load_verification_key(secret=SECRET)
    assert key is not None
    claims = key.decode(token)
    assert claims["sub"] == "alice"
    assert claims["eventhub"] == {
        "publish": ["room:*"],
        "subscribe": ["room:*", "notifications:{sub}"],
        "history": ["room:*"],
        "subscribers": ["{sub}"],
    }
    assert abs(claims["exp"] - (time.time() + 900)) < 5


def test_admin_and_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTHUB_AUTH_SECRET", SECRET)
    key = load_verification_key(secret=SECRET)
    assert key is not None
    claims = key.decode(mint(capsys, "--sub", "ops", "--admin"))
    # Empty rights are left out: the server's default subscribers then apply.
    assert claims["eventhub"] == {"admin": True}
    assert abs(claims["exp"] - (time.time() + 3600)) < 5


def test_ttl_never_has_no_exp_and_warns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTHUB_AUTH_SECRET", SECRET)
    assert main(["token", "--sub", "svc", "--ttl", "never"]) == 0
    captured = capsys.readouterr()
    assert "does not expire" in captured.err
    key = load_verification_key(secret=SECRET)
    assert key is not None
    assert "exp" not in key.decode(captured.out.strip())


def test_secret_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")  # the trailing newline an editor adds is not the secret
    token = mint(capsys, "--sub", "bob", "--auth-secret-file", str(path))
    key = load_verification_key(secret_file=path)
    assert key is not None
    assert key.decode(token)["sub"] == "bob"


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ec"])
def test_private_key(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str) -> None:
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    private_file, public_file = tmp_path / "key.pem", tmp_path / "pub.pem"
    private_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    token = mint(capsys, "--sub", "carol", "--subscribe", "*", "--private-key", str(private_file))
    key = load_verification_key(public_key_file=public_file)
    assert key is not None
    assert key.algorithm == {"ed25519": "EdDSA", "rsa": "RS256", "ec": "ES256"}[kind]
    claims = key.decode(token)
    assert (claims["sub"], claims["eventhub"]) == ("carol", {"subscribe": ["*"]})


def test_bad_input_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("EVENTHUB_AUTH_SECRET", raising=False)
    assert "EVENTHUB_AUTH_SECRET" in refused(capsys, "--sub", "a")
    assert "cannot read" in refused(capsys, "--sub", "a", "--auth-secret-file", "/nonexistent")
    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("not a key")
    assert "private key" in refused(capsys, "--sub", "a", "--private-key", str(not_a_key))
    assert "private key" in refused(capsys, "--sub", "a", "--private-key", "/nonexistent")
    monkeypatch.setenv("EVENTHUB_AUTH_SECRET", "short")
    assert "at least 32" in refused(capsys, "--sub", "a")
    monkeypatch.setenv("EVENTHUB_AUTH_SECRET", SECRET)
    assert "--ttl" in refused(capsys, "--sub", "a", "--ttl", "1 hour")
    assert "--ttl" in refused(capsys, "--sub", "a", "--ttl", "0m")
    assert "--sub" in refused(capsys, "--sub", "")
    assert "--sub" in refused(capsys, "--sub", "   ")


def test_small_rsa_key_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "weak.pem"
    path.write_bytes(
        weak.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert "2048" in refused(capsys, "--sub", "a", "--private-key", str(path))


def test_no_traceback_from_the_real_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventhub_log.cli", "token", "--sub", "a"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("eventhub-log token: ")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 7 * 86400), ("never", None), ("2H", 7200)],
)
def test_parse_ttl(text: str, seconds: float | None) -> None:
    assert parse_ttl(text) == seconds
