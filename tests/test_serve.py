from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

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


def test_serve_with_no_options_uses_sqlite_in_working_directory(tmp_path: Path) -> None:
    port = Server("unused").port
    process = subprocess.Popen(
        [sys.executable, "-m", "eventhub_log.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
    )
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
