"""Pure: which ids Consul's agent endpoints can address in a URL path, and how to write them.

`PUT /v1/agent/service/register` takes the id in its JSON body and accepts almost anything,
but deregistering, reading, maintenance and check updates name the id in the path
(`/v1/agent/service/deregister/{id}`, `/v1/agent/check/update/{check_id}`, ...). An id those
paths cannot address stays in the catalog after its container is gone. Measured against
Consul 1.14 (every id percent-encoded as one path segment, `/` included):

| id                                   | register | id in a path                                  |
|--------------------------------------|----------|-----------------------------------------------|
| `a/b`, `a?b`, `a#b`, `a%b`, `a b`,   | 200      | 200: works once encoded                       |
| unicode, 1 MB of `x`                 |          |                                               |
| `/a`, `a//b`, `.`, `..`, `a/./b`,    | 200      | 301: Go's router decodes the path, cleans     |
| `a/..`, `./a`                        |          | `//`, `.` and `..` away and redirects          |
| tab, newline, NUL, DEL, U+00A0,      | 200      | 400: Consul refuses a path with a character   |
| U+200B, U+3000, private use          |          | that is not printable (Go's unicode.IsPrint)  |
| 1.1 MB of `x`                        | 200      | 431: request line and headers over 1 MiB      |
| empty                                | 200      | Consul uses the service name as the id        |
"""

from __future__ import annotations

from urllib.parse import quote

# Go's http.Server reads at most 1 MiB of request line and headers (DefaultMaxHeaderBytes);
# half of it leaves room for the path prefix, the query and the headers.
MAX_ENCODED_ID = 512 * 1024


def path_segment(value: str) -> str:
    """`value` as one URL path segment: everything but unreserved characters percent-encoded,
    `/` included, so an id with a slash stays one segment."""
    return quote(value, safe="")


def unaddressable(value: str) -> str:
    """Why Consul's id-in-path endpoints cannot address `value`, or "" if they can."""
    if not value:
        return "an empty id is replaced by the service name in Consul"
    bad = next((char for char in value if not char.isprintable()), None)
    if bad is not None:
        # str.isprintable and Go's unicode.IsPrint agree: letters, marks, numbers,
        # punctuation, symbols and the ASCII space.
        return (
            f"contains the non-printable character U+{ord(bad):04X}, which Consul refuses in "
            "a URL path"
        )
    segments = value.split("/")
    if value.startswith("/") or "" in segments[1:-1] or {".", ".."} & set(segments):
        return (
            "an empty, '.' or '..' path segment (a leading '/', '//', '/./', '/../') is "
            "cleaned out of the URL by Consul's HTTP router, so the id cannot be named"
        )
    if len(path_segment(value)) > MAX_ENCODED_ID:
        return (
            f"longer than {MAX_ENCODED_ID // 1024} KiB once URL-encoded: Consul's HTTP server "
            "reads at most 1 MiB of request line and headers"
        )
    return ""
