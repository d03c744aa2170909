"""Command lines and environments as gliderlabs/registrator users write them, good and bad."""

from __future__ import annotations

from typing import Any

import pytest

from registrator.arguments import parse_args, usage
from registrator.option_values import ConsulEndpoint
from registrator.settings import (
    OPTIONS,
    ConfigError,
    DeregisterMode,
    LogFormat,
    Settings,
)

LOCAL_CONSUL = ConsulEndpoint("http", "127.0.0.1", 8500)


def settings_of(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    command = parse_args(argv, environ or {})
    assert command.action == "run"
    return command.settings


def fields_of(settings: Settings, names: dict[str, Any]) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in names}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param([], {"consul": LOCAL_CONSUL, "resync": 30}, id="nothing: local agent"),
        pytest.param(
            ["-internal", "-cleanup", "consul://consul-server:8500"],
            {
                "internal": True,
                "cleanup": True,
                "consul": ConsulEndpoint("http", "consul-server", 8500),
            },
            id="gliderlabs README line",
        ),
        pytest.param(["-ip=1.2.3.4"], {"ip": "1.2.3.4"}, id="-ip=value"),
        pytest.param(["-ip", "1.2.3.4"], {"ip": "1.2.3.4"}, id="-ip value"),
        pytest.param(["-ip", "fd00::1"], {"ip": "fd00::1"}, id="IPv6 -ip"),
        pytest.param(
            ["consul://c:8500", "-internal", "-resync", "5"],
            {"internal": True, "resync": 5, "consul": ConsulEndpoint("http", "c", 8500)},
            id="flags after the URI",
        ),
        pytest.param(
            ["--internal", "--ip", "1.2.3.4", "--retry-interval=500"],
            {"internal": True, "ip": "1.2.3.4", "retry_interval": 500},
            id="--long-form",
        ),
        pytest.param(
            ["-useIpFromLabel", "com.example.ip"],
            {"use_ip_from_label": "com.example.ip"},
            id="-useIpFromLabel (gliderlabs camelCase)",
        ),
        pytest.param(
            ["-useipfromlabel", "x"], {"use_ip_from_label": "x"}, id="camelCase typed in lower"
        ),
        pytest.param(["--use-ip-from-label=x"], {"use_ip_from_label": "x"}, id="dashed name"),
        pytest.param(
            ["-deregister", "on-success"],
            {"deregister": DeregisterMode.ON_SUCCESS},
            id="-deregister on-success",
        ),
        pytest.param(["-deregister=Always"], {"deregister": DeregisterMode.ALWAYS}, id="any case"),
        pytest.param(["-resync", "0"], {"resync": 0}, id="-resync 0 disables"),
        pytest.param(["-internal=false"], {"internal": False}, id="-bool=false"),
        pytest.param(["-explicit=1"], {"explicit": True}, id="-bool=1"),
        pytest.param(["-retry-attempts", "-1"], {"retry_attempts": -1}, id="-1 retries forever"),
        pytest.param(
            ["-tags", 'prod,{{.Node}},{{ index .Labels "team" }}'],
            {"tags": 'prod,{{.Node}},{{ index .Labels "team" }}'},
            id="-tags template",
        ),
        pytest.param(["-ttl", "10"], {"ttl": 10, "ttl_refresh": 5}, id="refresh defaults to half"),
        pytest.param(["-ttl", "3"], {"ttl": 3, "ttl_refresh": 1}, id="refresh rounds down"),
        pytest.param(["-ttl", "2"], {"ttl": 2, "ttl_refresh": 1}, id="smallest ttl"),
        pytest.param(
            ["-node-ttl", "0", "-node-reap-after", "0", "-swarm-reap-after", "0"],
            {"node_ttl": 0, "node_reap_after": 0, "swarm_reap_after": 0},
            id="node heartbeat and reaping off",
        ),
        pytest.param(
            ["-node-ttl=2", "-node-reap-after=60", "-swarm-reap-after=5"],
            {"node_ttl": 2, "node_reap_after": 60, "swarm_reap_after": 5},
            id="node heartbeat smallest values",
        ),
        pytest.param(
            ["-ttl", "30", "-ttl-refresh", "29"], {"ttl": 30, "ttl_refresh": 29}, id="refresh"
        ),
        pytest.param(
            ["consul-tls://consul.example"],
            {"consul": ConsulEndpoint("https", "consul.example", 8501)},
            id="consul-tls defaults to 8501",
        ),
        pytest.param(
            ["consul-unix:///run/consul/http.sock"],
            {"consul": ConsulEndpoint("unix", socket_path="/run/consul/http.sock")},
            id="consul-unix",
        ),
        pytest.param(
            ["consul://[::1]:8600"], {"consul": ConsulEndpoint("http", "::1", 8600)}, id="IPv6"
        ),
        pytest.param(
            ["CONSUL://c/"], {"consul": ConsulEndpoint("http", "c", 8500)}, id="scheme any case"
        ),
        pytest.param(
            ["--", "consul://c:1"], {"consul": ConsulEndpoint("http", "c", 1)}, id="-- ends flags"
        ),
        pytest.param(
            ["-http-addr", ":9090", "-log-format", "json", "-log-level", "DEBUG"],
            {"http_addr": ":9090", "log_format": LogFormat.JSON, "log_level": "debug"},
            id="server and logging",
        ),
        pytest.param(
            ["-docker-health=false", "-docker-health-initial", "warning"],
            {"docker_health": False, "docker_health_initial": "warning"},
            id="docker health",
        ),
    ],
)
def test_command_lines(argv: list[str], expected: dict[str, Any]) -> None:
    assert fields_of(settings_of(argv), expected) == expected


@pytest.mark.parametrize(
    ("argv", "action"),
    [
        pytest.param(["-h"], "help", id="-h"),
        pytest.param(["--help"], "help", id="--help"),
        pytest.param(["-version"], "version", id="-version"),
        pytest.param(["-v"], "version", id="-v"),
    ],
)
def test_help_and_version(argv: list[str], action: str) -> None:
    assert parse_args(argv, {}).action == action


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        pytest.param(
            [],
            {"REGISTRATOR_INTERNAL": "true", "REGISTRATOR_RESYNC": "60"},
            {"internal": True, "resync": 60},
            id="env only",
        ),
        pytest.param(
            [],
            {"REGISTRATOR_DEREGISTER": "on-success", "REGISTRATOR_USE_IP_FROM_LABEL": "ip"},
            {"deregister": DeregisterMode.ON_SUCCESS, "use_ip_from_label": "ip"},
            id="env enum and text",
        ),
        pytest.param(
            ["-ip", "2.2.2.2", "-internal=false"],
            {"REGISTRATOR_IP": "1.1.1.1", "REGISTRATOR_INTERNAL": "true"},
            {"ip": "2.2.2.2", "internal": False},
            id="flags beat env",
        ),
        pytest.param([], {"REGISTRATOR_RESYNC": "  "}, {"resync": 30}, id="blank env ignored"),
        pytest.param(
            [],
            {"CONSUL_HTTP_ADDR": "consul:8500"},
            {"consul": ConsulEndpoint("http", "consul", 8500)},
            id="CONSUL_HTTP_ADDR host:port",
        ),
        pytest.param(
            [],
            {"CONSUL_HTTP_ADDR": "consul"},
            {"consul": ConsulEndpoint("http", "consul", 8500)},
            id="CONSUL_HTTP_ADDR host",
        ),
        pytest.param(
            [],
            {"CONSUL_HTTP_ADDR": "https://consul:9501"},
            {"consul": ConsulEndpoint("https", "consul", 9501)},
            id="CONSUL_HTTP_ADDR https",
        ),
        pytest.param(
            [],
            {"CONSUL_HTTP_ADDR": "https://consul"},
            {"consul": ConsulEndpoint("https", "consul", 8501)},
            id="CONSUL_HTTP_ADDR https default port",
        ),
        pytest.param(
            [],
            {"CONSUL_HTTP_ADDR": "http://10.0.0.1:8500/"},
            {"consul": ConsulEndpoint("http", "10.0.0.1", 8500)},
            id="CONSUL_HTTP_ADDR http, trailing slash",
        ),
        pytest.param(
            [],
            {"CONSUL_HTTP_ADDR": "unix:///var/run/consul.sock"},
            {"consul": ConsulEndpoint("unix", socket_path="/var/run/consul.sock")},
            id="CONSUL_HTTP_ADDR unix",
        ),
        pytest.param(
            [],
            {"CONSUL_HTTP_ADDR": "a:1", "REGISTRATOR_CONSUL": "consul://b:2"},
            {"consul": ConsulEndpoint("http", "b", 2)},
            id="REGISTRATOR_CONSUL beats CONSUL_HTTP_ADDR",
        ),
        pytest.param(
            ["consul://c:3"],
            {"CONSUL_HTTP_ADDR": "a:1", "REGISTRATOR_CONSUL": "consul://b:2"},
            {"consul": ConsulEndpoint("http", "c", 3)},
            id="URI beats both",
        ),
        pytest.param(
            [],
            {
                "CONSUL_HTTP_TOKEN": " secret ",
                "CONSUL_HTTP_SSL_VERIFY": "false",
                "CONSUL_CLIENT_CERT": "/c.pem",
                "CONSUL_CLIENT_KEY": "/k.pem",
            },
            {
                "consul_token": "secret",
                "consul_ssl_verify": False,
                "consul_client_cert": "/c.pem",
                "consul_client_key": "/k.pem",
            },
            id="consul CLI variables",
        ),
        pytest.param(
            [],
            {"DOCKER_HOST": "tcp://10.0.0.1:2375"},
            {"docker_host": "tcp://10.0.0.1:2375"},
            id="DOCKER_HOST",
        ),
        pytest.param(
            [],
            {"REGISTRATOR_TTL": "20", "REGISTRATOR_TTL_REFRESH": "7"},
            {"ttl": 20, "ttl_refresh": 7},
            id="ttl from env",
        ),
    ],
)
def test_environment(argv: list[str], environ: dict[str, str], expected: dict[str, Any]) -> None:
    assert fields_of(settings_of(argv, environ), expected) == expected


def test_token_is_not_in_repr() -> None:
    settings = settings_of([], {"CONSUL_HTTP_TOKEN": "s3cr3t-token"})
    assert "s3cr3t-token" not in repr(settings)


@pytest.mark.parametrize(
    ("endpoint", "base_url", "text"),
    [
        pytest.param(LOCAL_CONSUL, "http://127.0.0.1:8500", "http://127.0.0.1:8500", id="http"),
        pytest.param(
            ConsulEndpoint("https", "fd00::1", 8501),
            "https://[fd00::1]:8501",
            "https://[fd00::1]:8501",
            id="IPv6 bracketed",
        ),
        pytest.param(
            ConsulEndpoint("unix", socket_path="/s.sock"),
            "http://consul",
            "unix:///s.sock",
            id="unix",
        ),
    ],
)
def test_consul_endpoint_text(endpoint: ConsulEndpoint, base_url: str, text: str) -> None:
    assert (endpoint.base_url, str(endpoint)) == (base_url, text)


# --- bad values: every message names what the user typed ---------------------------------------


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        pytest.param(["-resync", "abc"], {}, "-resync", id="-resync abc"),
        pytest.param(["-resync", "-1"], {}, "-resync", id="-resync -1"),
        pytest.param(["-deregister", "sometimes"], {}, "-deregister", id="-deregister sometimes"),
        pytest.param(["-ip", "999.1.1.1"], {}, "-ip", id="-ip 999.1.1.1"),
        pytest.param(["-ip", "my-host"], {}, "-ip", id="-ip hostname"),
        pytest.param(["-retry-attempts", "-2"], {}, "-retry-attempts", id="-retry-attempts -2"),
        pytest.param(["-tags", "{{.Nope}}"], {}, "-tags", id="-tags unknown field"),
        pytest.param(["-tags", "{{.Name}"], {}, "-tags", id="-tags unbalanced"),
        pytest.param(["-bogus"], {}, "-bogus", id="unknown flag"),
        pytest.param(["--bogus=1"], {}, "--bogus", id="unknown long flag with value"),
        pytest.param(["-ip"], {}, "-ip: needs a value", id="missing value"),
        pytest.param(
            ["consul://a:1", "consul://b:2"], {}, "at most one registry URI", id="two URIs"
        ),
        pytest.param(["etcd://x:2379"], {}, "only speaks to Consul", id="etcd"),
        pytest.param(["skydns2://x/y"], {}, "only speaks to Consul", id="skydns2"),
        pytest.param(["redis://x"], {}, "consul://", id="other scheme"),
        pytest.param(["consul-server:8500"], {}, "consul://HOST:PORT", id="no scheme"),
        pytest.param(
            ["consul://host:notaport"], {}, "consul://host:notaport", id="port not a number"
        ),
        pytest.param(["consul://host:70000"], {}, "consul://host:70000", id="port too big"),
        pytest.param(["consul://"], {}, "no host", id="no host"),
        pytest.param(["consul://c:8500/v1"], {}, "path", id="path"),
        pytest.param(["consul-unix://run/c.sock"], {}, "absolute", id="relative socket"),
        pytest.param(["-ttl", "10", "-ttl-refresh", "10"], {}, "-ttl-refresh", id="refresh = ttl"),
        pytest.param(
            [],
            {"REGISTRATOR_TTL": "10", "REGISTRATOR_TTL_REFRESH": "20"},
            "REGISTRATOR_TTL_REFRESH",
            id="refresh > ttl from env",
        ),
        pytest.param(["-ttl", "1"], {}, "-ttl", id="ttl 1 leaves no room for a refresh"),
        pytest.param(["-node-ttl", "1"], {}, "-node-ttl", id="node ttl 1 beats every 0 s"),
        pytest.param(
            [],
            {"REGISTRATOR_NODE_REAP_AFTER": "30"},
            "REGISTRATOR_NODE_REAP_AFTER",
            id="reap below Consul's minute",
        ),
        pytest.param(["-log-level", "loud"], {}, "-log-level", id="-log-level loud"),
        pytest.param([], {"REGISTRATOR_INTERNAL": "maybe"}, "REGISTRATOR_INTERNAL", id="env bool"),
        pytest.param(
            ["-internal"], {"REGISTRATOR_RESYNC": "x"}, "REGISTRATOR_RESYNC", id="env checked too"
        ),
        pytest.param([], {"CONSUL_HTTP_ADDR": "ftp://x"}, "CONSUL_HTTP_ADDR", id="ftp"),
        pytest.param([], {"CONSUL_HTTP_ADDR": "x:port"}, "CONSUL_HTTP_ADDR", id="bad port"),
        pytest.param([], {"CONSUL_CLIENT_KEY": "/k"}, "CONSUL_CLIENT_CERT", id="key, no cert"),
        pytest.param([], {"CONSUL_CLIENT_CERT": "/c"}, "CONSUL_CLIENT_KEY", id="cert, no key"),
    ],
)
def test_bad_configuration(argv: list[str], environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_args(argv, environ)
    assert named in str(raised.value)
    assert "\n" not in str(raised.value)


# One value each option's parser must refuse; options missing here must accept any text.
BAD_VALUES = {
    "internal": "maybe",
    "cleanup": "maybe",
    "explicit": "2",
    "ip": "999.1.1.1",
    "tags": "{{.Nope}}",
    "resync": "abc",
    "deregister": "sometimes",
    "retry_attempts": "-2",
    "retry_interval": "0",
    "ttl": "-1",
    "ttl_refresh": "soon",
    "node_ttl": "-5",
    "node_reap_after": "10m",
    "swarm_reap_after": "-1",
    "docker_health": "sure",
    "docker_health_initial": "ok",
    "docker_health_ttl": "2",
    "drain": "maybe",
    "deregister_on_exit": "maybe",
    "swarm_vip": "perhaps",
    "http_addr": "localhost:8080",
    "log_level": "loud",
    "log_format": "xml",
    "docker_host": "/var/run/docker.sock",
    "consul": "etcd://x",
    "consul_ssl_verify": "maybe",
}
BAD_OPTIONS = [opt for opt in OPTIONS if opt.field in BAD_VALUES]
TEXT_OPTIONS = [opt for opt in OPTIONS if opt.field not in BAD_VALUES]


def test_bad_value_table_names_real_options() -> None:
    assert set(BAD_VALUES) <= {opt.field for opt in OPTIONS}


@pytest.mark.parametrize("option", BAD_OPTIONS, ids=lambda opt: opt.names[0])
def test_every_option_names_itself_when_bad(option: Any) -> None:
    bad = BAD_VALUES[option.field]
    flag = f"-{option.names[0]}"
    argv = [f"{flag}={bad}"] if option.is_bool else [flag, bad]
    with pytest.raises(ConfigError, match=f"^{flag}: "):
        parse_args(argv, {})
    with pytest.raises(ConfigError, match=f"^{option.env}: "):
        parse_args([], {option.env: bad})


@pytest.mark.parametrize("option", TEXT_OPTIONS, ids=lambda opt: opt.names[0])
def test_text_options_take_any_text(option: Any) -> None:
    environ = {"CONSUL_CLIENT_CERT": "/c", "CONSUL_CLIENT_KEY": "/k"}
    settings = settings_of([f"-{option.names[0]}", " any: text "], environ)
    assert getattr(settings, option.field) == "any: text"


def test_usage_mentions_every_option_and_env_var() -> None:
    text = usage()
    for option in OPTIONS:
        assert f"[{option.env}]" in text
        for name in option.names:
            assert f"-{name}" in text
    assert "consul://" in text
