"""Signed checkpoints (contract section 8), on SQLite and PostgreSQL: the REST
checkpoint checked here from the contract's text with ``cryptography`` itself,
``eventhub-log checkpoint`` and ``verify --checkpoint``, which catches a rewrite
that recomputed every later hash (plain verify cannot), and the offline script.
Hashes of rewritten rows come from tests/hashes.py, not the project."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import text

from eventhub_log import EventHub
from eventhub_log.cli_operator import _destination
from eventhub_log.retention import prune

from . import hashes
from .server import Server

ROOT = Path(__file__).resolve().parent.parent


def write_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key


def write_public(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def contract_message(checkpoint: dict[str, Any]) -> bytes:
    """Section 8's signed text, written out from the contract."""
    return (
        "eventhub-log checkpoint v1\n"
        + checkpoint["topic"]
        + "\n"
        + str(checkpoint["seq"])
        + "\n"
        + checkpoint["hash"]
        + "\n"
        + checkpoint["signed_at"]
    ).encode("utf-8")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTHUB_AUDIT")}
    return {**env, **extra}


async def acli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``cli`` from an async test: in a thread, so that the test's own hub keeps
    its event loop. A blocked loop can leave one of the hub's SQLite write
    transactions open, and the command then waits out the busy timeout."""
    return await asyncio.to_thread(cli, *args, **env)


def cli(
    *args: str, module: str = "eventhub_log.cli", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=clean_env(**env),
    )


def url_of(hub: EventHub) -> str:
    return str(hub.database.engine.url.render_as_string(hide_password=False))


async def rewrite_consistently(hub: EventHub, topic: str, seq: int, payload: Any) -> None:
    """Change one payload and recompute every later hash, straight in the database:
    what someone with write access and the contract would do."""
    events = [event.to_dict() for event in await hub.history(topic, limit=1000)]
    index = next(i for i, e in enumerate(events) if e["seq"] == seq)
    events[index]["payload"] = payload
    prev = events[index - 1]["hash"] if index else hashes.ZEROS
    new_hashes = hashes.chain(events[index:], prev)
    async with hub.database.engine.begin() as conn:
        for event, digest in zip(events[index:], new_hashes, strict=True):
            await conn.execute(
                text("UPDATE events SET payload = :p, hash = :h WHERE topic = :t AND seq = :s"),
                {
                    "p": json.dumps(event["payload"], separators=(",", ":")),
                    "h": digest,
                    "t": topic,
                    "s": event["seq"],
                },
            )


async def test_a_consistent_rewrite_passes_verify_but_not_a_kept_checkpoint(
    hub: EventHub, tmp_path: Path
) -> None:
    key_path = tmp_path / "audit-key.pem"
    key = write_key(key_path)
    public = write_public(key, tmp_path / "audit-public.pem")
    for n in range(1, 11):
        await hub.publish("room:a", None, {"n": n, "text": "héllo \u2028"})
    await hub.publish("room:b", None, "other")
    url = url_of(hub)

    made = await acli("checkpoint", "--database-url", url, EVENTHUB_AUDIT_KEY=str(key_path))
    assert made.returncode == 0, made.stderr
    kept = tmp_path / "checkpoints.json"
    kept.write_text(made.stdout)
    lines = [json.loads(line) for line in made.stdout.splitlines()]
    assert [(c["topic"], c["seq"]) for c in lines] == [("room:a", 10), ("room:b", 1)]
    history = await hub.history("room:a")
    assert lines[0]["hash"] == history[-1].hash
    for checkpoint in lines:  # the contract's message, checked with cryptography itself
        assert set(checkpoint) == {"topic", "seq", "hash", "signed_at", "signature"}
        key.public_key().verify(
            base64.b64decode(checkpoint["signature"]), contract_message(checkpoint)
        )

    holds = await acli(
        "verify",
        "--checkpoint",
        str(kept),
        "--database-url",
        url,
        EVENTHUB_AUDIT_PUBLIC_KEY=str(public),
    )
    assert holds.returncode == 0, holds.stdout + holds.stderr
    assert holds.stdout.count(": ok") == 4  # two topics, two checkpoints
    assert holds.stderr == ""  # no progress bar when stderr is not a terminal
    # The private key's public half serves as well.
    with_private = await acli(
        "verify", "--checkpoint", str(kept), "--database-url", url, EVENTHUB_AUDIT_KEY=str(key_path)
    )
    assert with_private.returncode == 0, with_private.stdout + with_private.stderr

    await rewrite_consistently(hub, "room:a", 4, {"n": 4, "text": "rewritten"})
    plain = await acli("verify", "--database-url", url)
    assert plain.returncode == 0, plain.stdout  # the chain alone cannot tell
    assert "room:a: ok" in plain.stdout
    caught = await acli(
        "verify",
        "--checkpoint",
        str(kept),
        "--database-url",
        url,
        EVENTHUB_AUDIT_PUBLIC_KEY=str(public),
    )
    assert caught.returncode == 1
    assert "Traceback" not in caught.stderr
    assert "checkpoint room:a seq 10" in caught.stdout
    assert "rewritten" in caught.stdout
    (line_b,) = [line for line in caught.stdout.splitlines() if "checkpoint room:b" in line]
    assert "): ok: holds" in line_b  # another topic: its checkpoint still holds
    # --topic narrows the chains verified; the checkpoint's topic is still checked.
    only_b = await acli(
        "verify",
        "--topic",
        "room:b",
        "--checkpoint",
        str(kept),
        "--database-url",
        url,
        EVENTHUB_AUDIT_PUBLIC_KEY=str(public),
    )
    assert only_b.returncode == 1
    assert "room:a seq 10" in only_b.stdout


async def test_bad_signature_pruned_seq_and_bad_files_exit_1_without_a_traceback(
    hub: EventHub, tmp_path: Path
) -> None:
    key_path = tmp_path / "audit-key.pem"
    key = write_key(key_path)
    public = write_public(key, tmp_path / "audit-public.pem")
    for n in range(1, 6):
        await hub.publish("t", None, n)
    url = url_of(hub)
    made = await acli(
        "checkpoint", "--topic", "t", "--database-url", url, EVENTHUB_AUDIT_KEY=str(key_path)
    )
    assert made.returncode == 0, made.stderr
    good = json.loads(made.stdout)
    assert good["seq"] == 5

    async def verify(*files: Path, **env: str) -> subprocess.CompletedProcess[str]:
        options = [item for f in files for item in ("--checkpoint", str(f))]
        result = await acli("verify", *options, "--database-url", url, **env)
        assert "Traceback" not in result.stderr + result.stdout
        return result

    # Accepted shapes: one object, a JSON array, one object a line.
    single, array = tmp_path / "one.json", tmp_path / "list.json"
    single.write_text(json.dumps(good, indent=2))
    array.write_text(json.dumps([good, good]))
    ok = await verify(single, array, EVENTHUB_AUDIT_PUBLIC_KEY=str(public))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    other = write_key(tmp_path / "other-key.pem")
    wrong_key = await verify(
        single, EVENTHUB_AUDIT_PUBLIC_KEY=str(write_public(other, tmp_path / "o"))
    )
    assert wrong_key.returncode == 1
    assert "bad signature" in wrong_key.stdout
    flipped = dict(good, signature=base64.b64encode(bytes(64)).decode())
    moved = dict(good, seq=4)  # a real seq, but not what was signed
    for n, forged in enumerate((flipped, moved, dict(good, signature="not base64!"))):
        path = tmp_path / f"forged-{n}.json"
        path.write_text(json.dumps(forged))
        result = await verify(path, EVENTHUB_AUDIT_PUBLIC_KEY=str(public))
        assert result.returncode == 1, forged
        assert "bad signature" in result.stdout

    for name, content in (
        ("garbage.json", "this is not json\n"),
        ("half.json", '{"topic": "t", "seq": 5'),
        ("binary.json", "\udcff"),
        ("wrong.json", '{"topic": "t"}'),
        ("empty.json", ""),
    ):
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8", "surrogateescape"))
        result = await verify(path, EVENTHUB_AUDIT_PUBLIC_KEY=str(public))
        assert result.returncode == 1, name
        assert name in result.stdout
    missing = await verify(tmp_path / "absent.json", EVENTHUB_AUDIT_PUBLIC_KEY=str(public))
    assert missing.returncode == 1
    assert "cannot read" in missing.stdout

    no_key = await verify(single)
    assert no_key.returncode == 2
    assert "EVENTHUB_AUDIT_PUBLIC_KEY" in no_key.stderr
    bad_key = await verify(single, EVENTHUB_AUDIT_PUBLIC_KEY=str(tmp_path / "garbage.json"))
    assert bad_key.returncode == 2
    assert "not a PEM public key" in bad_key.stderr

    await hub.publish("t", None, 6)
    await prune(hub.database, keep=1, topics=["t"])  # seq 5 goes
    gone = await verify(single, EVENTHUB_AUDIT_PUBLIC_KEY=str(public))
    assert gone.returncode == 1
    assert "no longer stored" in gone.stdout

    # Every event pruned: nothing to checkpoint; named, that is exit 1.
    await prune(hub.database, keep=0, topics=["t"])
    empty = await acli(
        "checkpoint", "--topic", "t", "--database-url", url, EVENTHUB_AUDIT_KEY=str(key_path)
    )
    assert (empty.returncode, empty.stdout) == (1, "")
    assert "no stored event" in empty.stderr
    unknown = await acli(
        "checkpoint", "--topic", "nope", "--database-url", url, EVENTHUB_AUDIT_KEY=str(key_path)
    )
    assert unknown.returncode == 1
    assert "no such topic" in unknown.stderr
    no_signing_key = await acli("checkpoint", "--database-url", url)
    assert no_signing_key.returncode == 2
    assert "EVENTHUB_AUDIT_KEY" in no_signing_key.stderr


async def test_rest_checkpoint_is_signed_as_the_contract_says(
    database_url: str, tmp_path: Path
) -> None:
    key = write_key(tmp_path / "audit-key.pem")
    server = Server(database_url, env={"EVENTHUB_AUDIT_KEY": str(tmp_path / "audit-key.pem")})
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for n in range(3):
                sent = await client.post("/v1/topics/room:lobby/events", json={"payload": n})
                assert sent.status_code == 201
            answer = await client.get("/v1/topics/room:lobby/checkpoint")
            assert answer.status_code == 200, answer.text
            checkpoint = answer.json()
            assert list(checkpoint) == ["topic", "seq", "hash", "signed_at", "signature"]
            history = (await client.get("/v1/topics/room:lobby/events")).json()["events"]
            assert (checkpoint["topic"], checkpoint["seq"]) == ("room:lobby", 3)
            assert checkpoint["hash"] == history[-1]["hash"]
            assert checkpoint["signed_at"].endswith("Z")
            signature = base64.b64decode(checkpoint["signature"], validate=True)
            key.public_key().verify(signature, contract_message(checkpoint))

            pem = await client.get("/v1/audit/public-key")
            assert pem.status_code == 200
            served = serialization.load_pem_public_key(pem.content)
            assert isinstance(served, Ed25519PublicKey)
            served.verify(signature, contract_message(checkpoint))

            unknown = await client.get("/v1/topics/room:none/checkpoint")
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "unknown_topic"
            invalid = await client.get("/v1/topics/bad%20name/checkpoint")
            assert invalid.status_code == 400

            # A REST checkpoint is a checkpoint file for the CLI too.
            kept = tmp_path / "rest.json"
            kept.write_text(answer.text)
            checked = await acli(
                "verify",
                "--checkpoint",
                str(kept),
                "--database-url",
                database_url,
                EVENTHUB_AUDIT_KEY=str(tmp_path / "audit-key.pem"),
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        server.kill()

    plain = Server(database_url, env=clean_env()).start()
    try:
        async with httpx.AsyncClient(base_url=plain.url) as client:
            for path in ("/v1/topics/room:lobby/checkpoint", "/v1/audit/public-key"):
                disabled = await client.get(path)
                assert disabled.status_code == 404
                assert disabled.json()["error"]["code"] == "checkpoints_disabled"
    finally:
        plain.kill()


def test_serve_refuses_a_bad_audit_key_with_its_reason(tmp_path: Path) -> None:
    not_ed25519 = tmp_path / "ec.pem"
    not_ed25519.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "junk.pem").write_text("junk")
    url = f"sqlite+aiosqlite:///{tmp_path / 'e.db'}"
    for path, words in (
        (not_ed25519, "Ed25519"),
        (tmp_path / "junk.pem", "not a PEM private key"),
        (tmp_path / "missing.pem", "cannot read"),
    ):
        result = cli(
            "serve",
            "--port",
            "0",
            "--database-url",
            url,
            module="api.cli",
            EVENTHUB_AUDIT_KEY=str(path),
        )
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        assert "EVENTHUB_AUDIT_KEY" in result.stderr
        assert words in result.stderr


def verify_export(*args: str) -> subprocess.CompletedProcess[str]:
    script = ROOT / "examples" / "verify_export.py"
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60
    )


async def test_the_standalone_script_checks_an_export_against_a_checkpoint(
    hub: EventHub, tmp_path: Path
) -> None:
    key_path = tmp_path / "audit-key.pem"
    key = write_key(key_path)
    public = write_public(key, tmp_path / "audit-public.pem")
    for n in range(6):
        await hub.publish("room:x", None, {"n": n, "s": 'ü\n"q"'})
    await hub.publish("room:y", "ch-1", [1.5, None])
    url = url_of(hub)
    made = await acli("checkpoint", "--database-url", url, EVENTHUB_AUDIT_KEY=str(key_path))
    assert made.returncode == 0, made.stderr
    kept = tmp_path / "checkpoints.json"
    kept.write_text(made.stdout)
    await hub.publish("room:x", None, "after the checkpoint")

    export = tmp_path / "export.ndjson"
    parts = []
    for topic in ("room:x", "room:y"):
        out = tmp_path / f"{topic}.ndjson"
        run = await acli("export", topic, "--output", str(out), "--database-url", url)
        assert run.returncode == 0, run.stderr
        assert run.stdout == ""  # the events went to the file
        assert run.stderr == ""  # and no bar: stderr is not a terminal
        parts.append(out.read_text())
    export.write_text("".join(parts))
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]

    good = verify_export(str(export), "--checkpoint", str(kept), "--public-key", str(public))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "checkpoint room:x seq 6: ok" in good.stdout
    assert "checkpoint room:y seq 1: ok" in good.stdout
    assert verify_export(str(export), "--checkpoint", str(kept)).returncode == 2

    # The same consistent rewrite, in the export: every hash recomputed.
    events = [json.loads(line) for line in export.read_text().splitlines()]
    xs = [e for e in events if e["topic"] == "room:x"]
    xs[2]["payload"] = {"n": 2, "s": "rewritten"}
    for event, digest in zip(xs[2:], hashes.chain(xs[2:], xs[1]["hash"]), strict=True):
        event["hash"] = digest
    rewritten = tmp_path / "rewritten.ndjson"
    rewritten.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert verify_export(str(rewritten)).returncode == 0  # the chain alone holds
    caught = verify_export(str(rewritten), "--checkpoint", str(kept), "--public-key", str(public))
    assert caught.returncode == 1
    assert "checkpoint room:x seq 6: FAILED" in caught.stdout
    assert "rewritten" in caught.stdout

    other = write_public(Ed25519PrivateKey.generate(), tmp_path / "other.pem")
    forged = verify_export(str(export), "--checkpoint", str(kept), "--public-key", str(other))
    assert forged.returncode == 1
    assert "bad signature" in forged.stdout


async def test_export_output_is_all_or_nothing_and_shows_progress_on_a_terminal(
    hub: EventHub, tmp_path: Path
) -> None:
    await hub.publish_many([("t", None, n) for n in range(2505)])
    url = url_of(hub)
    target = tmp_path / "t.ndjson"
    target.write_text("the previous export\n")
    # A failure leaves the old file as it was, and no temporary beside it: one
    # before any event (no database there), and one halfway through the writing.
    nowhere = "postgresql+asyncpg://postgres@127.0.0.1:1/none"
    failed = await acli("export", "t", "--output", str(target), "--database-url", nowhere)
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr
    with pytest.raises(RuntimeError):
        write_half(target)
    assert target.read_text() == "the previous export\n"
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []

    bar = run_on_terminal(
        [sys.executable, "-m", "eventhub_log.cli", "export", "t", "--output", str(target),
         "--database-url", url]
    )  # fmt: skip
    assert bar.returncode == 0
    assert len(target.read_text().splitlines()) == 2505
    assert "export" in bar.stderr
    assert "/2505 " in bar.stderr  # the total, from the topic
    verified = run_on_terminal(
        [sys.executable, "-m", "eventhub_log.cli", "verify", "--database-url", url]
    )
    assert verified.returncode == 0
    assert "verify" in verified.stderr
    assert "t: ok" in verified.stdout


def write_half(target: Path) -> None:
    with _destination(str(target)) as out:
        out.write("half an export\n")
        out.flush()
        raise RuntimeError("the database went away")


def run_on_terminal(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` with standard error on a pseudo-terminal (80 columns), stdout piped."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        done = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=slave, timeout=60, cwd=ROOT, env=clean_env()
        )
    finally:
        os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return subprocess.CompletedProcess(
        argv, done.returncode, done.stdout.decode(), seen.decode(errors="replace")
    )
