"""Who the client is behind the city's reverse proxy (scada/operations/proxies.py), and
operations.yaml's ``http.trusted_proxies`` that says which proxies are trusted.

The resolution is pure (a peer, the X-Forwarded-For lines, the trusted networks); the
middleware that applies it is tried here through aiohttp's test server with a garbage header
(never a 500), and for real in tests/integration/test_http_proxy.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft7Validator
from structlog.testing import capture_logs

from city_scada import load_config
from common.yamlsrc import ConfigError
from scada.config import Config
from scada.front.orders import OrdersMirror
from scada.operations import config as ops_config_loader
from scada.operations.http import OpsHttp
from scada.operations.model import REQUEST_CITIZEN_REPORT
from scada.operations.proxies import ClientResolver, parse_address, parse_network
from tests.ops_city import city, ops_config, tag_table
from tests.ports import free_port
from tests.unit.test_operations_config import load_ops

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "scada" / "schemas" / "operations.schema.json"
PROXY = "10.0.0.5"
TRUSTED = (ipaddress.ip_network(PROXY), ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("2001:db8:1::/48"))


def resolve(peer: str | None, *forwarded: str, trusted=TRUSTED, resolver: ClientResolver | None = None) -> str | None:
    return (resolver or ClientResolver()).client(peer, list(forwarded), trusted)


# -- resolution ----------------------------------------------------------------------------------


def test_a_trusted_proxy_names_the_client_one_hop() -> None:
    assert resolve(PROXY, "203.0.113.7") == "203.0.113.7"
    assert resolve(PROXY) == PROXY  # no header: the proxy itself (its health check)


def test_several_hops_skip_the_trusted_proxies_from_the_right() -> None:
    # The citizen, then a load balancer (10.1.2.3) that the TLS proxy (the peer) appended.
    assert resolve(PROXY, "203.0.113.7, 10.1.2.3") == "203.0.113.7"
    # What the citizen wrote itself is left of its own address: never read.
    assert resolve(PROXY, "192.0.2.1, 203.0.113.7, 10.1.2.3") == "203.0.113.7"
    assert resolve(PROXY, "not an address, 203.0.113.7") == "203.0.113.7"
    # Several header lines are one list, in order.
    assert resolve(PROXY, "192.0.2.1", "203.0.113.7", "10.1.2.3") == "203.0.113.7"
    # Every hop trusted: the leftmost (a request from the proxies' own network).
    assert resolve(PROXY, "10.1.9.9, 10.1.2.3") == "10.1.9.9"


def test_a_header_from_an_untrusted_peer_is_ignored() -> None:
    assert resolve("198.51.100.9", "203.0.113.7") == "198.51.100.9"
    assert resolve("198.51.100.9", "10.0.0.5") == "198.51.100.9"  # claiming to be the proxy changes nothing
    assert resolve(PROXY, "203.0.113.7", trusted=()) == PROXY  # none trusted: the default
    assert resolve(None, "203.0.113.7") is None  # no peer address (a Unix socket): nothing to trust


def test_ipv6_peers_and_entries() -> None:
    assert resolve("2001:db8:1::10", "2001:db8:99::7") == "2001:db8:99::7"
    assert resolve("2001:db8:1::10", "[2001:db8:99::7]:4711, 2001:db8:1::20") == "2001:db8:99::7"
    assert resolve("2001:db8:1::10", "203.0.113.7") == "203.0.113.7"  # an IPv4 citizen through an IPv6 hop
    assert resolve("2001:db8:2::10", "203.0.113.7") == "2001:db8:2::10"  # outside the trusted /48
    # A dual-stack socket's IPv4-mapped peer is the IPv4 proxy.
    assert resolve("::ffff:10.0.0.5", "2001:db8:99::7") == "2001:db8:99::7"
    assert resolve(PROXY, "203.0.113.7:51234") == "203.0.113.7"  # some proxies add the port


@pytest.mark.parametrize(
    "header",
    ["unknown", "", "203.0.113.7,", "proxy.city", "203.0.113.999", "[2001:db8::1", "1.2.3.4:x", "\x00\x01"],
)
def test_garbage_from_a_trusted_proxy_is_the_proxys_address(header: str) -> None:
    assert resolve(PROXY, header) == PROXY


def test_garbage_is_logged_at_a_bounded_rate() -> None:
    now = [0.0]
    resolver = ClientResolver(monotonic=lambda: now[0], log_every_s=60.0)
    with capture_logs() as logs:
        for _ in range(100):
            assert resolve(PROXY, "unknown", resolver=resolver) == PROXY
        now[0] = 61.0
        assert resolve(PROXY, "x" * 5000, resolver=resolver) == PROXY
    warnings = [e for e in logs if e["event"] == "http_forwarded_unreadable"]
    assert [w["count"] for w in warnings] == [1, 100]  # the second says how many since the first
    assert warnings[0]["peer"] == PROXY and len(warnings[1]["header"]) <= 203  # shown cut
    assert resolver.garbage == 101


def test_entries_parse_as_addresses_with_or_without_a_port() -> None:
    assert str(parse_address(" 203.0.113.7 ")) == "203.0.113.7"
    assert str(parse_address("[::1]")) == "::1"
    assert parse_address("[::1]:99999999") is None
    assert str(parse_address("::ffff:192.0.2.1")) == "192.0.2.1"


# -- the middleware: a garbage header is never a 500 ------------------------------------------------


async def test_the_listener_takes_a_report_whatever_the_proxy_writes(tmp_path: Path) -> None:
    clients: list[str] = []

    async def core(op: str, *args: Any) -> Any:
        assert op == REQUEST_CITIZEN_REPORT
        clients.append(args[6])  # the client the report records (and the core audits)
        return (0, "", f"CR-{len(clients):06d}", "")

    config = city(tmp_path / "cfg")
    ops = ops_config(rate_burst=50, rate_per_minute=600)
    ops = dataclasses.replace(
        ops, http=dataclasses.replace(ops.http, trusted_proxies=(ipaddress.ip_network("127.0.0.1"),))
    )
    http = OpsHttp(config, ops, ("127.0.0.1", 0), tag_table(config), None, OrdersMirror(), core)
    form = {"service_code": "streetlight", "lat": "47.3221", "long": "5.0412"}
    async with TestClient(TestServer(http.app(), host="127.0.0.1", port=free_port())) as client:
        for header in ("203.0.113.7", "unknown", "\u00e9t\u00e9, ,", "2001:db8::7"):
            r = await client.post("/open311/v2/requests.json", data=form, headers={"X-Forwarded-For": header})
            assert r.status == 201, await r.text()
        assert clients == ["203.0.113.7", "127.0.0.1", "127.0.0.1", "2001:db8::7"]
        # A reload that trusts no proxy any more: the header is ignored from the next request on.
        http.rebind(
            config, dataclasses.replace(ops, http=dataclasses.replace(ops.http, trusted_proxies=())), http.tags, None
        )
        r = await client.post("/open311/v2/requests.json", data=form, headers={"X-Forwarded-For": "203.0.113.7"})
        assert r.status == 201 and clients[-1] == "127.0.0.1"


# -- operations.yaml: http.trusted_proxies ---------------------------------------------------------

BASE = """\
services:
  lighting_maintenance:
    delays:
      default: {on_site: 48h, repaired: 5d}
    open311: {code: streetlight}
http:
  listen: 127.0.0.1:8080
"""


@pytest.fixture(scope="module")
def shipped() -> Config:
    return load_config(ROOT)


def test_trusted_proxies_load_as_networks(tmp_path: Path, shipped: Config) -> None:
    assert load_ops(tmp_path, shipped, BASE).http.trusted_proxies == ()  # default: none
    text = (
        BASE
        + "  trusted_proxies:\n    - 10.0.0.5\n    - 10.1.0.0/16\n    - 2001:db8:1::/48\n    - '::ffff:10.2.0.0/112'\n"
    )
    ops = load_ops(tmp_path, shipped, text)
    assert [str(n) for n in ops.http.trusted_proxies] == [
        "10.0.0.5/32",
        "10.1.0.0/16",
        "2001:db8:1::/48",
        "10.2.0.0/16",
    ]
    assert load_ops(tmp_path, shipped, BASE + "  trusted_proxies: 10.0.0.0/8\n").http.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),)  # fmt: skip
    assert load_ops(tmp_path, shipped, BASE + "  trusted_proxies: []\n").http.trusted_proxies == ()
    summary = "\n".join(ops_config_loader.summary(ops))
    assert "trusted proxies 10.0.0.5/32, 10.1.0.0/16, 2001:db8:1::/48, 10.2.0.0/16 (X-Forwarded-For)" in summary
    assert "the client is the TCP peer" in "\n".join(ops_config_loader.summary(load_ops(tmp_path, shipped, BASE)))


@pytest.mark.parametrize(
    ("entries", "line", "key", "message"),
    [
        ("    - 10.0.0.5\n    - proxy.city\n", 10, "http.trusted_proxies[1]", "not a host name"),
        ("    - 10.0.0.1/8\n", 9, "http.trusted_proxies[0]", "host bits set: the network is 10.0.0.0/8"),
        ("    - 10.0.0.0/33\n", 9, "http.trusted_proxies[0]", "expected an IP address or a network"),
        ("    - 0.0.0.0/0\n", 9, "http.trusted_proxies[0]", "trusts every address"),
        ("    - '::/0'\n", 9, "http.trusted_proxies[0]", "trusts every address"),
        (
            "    - 10.0.0.5\n    - 10.0.0.5/32\n",
            10,
            "http.trusted_proxies[1]",
            "listed twice: already 10.0.0.5 (line 9)",
        ),
        ("    - 10\n", 9, "http.trusted_proxies[0]", "as text"),
        ("    - {a: 1}\n", 9, "http.trusted_proxies[0]", "as text"),
        ("", 8, "http.trusted_proxies", "no value given"),
    ],
)
def test_bad_trusted_proxies_are_located_errors(
    tmp_path: Path, shipped: Config, entries: str, line: int, key: str, message: str
) -> None:
    text = BASE + "  trusted_proxies:\n" + entries
    with pytest.raises(ConfigError) as info:
        load_ops(tmp_path, shipped, text)
    e = info.value
    assert e.file.endswith("operations.yaml") and (e.line, e.key) == (line, key), e
    assert message in e.message, e


def test_a_mapping_is_not_a_list(tmp_path: Path, shipped: Config) -> None:
    with pytest.raises(ConfigError) as info:
        load_ops(tmp_path, shipped, BASE + "  trusted_proxies: {proxy: 10.0.0.5}\n")
    assert (info.value.line, info.value.key) == (8, "http.trusted_proxies") and "expected a list" in info.value.message


def test_parse_network_says_what_is_wrong() -> None:
    assert parse_network(" 10.0.0.5 ") == ipaddress.ip_network("10.0.0.5/32")
    with pytest.raises(ValueError, match="host bits set"):
        parse_network("2001:db8::1/64")


def _validator() -> Draft7Validator:
    return Draft7Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def test_the_schema_takes_what_the_loader_takes() -> None:
    for value in ("10.0.0.5", ["10.0.0.5", "10.1.0.0/16", "2001:db8:1::/48", "::1"], []):
        doc = {**yaml.safe_load(BASE)}
        doc["http"] = {**doc["http"], "trusted_proxies": value}
        assert [e.message for e in _validator().iter_errors(doc)] == [], value


@pytest.mark.parametrize("value", [["proxy.city"], ["10.0.0.0/33"], [10], {"a": "10.0.0.5"}, ["10.0.0.256"]])
def test_the_schema_and_the_loader_refuse_the_same_mistakes(tmp_path: Path, shipped: Config, value: Any) -> None:
    doc = {**yaml.safe_load(BASE)}
    doc["http"] = {**doc["http"], "trusted_proxies": value}
    assert list(_validator().iter_errors(doc)), value
    with pytest.raises(ConfigError):
        load_ops(tmp_path, shipped, yaml.safe_dump(doc))
