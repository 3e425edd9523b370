"""Fuzzing every REST route from the app's own OpenAPI document (contract section 7:
a bad request never gets a 5xx, whatever its shape).

Schemathesis generates requests from ``/openapi.json`` of a real ``eventhub-log
serve`` (with a key, on both databases): valid ones and ones that break the
documented schema, with an admin token so that they get past authentication to
the handlers, and a share with no token at all. Every answer must be below 500,
every error must carry the contract's body, and every answer schemathesis can
check must fit the document. The endless streams (``GET /v1/stream``, the
WebSocket) are left out: a request to them never ends.

The fuzzer is told the documented naming rules (a pattern for topic names and
subscriber ids, ``date-time`` for ``since``/``until``), so that most valid-mode
requests name real topics and reach the database, and the same few topics
collect events, subscriptions and history; its invalid mode still breaks them.

How many cases: with ``CI`` set, at least 1,000 on SQLite and 400 more on
PostgreSQL (whose requests are slower); locally 200 and 100, or
``EVENTHUB_FUZZ_CASES`` for SQLite (CI never runs fewer than the 1,000).

Random text seldom holds a NUL, the one character PostgreSQL text cannot store,
so a second test puts one in every string parameter and body field by hand.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from eventhub_log.tokens import mint_token

from .server import Server

SECRET = "fuzz-secret-" + "x" * 32
_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_ASKED = int(os.environ.get("EVENTHUB_FUZZ_CASES", "0") or 0)
FUZZ_CASES = {
    "sqlite": max(_ASKED, 1000) if _CI else (_ASKED or 200),
    "postgres": 400 if _CI else 100,
}
# Of them, requests without a token: they stop at authentication, so fewer do.
ANONYMOUS_SHARE = 0.1
# Routes whose answer never ends: a stream stays open until the client leaves.
STREAMING = ("/v1/stream", "/v1/ws")

# Subsets of the contract's rules (section 2), small enough that generated
# names collide: the same topics get events, subscribers and history.
TOPIC_PATTERN = (
    r"^(room:[a-c]|orders/[0-9]|user:[0-9]{1,3}"
    r"|[A-Za-z0-9_@:-]{1,40}(/[A-Za-z0-9_@:-]{1,12}){0,2})$"
)
SUBSCRIBER_PATTERN = r"^(alice|bob|[A-Za-z0-9_:-]{1,40})$"


def documented_rules(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the naming rules and time format of the contract added to its
    parameters, where the document says only "string"."""
    for item in spec["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                name = parameter["name"]
                if parameter["in"] == "path" and name == "topic":
                    schema["pattern"] = TOPIC_PATTERN
                elif parameter["in"] == "path" and name == "subscriber":
                    schema["pattern"] = SUBSCRIBER_PATTERN
                elif name in ("since", "until"):
                    for option in schema.get("anyOf", [schema]):
                        if option.get("type") == "string":
                            option["format"] = "date-time"
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                _name_rules(body["schema"])
    return spec


def _name_rules(schema: dict[str, Any]) -> None:
    properties = schema.get("properties", {})
    if properties.get("topic", {}).get("type") == "string":
        properties["topic"]["pattern"] = TOPIC_PATTERN
    for value in properties.values():
        if isinstance(value, dict):
            _name_rules(value)
            if isinstance(value.get("items"), dict):
                _name_rules(value["items"])


def bearer(sub: str) -> dict[str, str]:
    """The header of an admin token of ``sub``."""
    return {"Authorization": "Bearer " + mint_token(sub, {"admin": True}, secret=SECRET, ttl=3600)}


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return sum(self.statuses.values())


def _error_body_problem(response: schemathesis.Response) -> str | None:
    """What is wrong with a 4xx/5xx body, measured against the contract's shape."""
    try:
        body = response.json()
    except ValueError:
        return f"error body is not JSON: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    ):
        return f'error body is not {{"error": {{"code", "message"}}}}: {response.text[:200]!r}'
    return None


def _send(case: Case[Any], base_url: str, session: requests.Session, tally: Tally) -> None:
    label = case.operation.label
    try:
        response = case.call(base_url=base_url, session=session, timeout=15)
    except requests.RequestException as exc:
        # The server hung up or stalled: as bad as a 5xx.
        tally.failures.append(f"{label}: no answer ({exc!r})\n    {case.as_curl_command()}")
        tally.statuses[(label, 0)] += 1
        return
    tally.statuses[(label, response.status_code)] += 1
    problems = []
    try:
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
    except Exception as exc:  # schemathesis' FailureGroup, with its own report
        problems.append(str(exc).strip()[:1500])
    if response.status_code >= 400 and (problem := _error_body_problem(response)):
        problems.append(problem)
    if problems:
        tally.failures.append(
            f"{label} -> {response.status_code}\n    {case.as_curl_command()}\n    "
            + "\n    ".join(problems)
        )


def operations_of(
    schema: schemathesis.BaseSchema,
) -> list[schemathesis.APIOperation[Any, Any, Any, Any]]:
    return [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]


def fuzz(
    schema: schemathesis.BaseSchema,
    base_url: str,
    session: requests.Session,
    tally: Tally,
    target: int,
) -> None:
    """Run generated cases of every operation until ``target`` more have been sent."""
    runs = [
        (operation, mode)
        for operation in operations_of(schema)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        # With no parameter nor body there is nothing to break.
        if mode is GenerationMode.POSITIVE
        or operation.definition.raw.get("parameters")
        or operation.body
    ]
    wanted = tally.cases + target
    rounds = 0
    while tally.cases < wanted:
        rounds += 1
        assert rounds <= 10, "the generators ran dry before enough cases were sent"
        per_run = math.ceil((wanted - tally.cases) / len(runs)) + 2
        for operation, mode in runs:
            strategy = operation.as_strategy(generation_mode=mode)
            _run(strategy, per_run, base_url, session, tally)


def _run(
    strategy: st.SearchStrategy[Case[Any]],
    examples: int,
    base_url: str,
    session: requests.Session,
    tally: Tally,
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Case[Any]) -> None:
        _send(case, base_url, session, tally)

    run()


@pytest.fixture
def fuzzed(database_url: str, tmp_path: Path) -> Iterator[Server]:
    # A checkpoint key too, so that the checkpoint routes answer rather than 404.
    audit_key = tmp_path / "audit.pem"
    audit_key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {"EVENTHUB_AUTH_SECRET": SECRET, "EVENTHUB_AUDIT_KEY": str(audit_key)}
    running = Server(database_url, env=env).start()
    yield running
    running.kill()


def test_no_generated_request_gets_a_5xx(fuzzed: Server, backend: str) -> None:
    cases = FUZZ_CASES[backend]
    spec = requests.get(f"{fuzzed.url}/openapi.json", timeout=10).json()
    endless = [path for path in spec["paths"] if path in STREAMING or "stream" in path]
    schema: schemathesis.BaseSchema = schemathesis.openapi.from_dict(documented_rules(spec))
    for path in endless:
        schema = schema.exclude(path=path)
    tally = Tally()
    started = time.monotonic()
    with requests.Session() as admin:
        admin.headers.update(bearer("fuzzer"))
        fuzz(schema, fuzzed.url, admin, tally, round(cases * (1 - ANONYMOUS_SHARE)))
    reached = {label for (label, status), _ in tally.statuses.items() if status < 300}
    with requests.Session() as anonymous:
        fuzz(schema, fuzzed.url, anonymous, tally, round(cases * ANONYMOUS_SHARE))
    elapsed = time.monotonic() - started

    summary = json.dumps(
        {f"{label} {status}": count for (label, status), count in sorted(tally.statuses.items())},
        indent=1,
    )
    print(f"{tally.cases} cases in {elapsed:.1f}s\n{summary}")
    assert not tally.failures, (
        f"{len(tally.failures)} of {tally.cases} requests answered wrongly:\n\n"
        + "\n\n".join(tally.failures[:20])
    )
    assert tally.cases >= cases
    # The fuzz was worth something: with the admin token every route was reached
    # and answered successfully at least once, not refused at the door every time.
    labels = {operation.label for operation in operations_of(schema)}
    assert labels - reached == set(), summary
    assert not any(path in labels for path in STREAMING)


NUL = "a\x00b"
# Valid values for the parameters not under test.
VALID = {"topic": "room:a", "subscriber": "alice"}
BODIES: dict[str, dict[str, Any]] = {
    "/v1/topics/{topic}/events": {"payload": 1},
    "/v1/events": {"events": [{"topic": "room:a", "payload": 1}]},
}


def _is_text(schema: dict[str, Any]) -> bool:
    return any(option.get("type") == "string" for option in schema.get("anyOf", [schema]))


def test_a_nul_anywhere_is_a_4xx_and_writes_nothing(fuzzed: Server) -> None:
    """PostgreSQL text cannot hold NUL: one that reaches a query fails it there (a
    5xx), and SQLite would store what PostgreSQL refuses. Every string parameter
    and body field of every route gets one; each answer is a 400 or 422."""
    spec = requests.get(f"{fuzzed.url}/openapi.json", timeout=10).json()
    answers: dict[str, tuple[int, str]] = {}
    with httpx.Client(base_url=fuzzed.url, timeout=10, headers=bearer("fuzzer")) as client:
        client.post("/v1/topics/room:a/events", json={"payload": "before"}).raise_for_status()
        before = client.get("/v1/topics").json()
        for template, item in spec["paths"].items():
            if template in STREAMING:
                continue
            for method, operation in item.items():
                body: dict[str, Any] | None = BODIES.get(template) if method == "post" else None
                parameters = [
                    parameter
                    for parameter in operation.get("parameters", [])
                    if parameter["in"] in ("path", "query") and _is_text(parameter["schema"])
                ]
                tries: list[tuple[str, dict[str, str], dict[str, Any] | None]] = []
                for parameter in parameters:
                    path_values = {**VALID}
                    query: dict[str, str] = {}
                    if parameter["in"] == "path":
                        path_values[parameter["name"]] = NUL
                    else:
                        query[parameter["name"]] = NUL
                    path = template.format(
                        **{k: quote(v, safe=":") for k, v in path_values.items()}
                    )
                    tries.append((path, query, body))
                for field_path in _text_fields(body):
                    tries.append((template.format(**VALID), {}, _with_nul(body, field_path)))
                for path, query, sent in tries:
                    response = client.request(method, path, params=query, json=sent)
                    answers[f"{method.upper()} {path} {query} {sent}"] = (
                        response.status_code,
                        response.text[:200],
                    )
        wrong = {what: answer for what, answer in answers.items() if answer[0] not in (400, 422)}
        assert len(answers) >= 15, answers  # the sweep found the parameters
        assert not wrong, wrong

        # A token whose sub holds a NUL: its publishes are refused, not failed.
        with httpx.Client(base_url=fuzzed.url, timeout=10, headers=bearer(NUL)) as odd:
            for path, body in (
                ("/v1/topics/room:a/events", BODIES["/v1/topics/{topic}/events"]),
                ("/v1/events", BODIES["/v1/events"]),
            ):
                for headers in ({}, {"Idempotency-Key": "nul-publisher"}):
                    response = odd.post(path, json=body, headers=headers)
                    assert response.status_code == 400, response.text
                    assert response.json()["error"]["code"] == "invalid_request"
                    assert "NUL" in response.json()["error"]["message"]
        assert client.get("/v1/topics").json() == before


def _text_fields(body: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Where ``body`` holds a topic or subscriber id (its text fields but payloads)."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key != "payload":
                yield from _text_fields(value, (*at, key))
        if "payload" in body:
            yield (*at, "exclude")  # absent: null, a text field all the same
    elif isinstance(body, list):
        for index, value in enumerate(body):
            yield from _text_fields(value, (*at, index))
    elif isinstance(body, str):
        yield at


def _with_nul(body: Any, where: tuple[Any, ...]) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(body))
    node: Any = copy
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = NUL
    return copy
