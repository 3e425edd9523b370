from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from api.cli import is_loopback

from .server import Server


def test_ready_and_clean_sigterm(server: Server) -> None:
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready"
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    started = time.monotonic()
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete.
    assert server.stop(timeout=10) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 5


def test_unknown_route_uses_error_body(server: Server) -> None:
    response = httpx.get(f"{server.url}/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# The installed command (pip install -e . writes it from [project.scripts]).
EVENTHUB_LOG = str(Path(sys.executable).parent / "eventhub-log")


def test_serve_with_no_options_uses_sqlite_in_working_directory(tmp_path: Path) -> None:
    port = Server("unused").port
    process = subprocess.Popen([EVENTHUB_LOG, "serve", "--port", str(port)], cwd=tmp_path)
    try:
        probe = Server("unused", port=port, process=process)
        for _ in range(200):
            try:
                if httpx.get(f"{probe.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, "server exited early"
            time.sleep(0.05)
        assert httpx.get(f"{probe.url}/readyz").status_code == 200
        assert (tmp_path / "eventhub.db").exists()
    finally:
        process.kill()
        process.wait()


def test_migrate_command(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "eventhub_log.cli", "migrate", "--database-url", url],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "schema at revision" in result.stdout


def test_one_command_has_serve_and_the_library_commands() -> None:
    (script,) = entry_points(group="console_scripts", name="eventhub-log")
    # The app's module: the library never names the API (tests/test_layering.py).
    assert script.value == "api.cli:main", "stale install: run scripts/setup"
    result = subprocess.run([EVENTHUB_LOG, "--help"], capture_output=True, text=True, check=True)
    for command in ("serve", "migrate", "tail", "token", "publish", "export", "prune", "verify"):
        assert command in result.stdout


def test_the_library_alone_says_where_serve_is(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventhub_log.cli", "serve"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode == 2
    assert "not the library's: run the installed eventhub-log command" in result.stderr


# Contract section 6: an open hub binds loopback only --------------------------

SECRET = "k" * 32


def serve_env(**extra: str) -> dict[str, str]:
    """The environment with no key configured, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("EVENTHUB_AUTH_") and name != "EVENTHUB_HOST"
    }
    return {**env, "EVENTHUB_LOG_LEVEL": "warning", **extra}


def refused_serve(tmp_path: Path, *args: str, **env: str) -> str:
    """``serve`` that must exit 2 before binding anything; its one-line message."""
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--port", "1", *args],
        capture_output=True,
        text=True,
        env=serve_env(**env),
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "eventhub.db").exists()  # refused before the database was touched
    return result.stderr


def test_open_hub_on_a_public_address_is_refused(tmp_path: Path) -> None:
    message = refused_serve(tmp_path, "--host", "0.0.0.0")
    assert "EVENTHUB_AUTH_SECRET" in message
    assert "--insecure-no-auth" in message
    assert "EVENTHUB_AUTH_SECRET" in refused_serve(tmp_path, EVENTHUB_HOST="::")


def test_bad_keys_are_refused_before_starting(tmp_path: Path) -> None:
    assert "at least 32" in refused_serve(tmp_path, EVENTHUB_AUTH_SECRET="too-short")
    assert "cannot read" in refused_serve(tmp_path, "--auth-secret-file", str(tmp_path / "no"))
    assert "PEM public key" in refused_serve(tmp_path, EVENTHUB_AUTH_PUBLIC_KEY=__file__)
    both = refused_serve(
        tmp_path,
        EVENTHUB_AUTH_SECRET=SECRET,
        EVENTHUB_AUTH_PUBLIC_KEY=__file__,
    )
    assert "choose one" in both
    grant = refused_serve(tmp_path, EVENTHUB_AUTH_SECRET=SECRET, EVENTHUB_AUTH_ANONYMOUS="{nope")
    assert "EVENTHUB_AUTH_ANONYMOUS is not a grant object" in grant


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key in the environment ``Server`` passes on, whoever runs the tests."""
    for name in list(os.environ):
        if name.startswith("EVENTHUB_AUTH_") or name == "EVENTHUB_HOST":
            monkeypatch.delenv(name)


def start(tmp_path: Path, *args: str, **env: str) -> Server:
    return Server(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}", args=args, env=env).start()


@pytest.mark.usefixtures("no_key")
def test_public_address_with_a_secret_starts_and_needs_tokens(tmp_path: Path) -> None:
    server = start(tmp_path, "--host", "0.0.0.0", EVENTHUB_AUTH_SECRET=SECRET)
    try:
        assert httpx.get(f"{server.url}/v1/topics").status_code == 401
    finally:
        server.kill()


@pytest.mark.usefixtures("no_key")
def test_public_address_with_a_secret_file_starts(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    server = start(tmp_path, "--host", "0.0.0.0", "--auth-secret-file", str(secret_file))
    try:
        assert httpx.get(f"{server.url}/v1/topics").status_code == 401
    finally:
        server.kill()


@pytest.mark.usefixtures("no_key")
def test_insecure_no_auth_starts_an_open_hub(tmp_path: Path) -> None:
    server = start(tmp_path, "--host", "0.0.0.0", "--insecure-no-auth")
    try:
        assert httpx.get(f"{server.url}/v1/topics").status_code == 200
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
