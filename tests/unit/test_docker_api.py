"""Tables for the Docker client's pure decisions: which API version to speak, and what a
failed call means (a gone container, a refused version), across the engines we support."""

from __future__ import annotations

import pytest

from registrator.apiclient import APIError
from registrator.consul import ConsulError
from registrator.docker import (
    MAX_API_VERSION,
    DockerError,
    StreamFrames,
    choose_api_version,
    stalled_exec,
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


def frame(stream: int, payload: bytes) -> bytes:
    """One frame of Docker's multiplexed stream (stream byte, 3 zero bytes, uint32 BE size)."""
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param([frame(1, b"a\nb\n")], b"a\nb\n", id="one frame"),
        pytest.param([], b"", id="empty stream"),
        pytest.param([frame(1, b"")], b"", id="empty frame"),
        pytest.param(
            [frame(1, b"hello\n")[:3], frame(1, b"hello\n")[3:10], frame(1, b"hello\n")[10:]],
            b"hello\n",
            id="one frame split across chunks, header included",
        ),
        pytest.param(
            [frame(1, b"one\n") + frame(2, b"oops\n")[:5], frame(2, b"oops\n")[5:]],
            b"one\noops\n",
            id="a chunk ending inside the next header",
        ),
        pytest.param(
            [frame(1, b"out1\n") + frame(2, b"err\n") + frame(1, b"out2\n")],
            b"out1\nerr\nout2\n",
            id="stdout and stderr interleaved, in order",
        ),
        pytest.param([frame(1, b"ok\n") + b"\x01\x00\x00"], b"ok\n", id="truncated header"),
        pytest.param(
            [frame(1, b"ok\n") + frame(1, b"partial line")[:12]],
            b"ok\npart",
            id="last frame cut short: what arrived",
        ),
        pytest.param([frame(1, b"a\r\nb")], b"a\r\nb", id="payload kept byte for byte"),
    ],
)
def test_stream_frames(chunks: list[bytes], expected: bytes) -> None:
    frames = StreamFrames()
    for chunk in chunks:
        frames.feed(chunk)
    assert frames.output() == expected


def test_stream_frames_keeps_the_end_of_long_output() -> None:
    frames = StreamFrames()
    for n in range(5000):
        frames.feed(frame(1, f"line {n}\n".encode()))
    output = frames.output()
    assert output.endswith(b"line 4999\n")
    assert len(output) <= 4 * 4096


@pytest.mark.parametrize(
    ("state", "stalled"),
    [
        pytest.param({"Running": True, "ExitCode": 0}, False, id="still running: it overran"),
        pytest.param({"Running": False, "ExitCode": 0}, True, id="ended: Docker stalled"),
        pytest.param({"Running": False, "ExitCode": 137}, True, id="killed, answer late"),
        pytest.param(None, True, id="no answer document"),
    ],
)
def test_stalled_exec(state: object, stalled: bool) -> None:
    error = stalled_exec(state, 35)
    assert (error is not None) == stalled
    if error is not None:
        assert "35 s" in str(error) and "Docker stalled" in str(error)
