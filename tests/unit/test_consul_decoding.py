"""How ConsulClient.services decodes `GET /v1/agent/services`: each entry keeps the fields its
callers read (ID, Service, Address, Port, Kind, Meta) and nothing else, whatever the service
ids or Meta keys are called. Against the real Consul: tests/integration/test_consul_listing.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from registrator.consul import _entry_fields

ENTRY = {
    "ID": "web-1",
    "Service": "web",
    "Tags": ["a"],
    "Meta": {"registrator-node": "n1"},
    "Port": 80,
    "Address": "198.18.0.5",
    "TaggedAddresses": {"lan_ipv4": {"Address": "198.18.0.5", "Port": 80}},
    "Weights": {"Passing": 1, "Warning": 1},
    "EnableTagOverride": False,
    "Datacenter": "dc1",
}
KEPT = {
    "ID": "web-1",
    "Service": "web",
    "Meta": {"registrator-node": "n1"},
    "Port": 80,
    "Address": "198.18.0.5",
}
# Meta keys that look like an entry's fields (Meta values are always strings).
ODD_META = {"ID": "x", "Meta": "y", "Tags": "z", "Weights": "w"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param({"web-1": ENTRY}, {"web-1": KEPT}, id="the unread fields go"),
        pytest.param(
            {"p": {**ENTRY, "ID": "p", "Kind": "connect-proxy", "Proxy": {"Config": {"a": 1}}}},
            {"p": {**KEPT, "ID": "p", "Kind": "connect-proxy"}},
            id="Kind kept, Proxy dropped",
        ),
        pytest.param(
            {"web-1": {**ENTRY, "Meta": ODD_META}},
            {"web-1": {**KEPT, "Meta": ODD_META}},
            id="Meta whole, whatever its keys",
        ),
        pytest.param(
            {"ID": {**ENTRY, "ID": "ID"}, "Meta": {**ENTRY, "ID": "Meta"}},
            {"ID": {**KEPT, "ID": "ID"}, "Meta": {**KEPT, "ID": "Meta"}},
            id="services whose ids are field names",
        ),
        pytest.param(
            {"p": {**ENTRY, "Proxy": {"Config": {"ID": "inner", "Meta": {}, "Tags": ["t"]}}}},
            {"p": KEPT},
            id="an entry-shaped object inside Proxy goes with it",
        ),
        pytest.param(
            {"bare": {"ID": "bare", "Service": "s", "Tags": []}},
            {"bare": {"ID": "bare", "Service": "s", "Tags": []}},
            id="without Meta: left as Consul gave it",
        ),
        pytest.param({}, {}, id="no services"),
    ],
)
def test_services_answer_keeps_only_the_read_fields(
    answer: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert json.loads(json.dumps(answer), object_pairs_hook=_entry_fields) == expected
