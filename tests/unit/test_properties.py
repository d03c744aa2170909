"""Properties of the planner over arbitrary SERVICE_* metadata.

Labels and env vars are written by people (and by tools that template them), so the planner
must survive anything: random keys, unicode, huge values, duplicate keys differing in case,
bad ports, bad durations, bad JSON, bad upstreams. For every input:

- `desired_services` never raises;
- every Problem names the container and a key the user actually wrote (a label or env name),
  so the warning points at something they can find (the only exceptions are problems about the
  container's situation, which name the option that resolves them);
- every registration it produces is strict JSON and its Meta passes Consul's own rules (so
  Consul never refuses a registration because of what we put into Meta);
- garbage next to valid keys does not stop the valid parts from registering.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrator.ids import unaddressable
from registrator.labels import service_metadata
from registrator.model import (
    META_CONTAINER,
    META_NODE,
    META_SOURCE,
    Container,
    ContainerPort,
    NetworkAttachment,
    PortBinding,
    Problem,
)
from registrator.payload import registration
from registrator.planner import PlanContext, desired_services
from registrator.settings import Settings

# Every key the planner reads, plus a few Meta-like ones.
KNOWN_KEYS = (
    "NAME", "ID", "TAGS", "IGNORE", "PORT", "NETWORK", "IP", "WEIGHT",
    "CHECK_HTTP", "CHECK_HTTPS", "CHECK_HTTP_METHOD", "CHECK_HTTPS_METHOD", "CHECK_METHOD",
    "CHECK_HEADER", "CHECK_HTTP_HEADER", "CHECK_HTTPS_HEADER", "CHECK_BODY", "CHECK_HTTP_BODY",
    "CHECK_TLS_SKIP_VERIFY", "CHECK_TCP", "CHECK_GRPC", "CHECK_GRPC_USE_TLS", "CHECK_TTL",
    "CHECK_SCRIPT", "CHECK_INTERVAL", "CHECK_TIMEOUT", "CHECK_DEREGISTER_AFTER",
    "CHECK_INITIAL_STATUS", "CHECK_SUCCESS_BEFORE_PASSING", "CHECK_FAILURES_BEFORE_CRITICAL",
    "CHECK_DOCKER_HEALTH", "CONNECT", "CONNECT_UPSTREAMS", "CONNECT_SIDECAR_PORT",
    "CONNECT_SIDECAR_TAGS", "CONNECT_LOCAL_ADDRESS", "CONNECT_LOCAL_PORT", "CONNECT_PROXY_CONFIG",
    "VERSION", "TEAM", "CONSUL-X", "REGISTRATOR-NODE", "EXTERNAL-SOURCE", "A.B", "X Y",
)  # fmt: skip

DEEP_JSON = '{"a": ' + "[" * 100_000
INTERESTING_VALUES = (
    "", " ", "0", "-1", "1", "80", "65535", "65536", "99999", "²", "٣", "٨٠", "1" * 5000,
    "10", "1x", "s", "٣s", "10s", "1m30s", ".5s", "0s", "250ms", "1µs", "-5s", "1e3s",
    "true", "false", "yes", "no", "sidecar", "native", "none", "bogus",
    "passing", "warning", "critical", "PASSING",
    "/health", "health", "http://[bad", "https://x/y", "host:1", ":::", "db:5432",
    "{", "}", "{}", "[]", "null", '{"a": NaN}', '{"a": Infinity}', '{"X": ["1", 2]}',
    '{"X-A": "1", "X-B": ["2", "3"]}', "X-A: 1; X-B: 2", "no colon here", DEEP_JSON,
    "[" * 5000, '"str"', "db:0", "db@:1", "db@dc2:127.0.0.2:6379", "db:1:2:3",
    "db:5432,db:5432", "db:5432,cache:5432", "db:999999", "a b:1", "db:5432,,", "10.0.0.300",
    "::1", "127.0.0.1", "fe80::1%eth0", "t1,t2", "t1\\,t2", ",,,", "{{.Name}}",
    "\x00", "\n", "a\nb", "é" * 300, "a" * 513, "x" * 100_000, ",".join(["t"] * 2000),
)  # fmt: skip
PORT_SCOPES = (
    "", "", "", "80_", "443_", "53_", "5000_", "080_", "0_", "65536_", "٨٠_", "²_",
    "9" * 5000 + "_", "1_2_",
)  # fmt: skip
CONTAINER_PORTS = (80, 443, 53, 5000, 8080)
IP_LABEL = "ip-label"
NODE = "nöde-1"


def _mixed_case(key: str, flips: list[bool]) -> str:
    return (
        "".join(c.lower() if flip else c for c, flip in zip(key, flips, strict=False))
        + key[len(flips) :]
    )


suffixes = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.sampled_from(KNOWN_KEYS).map(str.lower),
    st.builds(_mixed_case, st.sampled_from(KNOWN_KEYS), st.lists(st.booleans(), max_size=40)),
    st.text(max_size=20),
    st.sampled_from(KNOWN_KEYS).map(lambda k: k + "\n"),
)
service_keys = st.builds(
    lambda scope, suffix: f"SERVICE_{scope}{suffix}",
    st.one_of(
        st.sampled_from(PORT_SCOPES),
        st.integers(0, 70_000).map(lambda n: f"{n}_"),
    ),
    suffixes,
)
other_keys = st.one_of(
    st.sampled_from(
        [
            "service_name", "Service_Name", "SERVICE", "SERVICE_", "SERVICE_80", "SERVICE_²",
            "SERVICE_" + "1" * 5000, "PATH", IP_LABEL, "com.docker.compose.service",
            "com.docker.swarm.service.name", "com.docker.stack.namespace",
        ]
    ),
    st.text(max_size=20),
)  # fmt: skip
keys = st.one_of(service_keys, service_keys, service_keys, other_keys)
values = st.one_of(
    st.sampled_from(INTERESTING_VALUES),
    st.sampled_from(INTERESTING_VALUES),
    st.text(max_size=40),
    st.integers(-10, 70_000).map(str),
    st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 10_000), st.sampled_from(["s", "ms"])),
)
labels_st = st.dictionaries(keys, values, max_size=14)
# An environment variable's name cannot hold "=" (Docker splits `NAME=value` on the first one).
env_st = st.dictionaries(
    keys.filter(lambda k: "=" not in k and "\x00" not in k), values, max_size=8
)


IMAGES = ("nginx:1.25", "registry:5000/org/app@sha256:abc", "", "sha256:" + "a" * 64)


def _published(port: int) -> tuple[PortBinding, ...]:
    return (PortBinding("0.0.0.0", 30_000 + port),)


@st.composite
def containers(draw: st.DrawFn) -> Container:
    ports = draw(
        st.lists(
            st.tuples(
                st.sampled_from(CONTAINER_PORTS), st.sampled_from(["tcp", "udp"]), st.booleans()
            ),
            max_size=3,
            unique_by=lambda p: (p[0], p[1]),
        )
    )
    networks = draw(
        st.sampled_from(
            [
                (NetworkAttachment("bridge", "172.17.0.2"),),
                (
                    NetworkAttachment("bridge", "172.17.0.2"),
                    NetworkAttachment("backend", "10.5.0.2"),
                ),
                (NetworkAttachment("ingress", "10.0.0.5"), NetworkAttachment("app", "10.6.0.3")),
            ]
        )
    )
    return Container(
        id="c0ffee" + "0" * 58,
        name=draw(st.sampled_from(["web", "app_1", "Ünïcode-name", "x" * 200])),
        image=draw(st.sampled_from(IMAGES)),
        hostname="host",
        labels=draw(labels_st),
        env=draw(env_st),
        ports=tuple(
            ContainerPort(port, proto, _published(port) if published else ())
            for port, proto, published in ports
        ),
        networks=networks,
        network_mode=draw(st.sampled_from(["default", "default", "host", "backend"])),
        running=True,
        paused=False,
        restarting=False,
        exit_code=0,
        health=draw(st.sampled_from([None, "healthy", "unhealthy", "starting"])),
    )


contexts = st.builds(
    PlanContext,
    node=st.just(NODE),
    default_address=st.just("192.0.2.1"),
    settings=st.builds(
        Settings,
        internal=st.booleans(),
        explicit=st.booleans(),
        ip=st.sampled_from(["", "192.0.2.7"]),
        tags=st.sampled_from(["", "{{.Name}},x", '{{index .Labels "SERVICE_TAGS"}}']),
        use_ip_from_label=st.sampled_from(["", IP_LABEL]),
        network=st.sampled_from(["", "backend", "missing"]),
        ttl=st.sampled_from([0, 15]),
        docker_health=st.booleans(),
        docker_health_initial=st.sampled_from(["critical", "passing"]),
    ),
)

# Consul's rules for service Meta (agent/structs: ValidateServiceMetadata). Lengths are Go
# string lengths, i.e. bytes.
CONSUL_META_KEY = re.compile(r"[A-Za-z0-9_-]+")
CONSUL_META_MAX_PAIRS = 64
CONSUL_META_MAX_KEY_BYTES = 128
CONSUL_META_MAX_VALUE_BYTES = 512
# Go's time.ParseDuration, which is how Consul reads every duration we send: ASCII digits only.
GO_DURATION = re.compile(r"(?:0|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|ms|s|m|h))+")
DURATION_FIELDS = ("Interval", "Timeout", "TTL", "DeregisterCriticalServiceAfter")
# Problems about the container's situation rather than about one key: they name the option
# that resolves them.
SITUATION_KEYS = {
    "SERVICE_NETWORK",  # several networks: "set SERVICE_NETWORK or REGISTRATOR_NETWORK"
    "REGISTRATOR_NETWORK",  # -network names a network the container is not on
    "-internal",
}


def _assert_problem_names_input(problem: Problem, container: Container) -> None:
    assert problem.container == container.name, problem
    kind, _, name = problem.key.partition(" ")
    if kind == "label":
        assert name in container.labels, f"{problem!s}: no such label"
    elif kind == "env":
        assert name in container.env, f"{problem!s}: no such env var"
    else:
        assert problem.key in SITUATION_KEYS, f"{problem!s}: names no label or env var"


def _assert_valid_meta(meta: Mapping[str, Any]) -> None:
    assert len(meta) <= CONSUL_META_MAX_PAIRS, f"{len(meta)} meta pairs"
    for key, value in meta.items():
        assert isinstance(key, str) and isinstance(value, str), (key, value)
        assert CONSUL_META_KEY.fullmatch(key), f"meta key {key!r}"
        assert len(key.encode()) <= CONSUL_META_MAX_KEY_BYTES, f"meta key {key[:40]!r}…"
        assert not key.startswith("consul-"), f"meta key {key!r} is reserved by Consul"
        assert len(value.encode()) <= CONSUL_META_MAX_VALUE_BYTES, f"meta value of {key!r}"


def _assert_valid_payload(body: Mapping[str, Any], container: Container) -> None:
    json.dumps(body, allow_nan=False)  # strict JSON: Consul's decoder has no NaN
    assert isinstance(body["ID"], str) and body["ID"].strip(), body["ID"]
    assert isinstance(body["Name"], str) and body["Name"].strip(), body["Name"]
    assert isinstance(body["Port"], int) and 0 <= body["Port"] <= 65535
    _assert_valid_meta(body["Meta"])
    assert body["Meta"][META_CONTAINER] == container.id
    assert body["Meta"][META_NODE] == NODE
    assert body["Meta"][META_SOURCE] == "registrator"
    for check in body.get("Checks", []):
        for name in DURATION_FIELDS:
            if name in check:
                assert GO_DURATION.fullmatch(str(check[name])), f"{name}={check[name]!r}"


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(container=containers(), ctx=contexts)
def test_planner_never_raises_and_reports_only_what_the_user_wrote(
    container: Container, ctx: PlanContext
) -> None:
    result = desired_services(container, ctx)
    for problem in result.problems:
        _assert_problem_names_input(problem, container)
    ids = [service.id for service in result.services]
    assert len(ids) == len(set(ids)), f"duplicate service ids {ids}"
    for service in result.services:
        _assert_valid_payload(registration(service), container)


VALID_NAME = "orders-api"


def _unaddressable_id(key: str, value: str) -> bool:
    """An id Consul could never deregister is refused on purpose (registrator.ids)."""
    probe = dataclasses.replace(_PROBE, labels={key: value})
    service_id = service_metadata(probe, 80).get("ID").strip()
    return bool(service_id) and bool(unaddressable(service_id))


_PROBE = Container(
    id="p",
    name="p",
    image="i",
    hostname="h",
    labels={},
    env={},
    ports=(),
    networks=(),
    network_mode="default",
    running=True,
    paused=False,
    restarting=False,
    exit_code=0,
)


def _takes_over(key: str, in_labels: bool) -> bool:
    """Whether garbage under `key` may legitimately override (or ignore) the valid keys.

    Asked of the implementation itself, so the test follows its precedence rules exactly: a
    label that normalises to NAME/IGNORE/CHECK_TTL ties with ours (first one wins); an env var
    only wins when port-scoped; any IGNORE drops the service on purpose.
    """
    metadata = service_metadata(dataclasses.replace(_PROBE, labels={key: "x"}), 80)
    overriding = {"NAME", "IGNORE", "CHECK_TTL"} if in_labels else {"IGNORE"}
    return bool(overriding & set(metadata.values)) or bool(
        {"NAME", "CHECK_TTL"} & metadata.port_scoped
    )


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(garbage_labels=labels_st, garbage_env=env_st)
def test_valid_keys_still_register_next_to_garbage(
    garbage_labels: dict[str, str], garbage_env: dict[str, str]
) -> None:
    labels = {
        k: v
        for k, v in garbage_labels.items()
        if not _takes_over(k, in_labels=True) and not _unaddressable_id(k, v)
    }
    env = {
        k: v
        for k, v in garbage_env.items()
        if not _takes_over(k, in_labels=False) and not _unaddressable_id(k, v)
    }
    labels.update({"SERVICE_NAME": VALID_NAME, "SERVICE_CHECK_TTL": "30s"})
    container = Container(
        id="feed" + "0" * 60,
        name="orders",
        image="orders:1",
        hostname="orders",
        labels=labels,
        env=env,
        ports=(ContainerPort(80, "tcp", (PortBinding("0.0.0.0", 8080),)),),
        networks=(NetworkAttachment("bridge", "172.17.0.3"),),
        network_mode="default",
        running=True,
        paused=False,
        restarting=False,
        exit_code=0,
    )
    result = desired_services(container, PlanContext(node=NODE, default_address="192.0.2.1"))
    names = [service.name for service in result.services]
    assert names == [VALID_NAME], (names, [str(p) for p in result.problems])
    (service,) = result.services
    assert (service.address, service.port) == ("192.0.2.1", 8080)
    ttl_checks = [c for c in service.checks if c.check_id.endswith(":ttl")]
    assert [c.fields.get("TTL") for c in ttl_checks] == ["30s"]
    _assert_valid_payload(registration(service), container)
    for problem in result.problems:
        _assert_problem_names_input(problem, container)


# Inputs that once broke the properties above, kept so they are always tried.
REGRESSIONS = {
    "huge port scope": {"SERVICE_" + "9" * 5000 + "_NAME": "x"},
    "superscript digit count": {"SERVICE_CHECK_SUCCESS_BEFORE_PASSING": "²"},
    "huge digit count": {"SERVICE_CHECK_FAILURES_BEFORE_CRITICAL": "1" * 5000},
    "superscript sidecar port": {"SERVICE_CONNECT": "sidecar", "SERVICE_CONNECT_SIDECAR_PORT": "²"},
    "huge local port": {"SERVICE_CONNECT": "sidecar", "SERVICE_CONNECT_LOCAL_PORT": "1" * 5000},
    "NaN proxy config": {
        "SERVICE_CONNECT": "sidecar",
        "SERVICE_CONNECT_PROXY_CONFIG": '{"a": NaN}',
    },
    "deep proxy config": {"SERVICE_CONNECT": "sidecar", "SERVICE_CONNECT_PROXY_CONFIG": DEEP_JSON},
    "deep header": {"SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_HEADER": DEEP_JSON},
    "arabic-indic duration": {"SERVICE_CHECK_TTL": "٣s"},
    "multibyte meta value": {"SERVICE_VERSION": "é" * 300},
    "meta key with newline": {"SERVICE_VERSION\n": "1"},
    "label network not attached": {"SERVICE_NETWORK": "nowhere"},
}


def test_regressions() -> None:
    for name, labels in REGRESSIONS.items():
        container = Container(
            id="ab" * 32,
            name="regression",
            image="app:1",
            hostname="h",
            labels=labels,
            env={"SERVICE_PORT": "²"},
            ports=(ContainerPort(80, "tcp", (PortBinding("0.0.0.0", 8080),)),),
            networks=(NetworkAttachment("bridge", "172.17.0.3"),),
            network_mode="default",
            running=True,
            paused=False,
            restarting=False,
            exit_code=0,
        )
        for ctx in (
            PlanContext(node=NODE, default_address="192.0.2.1"),
            PlanContext(node=NODE, default_address="192.0.2.1", settings=Settings(internal=True)),
        ):
            result = desired_services(container, ctx)
            assert len(result.services) == 1, name
            for problem in result.problems:
                _assert_problem_names_input(problem, container)
            _assert_valid_payload(registration(result.services[0]), container)
        synthetic = desired_services(
            dataclasses.replace(container, ports=()),
            PlanContext(node=NODE, default_address="192.0.2.1"),
        )
        assert synthetic.services == (), name  # SERVICE_PORT "²" is no port
        assert any(p.key == "env SERVICE_PORT" for p in synthetic.problems), name
