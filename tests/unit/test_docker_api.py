"""Tables for the Docker client's pure decisions: which API version to speak, and what a
failed call means (a gone container, a refused version), across the engines we support."""

from __future__ import annotations

import pytest

from registrator.apiclient import APIError
from registrator.consul import ConsulError
from registrator.docker import (
    MAX_API_VERSION,
    DockerError,
    choose_api_version,
)


@pytest.mark.parametrize(
    ("server", "server_min", "expected"),
    [
        pytest.param((1, 41), (1, 12), (1, 41), id="Debian 20.10: its own version"),
        pytest.param((1, 55), (1, 40), (1, 55), id="Engine 29.7: newest both speak"),
        pytest.param((1, 55), (1, 44), (1, 55), id="Engine 29 with a 1.44 floor"),
        pytest.param((1, 41), (1, 24), (1, 41), id="Podman 4.3 compat API"),
        pytest.param((1, 60), (1, 40), MAX_API_VERSION, id="newer daemon: our newest"),
        pytest.param((1, 60), (1, 55), (1, 55), id="floor exactly our newest"),
        pytest.param((1, 24), (1, 12), (1, 24), id="oldest we read"),
    ],
)
def test_choose_api_version(
    server: tuple[int, int], server_min: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert choose_api_version(server, server_min) == expected


@pytest.mark.parametrize(
    ("server", "server_min", "names"),
    [
        pytest.param((1, 60), (1, 56), ("1.56 to 1.60", "1.24 to 1.55"), id="floor above ours"),
        pytest.param((1, 23), (1, 12), ("1.12 to 1.23", "1.24 to 1.55"), id="daemon too old"),
    ],
)
def test_no_common_version_names_both_ranges(
    server: tuple[int, int], server_min: tuple[int, int], names: tuple[str, str]
) -> None:
    with pytest.raises(DockerError) as caught:
        choose_api_version(server, server_min)
    assert not caught.value.transient, "waiting cannot fix a version mismatch"
    for text in names:
        assert text in str(caught.value)


def refusal(status: int, body: str) -> DockerError:
    return DockerError(f"GET /x: HTTP {status}: {body}", status=status, body=body)


@pytest.mark.parametrize(
    ("error", "gone", "version_refused"),
    [
        pytest.param(
            refusal(404, '{"message":"No such container: abc"}'), True, False, id="docker 404"
        ),
        pytest.param(
            refusal(
                500,
                '{"cause":"no such container","message":"no container with name or'
                ' ID \\"abc\\" found: no such container","response":500}',
            ),
            True,
            False,
            id="podman 500",
        ),
        pytest.param(refusal(500, "Error: No such object: abc"), True, False, id="no such object"),
        pytest.param(
            refusal(
                400,
                '{"message":"client version 1.43 is too old. Minimum supported API version'
                ' is 1.44, please upgrade your client to a newer version"}',
            ),
            False,
            True,
            id="floor raised",
        ),
        pytest.param(
            refusal(
                400,
                '{"message":"client version 1.55 is too new. Maximum supported API'
                ' version is 1.41"}',
            ),
            False,
            True,
            id="daemon downgraded",
        ),
        pytest.param(refusal(500, "internal error"), False, False, id="outage"),
        pytest.param(refusal(400, "bad filter"), False, False, id="other 400"),
        pytest.param(DockerError("GET /x: ClientConnectorError"), False, False, id="no answer"),
    ],
)
def test_error_kinds(error: DockerError, gone: bool, version_refused: bool) -> None:
    assert (error.gone, error.version_refused) == (gone, version_refused)


def test_one_error_hierarchy() -> None:
    assert issubclass(DockerError, APIError)
    assert issubclass(ConsulError, APIError)
