"""SERVICE_CHECK_* → Consul check definitions, and the Go durations they take."""

from __future__ import annotations

import pytest

from registrator.checks import (
    ChecksResult,
    Target,
    build_checks,
    check_id,
    is_duration,
    script_command,
    with_service_address,
)
from registrator.labels import service_metadata
from registrator.model import CheckKind
from registrator.settings import Settings
from tests.unit.builders import make_container

SERVICE_ID = "node1:web-1:80"
TARGET = Target("10.0.0.5", 8080)
HTTP_URL = "http://10.0.0.5:8080/health"


def build(
    labels: dict[str, str],
    *,
    env: dict[str, str] | None = None,
    health: str | None = None,
    docker_health: bool = True,
    initial: str = "critical",
    ttl: int = 0,
    target: Target = TARGET,
    node_heartbeat: str = "",
    node_reap_after: int = 0,
) -> ChecksResult:
    container = make_container(labels=labels, env=env or {}, health=health)
    return build_checks(
        service_metadata(container, 80),
        SERVICE_ID,
        target,
        container,
        Settings(
            docker_health=docker_health,
            docker_health_initial=initial,
            ttl=ttl,
            node_reap_after=node_reap_after,
        ),
        node_heartbeat=node_heartbeat,
    )


def by_kind(result: ChecksResult) -> dict[str, dict[str, object]]:
    prefix = f"service:{SERVICE_ID}:"
    assert all(check.check_id.startswith(prefix) for check in result.checks)
    return {check.check_id[len(prefix) :]: dict(check.fields) for check in result.checks}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/health"},
            {"HTTP": HTTP_URL},
            id="HTTP path on the registered address",
        ),
        pytest.param({"SERVICE_CHECK_HTTP": "health"}, {"HTTP": HTTP_URL}, id="path without /"),
        pytest.param(
            {"SERVICE_CHECK_HTTP": "http://other:9000/x?y=1"},
            {"HTTP": "http://other:9000/x?y=1"},
            id="full URL kept",
        ),
        pytest.param(
            {"SERVICE_CHECK_HTTP": "https://other/x"},
            {"HTTP": "https://other/x"},
            id="HTTP key with an https URL",
        ),
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_HTTP_METHOD": "head"},
            {"HTTP": HTTP_URL, "Method": "HEAD"},
            id="method upper-cased",
        ),
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_METHOD": "POST"},
            {"HTTP": HTTP_URL, "Method": "POST"},
            id="generic method",
        ),
        pytest.param(
            {
                "SERVICE_CHECK_HTTP": "/health",
                "SERVICE_CHECK_HEADER": '{"X-A": "1", "X-B": ["2", "3"]}',
            },
            {"HTTP": HTTP_URL, "Header": {"X-A": ["1"], "X-B": ["2", "3"]}},
            id="JSON header",
        ),
        pytest.param(
            {
                "SERVICE_CHECK_HTTP": "/health",
                "SERVICE_CHECK_HEADER": "Authorization: Bearer a:b; X-Trace: 1\nX-Trace: 2",
            },
            {
                "HTTP": HTTP_URL,
                "Header": {"Authorization": ["Bearer a:b"], "X-Trace": ["1", "2"]},
            },
            id="Name: value header lines",
        ),
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_BODY": '{"ping": 1}'},
            {"HTTP": HTTP_URL, "Body": '{"ping": 1}'},
            id="body",
        ),
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_TLS_SKIP_VERIFY": "true"},
            {"HTTP": HTTP_URL, "TLSSkipVerify": True},
            id="TLS skip verify",
        ),
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_TLS_SKIP_VERIFY": "false"},
            {"HTTP": HTTP_URL},
            id="TLS skip verify false",
        ),
        pytest.param(
            {
                "SERVICE_CHECK_HTTP": "/health",
                "SERVICE_CHECK_INTERVAL": "5s",
                "SERVICE_CHECK_TIMEOUT": "2s",
                "SERVICE_CHECK_DEREGISTER_AFTER": "1m30s",
            },
            {
                "HTTP": HTTP_URL,
                "Interval": "5s",
                "Timeout": "2s",
                "DeregisterCriticalServiceAfter": "1m30s",
            },
            id="interval, timeout, deregister after",
        ),
        pytest.param(
            {
                "SERVICE_CHECK_HTTP": "/health",
                "SERVICE_CHECK_SUCCESS_BEFORE_PASSING": "2",
                "SERVICE_CHECK_FAILURES_BEFORE_CRITICAL": "3",
                "SERVICE_CHECK_INITIAL_STATUS": "Passing",
            },
            {
                "HTTP": HTTP_URL,
                "SuccessBeforePassing": 2,
                "FailuresBeforeCritical": 3,
                "Status": "passing",
            },
            id="thresholds and initial status",
        ),
    ],
)
def test_http_check(labels: dict[str, str], expected: dict[str, object]) -> None:
    result = build(labels)
    assert result.problems == ()
    assert by_kind(result) == {"http": {"Interval": "10s", **expected}}
    assert result.checks[0].name == f"HTTP {expected['HTTP']}"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param(
            {"SERVICE_CHECK_HTTPS": "/health"},
            {"HTTP": "https://10.0.0.5:8080/health"},
            id="HTTPS path",
        ),
        pytest.param(
            {
                "SERVICE_CHECK_HTTPS": "/health",
                "SERVICE_CHECK_HTTPS_METHOD": "put",
                "SERVICE_CHECK_METHOD": "post",
                "SERVICE_CHECK_HTTPS_HEADER": "X-Only: https",
                "SERVICE_CHECK_HEADER": "X-Generic: 1",
                "SERVICE_CHECK_HTTPS_BODY": "b",
                "SERVICE_CHECK_BODY": "generic",
            },
            {
                "HTTP": "https://10.0.0.5:8080/health",
                "Method": "PUT",
                "Header": {"X-Only": ["https"]},
                "Body": "b",
            },
            id="HTTPS-specific keys beat the generic ones",
        ),
    ],
)
def test_https_check(labels: dict[str, str], expected: dict[str, object]) -> None:
    result = build(labels)
    assert result.problems == ()
    assert by_kind(result) == {"https": {"Interval": "10s", **expected}}


def test_ipv6_target_is_bracketed() -> None:
    result = build(
        {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_TCP": "true"}, target=Target("fd00::5", 80)
    )
    checks = by_kind(result)
    assert checks["http"]["HTTP"] == "http://[fd00::5]:80/h"
    assert checks["tcp"]["TCP"] == "[fd00::5]:80"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param({"SERVICE_CHECK_TCP": "true"}, {"tcp": {"TCP": "10.0.0.5:8080"}}, id="TCP"),
        pytest.param({"SERVICE_CHECK_TCP": "1"}, {"tcp": {"TCP": "10.0.0.5:8080"}}, id="TCP 1"),
        pytest.param(
            {"SERVICE_CHECK_TCP": "db.internal:5432"},
            {"tcp": {"TCP": "db.internal:5432"}},
            id="TCP host:port",
        ),
        pytest.param({"SERVICE_CHECK_TCP": "false"}, {}, id="TCP false"),
        # The same false words as options: `off` creates no check (it used to create one).
        pytest.param({"SERVICE_CHECK_TCP": "off"}, {}, id="TCP off"),
        pytest.param({"SERVICE_CHECK_TCP": "No"}, {}, id="TCP No"),
        pytest.param({"SERVICE_CHECK_TCP": "0"}, {}, id="TCP 0"),
        pytest.param({"SERVICE_CHECK_TCP": "on"}, {"tcp": {"TCP": "10.0.0.5:8080"}}, id="TCP on"),
        pytest.param(
            {"SERVICE_CHECK_GRPC": "true"}, {"grpc": {"GRPC": "10.0.0.5:8080"}}, id="GRPC"
        ),
        pytest.param(
            {"SERVICE_CHECK_GRPC": "grpc.health.v1.Health"},
            {"grpc": {"GRPC": "10.0.0.5:8080/grpc.health.v1.Health"}},
            id="GRPC with service name",
        ),
        pytest.param(
            {"SERVICE_CHECK_GRPC": "yes", "SERVICE_CHECK_GRPC_USE_TLS": "true"},
            {"grpc": {"GRPC": "10.0.0.5:8080", "GRPCUseTLS": True}},
            id="GRPC with TLS",
        ),
        pytest.param({"SERVICE_CHECK_GRPC": "no"}, {}, id="GRPC no"),
        pytest.param({"SERVICE_CHECK_GRPC": "off"}, {}, id="GRPC off"),
        pytest.param(
            {"SERVICE_CHECK_GRPC": "on", "SERVICE_CHECK_GRPC_USE_TLS": "off"},
            {"grpc": {"GRPC": "10.0.0.5:8080"}},
            id="GRPC on, TLS off",
        ),
        pytest.param(
            {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_TLS_SKIP_VERIFY": "off"},
            {"http": {"HTTP": "http://10.0.0.5:8080/h"}},
            id="TLS skip verify off",
        ),
    ],
)
def test_tcp_and_grpc_checks(
    labels: dict[str, str], expected: dict[str, dict[str, object]]
) -> None:
    result = build(labels)
    assert result.problems == ()
    assert by_kind(result) == {
        kind: {"Interval": "10s", **fields} for kind, fields in expected.items()
    }


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param({"SERVICE_CHECK_TTL": "30s"}, {"TTL": "30s"}, id="TTL has no interval"),
        pytest.param(
            {
                "SERVICE_CHECK_TTL": "30s",
                "SERVICE_CHECK_TIMEOUT": "1s",
                "SERVICE_CHECK_DEREGISTER_AFTER": "10m",
                "SERVICE_CHECK_INITIAL_STATUS": "warning",
            },
            {"TTL": "30s", "DeregisterCriticalServiceAfter": "10m", "Status": "warning"},
            id="TTL takes deregister-after and status, not timeout",
        ),
    ],
)
def test_ttl_check(labels: dict[str, str], expected: dict[str, object]) -> None:
    result = build(labels)
    assert result.problems == ()
    assert by_kind(result) == {"ttl": expected}
    assert result.checks[0].name == "TTL 30s (application heartbeats)"


@pytest.mark.parametrize(
    ("interval", "ttl"),
    [
        pytest.param("", "30s", id="default interval: 30s floor"),
        pytest.param("2s", "30s", id="short interval: 30s floor"),
        pytest.param("1m", "180s", id="three intervals"),
        pytest.param("1.5h", "16200s", id="fractional hours"),
        pytest.param("100h", "1080000s", id="long interval in fixed point"),
    ],
)
def test_script_check_is_a_ttl_registrator_reports_to(interval: str, ttl: str) -> None:
    labels = {
        "SERVICE_CHECK_SCRIPT": " curl -f localhost/health ",
        "SERVICE_CHECK_INTERVAL": interval,
    }
    result = build(labels)
    assert result.problems == ()
    assert result.script == "curl -f localhost/health"
    assert by_kind(result) == {
        "script": {"TTL": ttl, "Notes": "registrator runs: curl -f localhost/health"}
    }
    assert is_duration(ttl)


@pytest.mark.parametrize(
    ("health", "docker_health", "labels", "expected"),
    [
        pytest.param("starting", True, {}, "critical", id="present"),
        pytest.param("healthy", True, {}, "critical", id="initial status until the agent reports"),
        pytest.param(None, True, {}, None, id="no HEALTHCHECK"),
        pytest.param("healthy", False, {}, None, id="-docker-health=false"),
        pytest.param(
            "healthy", True, {"SERVICE_CHECK_DOCKER_HEALTH": "false"}, None, id="label opt-out"
        ),
        pytest.param(
            "healthy", True, {"SERVICE_CHECK_DOCKER_HEALTH": "true"}, "critical", id="label true"
        ),
        pytest.param("healthy", True, {"SERVICE_CHECK_DOCKER_HEALTH": "off"}, None, id="label off"),
    ],
)
def test_docker_health_check(
    health: str | None, docker_health: bool, labels: dict[str, str], expected: str | None
) -> None:
    result = build(labels, health=health, docker_health=docker_health)
    checks = by_kind(result)
    if expected is None:
        assert checks == {}
    else:
        assert checks == {
            "docker-health": {
                "TTL": "24h",
                "Status": expected,
                "Notes": "mirrors the container's Docker HEALTHCHECK",
            }
        }


def test_docker_health_initial_status_is_configurable() -> None:
    result = build({}, health="starting", initial="warning")
    assert by_kind(result)["docker-health"]["Status"] == "warning"


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [
        pytest.param(0, {}, id="off"),
        pytest.param(15, {"registrator-ttl": {"TTL": "15s", "Status": "passing"}}, id="-ttl 15"),
    ],
)
def test_ttl_heartbeat(ttl: int, expected: dict[str, dict[str, object]]) -> None:
    assert by_kind(build({}, ttl=ttl)) == expected


@pytest.mark.parametrize(
    ("heartbeat", "reap_after", "expected"),
    [
        pytest.param("", 0, None, id="off"),
        pytest.param(
            "registrator:node1",
            0,
            {"AliasService": "registrator:node1"},
            id="alias, never reaped by Consul",
        ),
        pytest.param(
            "registrator:node1",
            300,
            {"AliasService": "registrator:node1", "DeregisterCriticalServiceAfter": "300s"},
            id="alias, reaped after 5 min critical",
        ),
    ],
)
def test_node_heartbeat_alias(
    heartbeat: str, reap_after: int, expected: dict[str, object] | None
) -> None:
    labels = {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_DEREGISTER_AFTER": "10m"}
    checks = by_kind(build(labels, node_heartbeat=heartbeat, node_reap_after=reap_after))
    alias = checks.get("registrator-node")
    if expected is None:
        assert alias is None
    else:
        assert alias is not None and "Notes" in alias
        assert {k: v for k, v in alias.items() if k != "Notes"} == expected
    # The service's own checks are unchanged by the alias (their own reap time included).
    assert checks["http"]["DeregisterCriticalServiceAfter"] == "10m"


def test_several_checks_at_once_in_a_stable_order() -> None:
    labels = {
        "SERVICE_CHECK_HTTP": "/h",
        "SERVICE_CHECK_HTTPS": "/s",
        "SERVICE_CHECK_TCP": "true",
        "SERVICE_CHECK_GRPC": "true",
        "SERVICE_CHECK_TTL": "1m",
        "SERVICE_CHECK_SCRIPT": "true",
    }
    first = build(labels, health="healthy", ttl=20, node_heartbeat="registrator:node1")
    assert [c.check_id for c in first.checks] == [
        f"service:{SERVICE_ID}:{kind}"
        for kind in (
            "http",
            "https",
            "tcp",
            "grpc",
            "ttl",
            "script",
            "docker-health",
            "registrator-ttl",
            "registrator-node",
        )
    ]
    # Same input, same ids: a resync must not reset the statuses Consul keeps per check id.
    assert build(labels, health="healthy", ttl=20, node_heartbeat="registrator:node1") == first


def test_check_id() -> None:
    assert check_id("node1:web:80:udp", "tcp") == "service:node1:web:80:udp:tcp"


MIRROR_NOTES = "mirrors the container's Docker HEALTHCHECK"
CRITICAL_UNTIL_FIXED = "; the service is critical until it is fixed"
MALFORMED = [
    # (labels, env, the key as the user wrote it, checks still registered), one per key
    # that can be malformed: the checks are built as if it were absent.
    pytest.param(
        {"SERVICE_CHECK_HTPP": "/h", "SERVICE_CHECK_TCP": "yes"},
        {},
        "label SERVICE_CHECK_HTPP",
        {"tcp": {"TCP": "10.0.0.5:8080", "Interval": "10s"}},
        id="a check key nothing reads (a typo): the check it meant is missing",
    ),
    pytest.param(
        {},
        {"SERVICE_80_CHECK_CMD": "/bin/check"},
        "env SERVICE_80_CHECK_CMD",
        {},
        id="gliderlabs' SERVICE_CHECK_CMD, port-scoped, from env",
    ),
    pytest.param({"SERVICE_CHECK": "yes"}, {}, "label SERVICE_CHECK", {}, id="SERVICE_CHECK"),
    pytest.param(
        {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_INTERVAL": "abc"},
        {},
        "label SERVICE_CHECK_INTERVAL",
        {"http": {"HTTP": "http://10.0.0.5:8080/h", "Interval": "10s"}},
        id="interval: not a duration, default used",
    ),
    pytest.param(
        {"SERVICE_CHECK_TCP": "on", "SERVICE_CHECK_INTERVAL": "0"},
        {},
        "label SERVICE_CHECK_INTERVAL",
        {"tcp": {"TCP": "10.0.0.5:8080", "Interval": "10s"}},
        id="interval 0: Consul refuses the whole registration",
    ),
    pytest.param(
        {"SERVICE_CHECK_SCRIPT": "true"},
        {"SERVICE_CHECK_INTERVAL": "-5s"},
        "env SERVICE_CHECK_INTERVAL",
        {"script": {"TTL": "30s", "Notes": "registrator runs: true"}},
        id="interval from env, negative: the script runs at the default",
    ),
    pytest.param(
        {"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_TIMEOUT": "soon"},
        {},
        "label SERVICE_CHECK_TIMEOUT",
        {"tcp": {"TCP": "10.0.0.5:8080", "Interval": "10s"}},
        id="timeout",
    ),
    pytest.param(
        {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_TIMEOUT": "9999999h"},
        {},
        "label SERVICE_CHECK_TIMEOUT",
        {"http": {"HTTP": "http://10.0.0.5:8080/h", "Interval": "10s"}},
        id="timeout beyond Go's int64 nanoseconds",
    ),
    pytest.param(
        {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_TIMEOUT": "0s"},
        {},
        "label SERVICE_CHECK_TIMEOUT",
        {"http": {"HTTP": "http://10.0.0.5:8080/h", "Interval": "10s"}},
        id="timeout 0s: Consul would silently use its 10s, not no timeout",
    ),
    pytest.param(
        {"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_DEREGISTER_AFTER": "0"},
        {},
        "label SERVICE_CHECK_DEREGISTER_AFTER",
        {"tcp": {"TCP": "10.0.0.5:8080", "Interval": "10s"}},
        id="deregister-after 0: Consul would never deregister",
    ),
    pytest.param(
        {"SERVICE_CHECK_GRPC": "true", "SERVICE_CHECK_DEREGISTER_AFTER": "1d"},
        {},
        "label SERVICE_CHECK_DEREGISTER_AFTER",
        {"grpc": {"GRPC": "10.0.0.5:8080", "Interval": "10s"}},
        id="deregister-after: days are not a Go unit",
    ),
    pytest.param(
        {"SERVICE_CHECK_TTL": "1m", "SERVICE_CHECK_INTERVAL": "x"},
        {},
        "label SERVICE_CHECK_INTERVAL",
        {"ttl": {"TTL": "1m"}},
        id="interval does not touch a TTL check",
    ),
    pytest.param(
        {"SERVICE_CHECK_TTL": "soon"}, {}, "label SERVICE_CHECK_TTL", {}, id="ttl: not a duration"
    ),
    pytest.param({"SERVICE_CHECK_TTL": "0s"}, {}, "label SERVICE_CHECK_TTL", {}, id="ttl 0"),
    pytest.param(
        {"SERVICE_80_CHECK_TTL": "1s0"},
        {},
        "label SERVICE_80_CHECK_TTL",
        {},
        id="ttl: port-scoped origin, digits after the unit",
    ),
    pytest.param(
        {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_TCP": "1", "SERVICE_CHECK_HEADER": "nocolon"},
        {},
        "label SERVICE_CHECK_HEADER",
        {
            "http": {"HTTP": "http://10.0.0.5:8080/h", "Interval": "10s"},
            "tcp": {"TCP": "10.0.0.5:8080", "Interval": "10s"},
        },
        id="header: not Name: value",
    ),
    pytest.param(
        {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_HEADER": '{"X-A": 1}'},
        {},
        "label SERVICE_CHECK_HEADER",
        {"http": {"HTTP": "http://10.0.0.5:8080/h", "Interval": "10s"}},
        id="header: JSON value not a string",
    ),
    pytest.param(
        {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_HEADER": "{not json"},
        {},
        "label SERVICE_CHECK_HEADER",
        {"http": {"HTTP": "http://10.0.0.5:8080/h", "Interval": "10s"}},
        id="header: broken JSON",
    ),
    pytest.param(
        {"SERVICE_CHECK_HTTPS": "/h", "SERVICE_CHECK_HTTPS_HEADER": "::"},
        {},
        "label SERVICE_CHECK_HTTPS_HEADER",
        {"https": {"HTTP": "https://10.0.0.5:8080/h", "Interval": "10s"}},
        id="HTTPS header",
    ),
    pytest.param(
        {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_METHOD": "GE T"},
        {},
        "label SERVICE_CHECK_METHOD",
        {"http": {"HTTP": "http://10.0.0.5:8080/h", "Interval": "10s"}},
        id="method: not an HTTP token",
    ),
    pytest.param(
        {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_HTTP_METHOD": "GET/1"},
        {},
        "label SERVICE_CHECK_HTTP_METHOD",
        {"http": {"HTTP": "http://10.0.0.5:8080/h", "Interval": "10s"}},
        id="per-kind method",
    ),
    pytest.param(
        {"SERVICE_CHECK_HTTPS": "/h", "SERVICE_CHECK_TLS_SKIP_VERIFY": "maybe"},
        {},
        "label SERVICE_CHECK_TLS_SKIP_VERIFY",
        {"https": {"HTTP": "https://10.0.0.5:8080/h", "Interval": "10s"}},
        id="TLS skip verify: not a yes/no word, so verified",
    ),
    pytest.param(
        {"SERVICE_CHECK_GRPC": "true", "SERVICE_CHECK_GRPC_USE_TLS": "sure"},
        {},
        "label SERVICE_CHECK_GRPC_USE_TLS",
        {"grpc": {"GRPC": "10.0.0.5:8080", "Interval": "10s"}},
        id="gRPC use TLS",
    ),
    pytest.param(
        {"SERVICE_CHECK_TCP": "maybe"}, {}, "label SERVICE_CHECK_TCP", {}, id="tcp: not a word"
    ),
    pytest.param(
        {"SERVICE_CHECK_TCP": "db:99999"}, {}, "label SERVICE_CHECK_TCP", {}, id="tcp: bad port"
    ),
    pytest.param(
        {"SERVICE_CHECK_SCRIPT": 'echo "hi'},
        {},
        "label SERVICE_CHECK_SCRIPT",
        {},
        id="script: unbalanced quote",
    ),
    pytest.param(
        {"SERVICE_CHECK_TCP": "1", "SERVICE_CHECK_INITIAL_STATUS": "ok"},
        {},
        "label SERVICE_CHECK_INITIAL_STATUS",
        {"tcp": {"TCP": "10.0.0.5:8080", "Interval": "10s"}},
        id="initial status",
    ),
    pytest.param(
        {"SERVICE_CHECK_TCP": "1", "SERVICE_CHECK_SUCCESS_BEFORE_PASSING": "-1"},
        {},
        "label SERVICE_CHECK_SUCCESS_BEFORE_PASSING",
        {"tcp": {"TCP": "10.0.0.5:8080", "Interval": "10s"}},
        id="success threshold negative",
    ),
    pytest.param(
        {"SERVICE_CHECK_TCP": "1", "SERVICE_CHECK_FAILURES_BEFORE_CRITICAL": "two"},
        {},
        "label SERVICE_CHECK_FAILURES_BEFORE_CRITICAL",
        {"tcp": {"TCP": "10.0.0.5:8080", "Interval": "10s"}},
        id="failure threshold a word",
    ),
    pytest.param(
        {"SERVICE_CHECK_DOCKER_HEALTH": "perhaps"},
        {},
        "label SERVICE_CHECK_DOCKER_HEALTH",
        {"docker-health": {"TTL": "24h", "Status": "critical", "Notes": MIRROR_NOTES}},
        id="docker health opt-out: not a word, so mirrored",
    ),
]


@pytest.mark.parametrize(("labels", "env", "origin", "kept"), MALFORMED)
def test_malformed_key_makes_the_service_critical(
    labels: dict[str, str], env: dict[str, str], origin: str, kept: dict[str, dict[str, object]]
) -> None:
    health = "healthy" if "SERVICE_CHECK_DOCKER_HEALTH" in labels else None
    result = build(labels, env=env, health=health)
    checks = by_kind(result)
    misconfigured = checks.pop("misconfigured")
    assert checks == kept
    (problem,) = result.problems
    assert (problem.container, problem.key) == ("web-1", origin)
    assert str(problem).startswith(f"container web-1: {origin}: ")
    assert problem.reason.endswith(CRITICAL_UNTIL_FIXED)
    value = next(v for k, v in {**env, **labels}.items() if origin.endswith(k)).strip()
    assert problem.reason.startswith(f"{value!r} ")
    # The same words in Consul as in the log, so the UI says which key, which value and why.
    assert misconfigured == {
        "TTL": "24h",
        "Status": "critical",
        "Notes": f"{origin}: {problem.reason.removesuffix(CRITICAL_UNTIL_FIXED)}",
    }
    assert result.checks[-1].kind is CheckKind.MISCONFIGURED
    assert bool(result.script) is ("script" in kept)


def test_every_malformed_key_is_named_in_one_critical_check() -> None:
    result = build(
        {
            "SERVICE_CHECK_HTTP": "/h",
            "SERVICE_CHECK_INTERVAL": "often",
            "SERVICE_CHECK_TIMEOUT": "soon",
        }
    )
    notes = str(by_kind(result)["misconfigured"]["Notes"])
    assert notes.startswith("label SERVICE_CHECK_INTERVAL: 'often' is not a duration")
    assert "; label SERVICE_CHECK_TIMEOUT: 'soon' is not a duration" in notes
    assert len(result.problems) == 2


INTERVAL_FLOOR = "the shortest interval Consul runs a check at (and registrator a script)"
DEREGISTER_FLOOR = "the shortest time Consul waits before it deregisters a critical service"
DEREGISTER = "DeregisterCriticalServiceAfter"


@pytest.mark.parametrize(
    ("key", "value", "field", "kind", "expected", "said"),
    [
        # A bare whole number is seconds.
        pytest.param("CHECK_INTERVAL", "10", "Interval", "tcp", "10s", "", id="interval 10"),
        pytest.param("CHECK_TIMEOUT", "90", "Timeout", "tcp", "90s", "", id="timeout 90"),
        pytest.param(
            "CHECK_DEREGISTER_AFTER", "600", DEREGISTER, "tcp", "600s", "", id="deregister 600"
        ),
        pytest.param("CHECK_TTL", "30", "TTL", "ttl", "30s", "", id="ttl 30"),
        pytest.param("CHECK_INTERVAL", "007", "Interval", "tcp", "7s", "", id="leading zeros"),
        # Below a floor Consul applies by itself: raised to it (no misconfigured check: the
        # check runs as Consul would run it anyway).
        pytest.param(
            "CHECK_INTERVAL", "500ms", "Interval", "tcp", "1s", INTERVAL_FLOOR, id="interval 500ms"
        ),
        pytest.param(
            "CHECK_DEREGISTER_AFTER", "30s", DEREGISTER, "tcp", "1m", DEREGISTER_FLOOR, id="30s"
        ),
        pytest.param(
            "CHECK_DEREGISTER_AFTER",
            "59.9s",
            DEREGISTER,
            "tcp",
            "1m",
            DEREGISTER_FLOOR,
            id="deregister-after just under a minute",
        ),
    ],
)
def test_duration_read_otherwise_than_written_is_said_once(
    key: str, value: str, field: str, kind: str, expected: str, said: str
) -> None:
    result = build({"SERVICE_CHECK_TCP": "yes", f"SERVICE_{key}": value})
    checks = by_kind(result)
    assert "misconfigured" not in checks
    assert checks[kind][field] == expected
    (problem,) = result.problems
    assert problem.key == f"label SERVICE_{key}"
    assert problem.reason == (
        f"{value!r} is shorter than {expected}, {said}; using {expected}"
        if said
        else f"{value!r} has no unit; read as {expected} (write {expected})"
    )


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        pytest.param("CHECK_INTERVAL", "1s", "Interval", id="interval at the floor"),
        pytest.param("CHECK_DEREGISTER_AFTER", "1m", DEREGISTER, id="deregister-after at it"),
        pytest.param("CHECK_TIMEOUT", "1ms", "Timeout", id="timeout: Consul has no floor"),
    ],
)
def test_duration_as_written_is_sent_as_written(key: str, value: str, field: str) -> None:
    result = build({"SERVICE_CHECK_TCP": "yes", f"SERVICE_{key}": value})
    assert by_kind(result)["tcp"][field] == value
    assert result.problems == ()


@pytest.mark.parametrize("word", ["off", "OFF", "false", "no", "0", " Off "])
@pytest.mark.parametrize(
    "key",
    [
        "CHECK_HTTP",
        "CHECK_HTTPS",
        "CHECK_TCP",
        "CHECK_GRPC",
        "CHECK_TTL",
        "CHECK_SCRIPT",
        "CHECK_DOCKER_HEALTH",
    ],
)
def test_off_words_mean_no_check(key: str, word: str) -> None:
    result = build({f"SERVICE_{key}": word}, health="healthy", docker_health=True)
    expected = set() if key == "CHECK_DOCKER_HEALTH" else {"docker-health"}
    assert set(by_kind(result)) == expected
    assert result.problems == ()
    assert result.script == ""


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        pytest.param("10s", True, id="10s"),
        pytest.param("1m30s", True, id="1m30s"),
        pytest.param("1.5h", True, id="1.5h"),
        pytest.param("250ms", True, id="250ms"),
        pytest.param("0", True, id="bare 0"),
        pytest.param("0s", True, id="0s"),
        pytest.param(".5s", True, id=".5s"),
        pytest.param("1.s", True, id="1.s (Go accepts)"),
        pytest.param("1h2m3s4ms5us6ns", True, id="every unit"),
        pytest.param("3µs", True, id="micro sign"),
        pytest.param(" 10s ", True, id="padding ignored"),
        pytest.param("10", False, id="no unit"),
        pytest.param("s", False, id="no number"),
        pytest.param("-1s", False, id="negative"),
        pytest.param("+1s", False, id="plus sign"),
        pytest.param("10 s", False, id="space inside"),
        pytest.param("1d", False, id="days"),
        pytest.param("", False, id="empty"),
        pytest.param("00", False, id="00"),
        pytest.param("1s0", False, id="trailing digits"),
        pytest.param("0.5", False, id="unitless fraction"),
        pytest.param("1S", False, id="units are case-sensitive"),
        pytest.param("10s\n1", False, id="second line"),
    ],
)
def test_is_duration(text: str, valid: bool) -> None:
    assert is_duration(text) is valid


@pytest.mark.parametrize(
    ("interval", "seconds", "clamped"),
    [
        pytest.param("1ms", 1.0, True, id="1ms (the issue's flood) clamped to 1s"),
        pytest.param("999ms", 1.0, True, id="just under the floor"),
        pytest.param("1s", 1.0, False, id="the floor itself"),
        pytest.param("1500ms", 1.5, False, id="above the floor"),
    ],
)
def test_script_interval_floor(interval: str, seconds: float, clamped: bool) -> None:
    result = build({"SERVICE_CHECK_SCRIPT": "true", "SERVICE_CHECK_INTERVAL": interval})
    assert result.script_interval == seconds
    assert list(by_kind(result)) == ["script"]
    if clamped:
        (problem,) = result.problems
        assert str(problem) == (
            f"container web-1: label SERVICE_CHECK_INTERVAL: {interval!r} is shorter than 1s, "
            f"{INTERVAL_FLOOR}; using 1s"
        )
    else:
        assert result.problems == ()


# --- script checks: gliderlabs' placeholders, and how the script is run -------------------------


@pytest.mark.parametrize(
    ("script", "target", "expected"),
    [
        pytest.param(
            "echo ip=$SERVICE_IP port=$SERVICE_PORT", Target("10.0.0.5", 8080),
            "echo ip=10.0.0.5 port=8080", id="issue 13 example",
        ),
        pytest.param(
            "nc -z ${SERVICE_IP} ${SERVICE_PORT}", Target("198.18.0.7", 80),
            "nc -z 198.18.0.7 80", id="braced",
        ),
        pytest.param(
            "check $SERVICE_IP:$SERVICE_PORT $SERVICE_IP", Target("fd00::5", 53),
            "check fd00::5:53 fd00::5", id="several, and IPv6 as registered",
        ),
        pytest.param(
            "echo $SERVICE_IPS $SERVICE_PORT_X $SERVICE_NAME $HOME", Target("10.0.0.5", 1),
            "echo $SERVICE_IPS $SERVICE_PORT_X $SERVICE_NAME $HOME",
            id="other variables are left to the shell",
        ),
        pytest.param("pg_isready -q", Target("10.0.0.5", 1), "pg_isready -q", id="none"),
    ],
)  # fmt: skip
def test_script_placeholders_are_the_registered_address_and_port(
    script: str, target: Target, expected: str
) -> None:
    assert with_service_address(script, target) == expected


def test_build_checks_substitutes_before_the_script_is_planned() -> None:
    result = build(
        {"SERVICE_CHECK_SCRIPT": "echo ip=$SERVICE_IP port=$SERVICE_PORT"},
        target=Target("10.0.0.5", 32768),
    )
    assert result.script == "echo ip=10.0.0.5 port=32768"
    assert by_kind(result)["script"]["Notes"] == "registrator runs: echo ip=10.0.0.5 port=32768"


@pytest.mark.parametrize(
    ("script", "argv"),
    [
        pytest.param("pg_isready -q", ["pg_isready", "-q"], id="plain command: exec'd directly"),
        pytest.param(
            "check --name 'a b' \"x y\"", ["check", "--name", "a b", "x y"],
            id="quotes split as a shell would",
        ),
        pytest.param(
            "nc -z 10.0.0.5 80 && echo up", ["sh", "-c", "nc -z 10.0.0.5 80 && echo up"],
            id="list: sh -c",
        ),
        pytest.param("ps | grep app", ["sh", "-c", "ps | grep app"], id="pipe: sh -c"),
        pytest.param("test -f /ok; echo", ["sh", "-c", "test -f /ok; echo"], id="semicolon"),
        pytest.param("cat < /x", ["sh", "-c", "cat < /x"], id="redirection"),
        pytest.param("echo $HOME", ["sh", "-c", "echo $HOME"], id="expansion"),
        pytest.param("ls /tmp/*.pid", ["sh", "-c", "ls /tmp/*.pid"], id="glob"),
        pytest.param("echo `id`", ["sh", "-c", "echo `id`"], id="backquotes"),
        pytest.param("true\nfalse", ["sh", "-c", "true\nfalse"], id="newline"),
    ],
)  # fmt: skip
def test_script_command(script: str, argv: list[str]) -> None:
    assert script_command(script) == argv


def test_script_command_reports_unbalanced_quotes() -> None:
    with pytest.raises(ValueError, match="quotation"):
        script_command("echo 'open")
