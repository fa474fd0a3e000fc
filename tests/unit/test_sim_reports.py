"""The citizen reports' generator: what it chooses to report, with a seed, and the GeoReport v2
form it sends (the HTTP side runs in tests/integration/test_sim_crews_reports.py)."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest

from simulators import cli
from simulators.reports import (
    ADDRESSES,
    DUPLICATE,
    FALSE,
    FAULT,
    FIRST_ADDRESS,
    SERVICE_CODES,
    Mix,
    Report,
    ReportGenerator,
    Spot,
    ThrottleLog,
    choose,
    client_addresses,
    next_wait,
)

SPOTS = [
    Spot("lighting", "LC-DIJ-001", "Dijon", 47.3220, 5.0410),
    Spot("lighting", "LC-DIJ-002", "Dijon", 47.3250, 5.0450),
    Spot("lighting", "LC-TAL-001", "Talant", 47.3370, 5.0050),
    Spot("traffic", "J-DIJ-001", "Dijon", 47.3200, 5.0400),
    Spot("bollard", "B-DIJ-001", "Dijon", 47.3230, 5.0420),
]
BY_NAME = {s.name: s for s in SPOTS}


def metres(report: Report) -> float:
    dlat = (report.lat - report.spot.lat) * 111_200
    dlon = (report.lon - report.spot.lon) * 111_200 * math.cos(math.radians(report.spot.lat))
    return math.hypot(dlat, dlon)


def draws(seed: int, faulty: set[str], n: int, mix: Mix = Mix()) -> list[Report | None]:
    """``n`` reports as the generator makes them: a report of a fault counts as reported."""
    rng = np.random.default_rng(seed)
    reported: Counter[str] = Counter()
    out = []
    for _ in range(n):
        r = choose(rng, SPOTS, faulty, reported, SERVICE_CODES, mix)
        if r is not None and r.nature != FALSE:
            reported[r.spot.name] += 1
        out.append(r)
    return out


def test_most_reports_are_about_real_faults_some_duplicates_some_false():
    faulty = {"LC-DIJ-002", "J-DIJ-001"}
    got = draws(7, faulty, 2000)
    assert None not in got  # there are faults: every draw reports something
    natures = Counter(r.nature for r in got if r)
    # The first report of each fault is one; then the share of duplicates and false ones.
    assert natures[FAULT] == len(faulty)
    assert 0.12 < natures[FALSE] / len(got) < 0.18
    assert natures[DUPLICATE] == len(got) - natures[FALSE] - natures[FAULT]  # reported faults stay reported
    for r in got:
        assert r is not None
        # A real fault's report is about a faulty device; a false one about a working one.
        assert (r.spot.name in faulty) == (r.nature != FALSE)
        assert r.service_code == SERVICE_CODES[r.spot.kind]
        assert metres(r) <= Mix().jitter_m + 1e-6  # a few metres off the equipment
    assert max(metres(r) for r in got if r) > Mix().jitter_m / 2  # jittered, not on the equipment
    assert {r.spot.name for r in got if r and r.nature == FALSE} == set(BY_NAME) - faulty


def test_the_same_seed_makes_the_same_reports_and_another_seed_others():
    faulty = {"LC-TAL-001"}
    assert draws(3, faulty, 50) == draws(3, faulty, 50)
    assert draws(3, faulty, 50) != draws(4, faulty, 50)


def test_a_fresh_fault_is_reported_before_it_is_duplicated():
    rng = np.random.default_rng(1)
    mix = Mix(duplicate_share=0.5, false_share=0.0)
    got = choose(rng, SPOTS, {"B-DIJ-001"}, {}, SERVICE_CODES, mix)
    assert got is not None and got.nature == FAULT and got.spot.name == "B-DIJ-001"
    # Another fault appears while the first is reported: the duplicates still come.
    later = [choose(rng, SPOTS, {"B-DIJ-001", "LC-DIJ-001"}, {"B-DIJ-001": 1}, SERVICE_CODES, mix) for _ in range(40)]
    assert {r.nature for r in later if r} == {FAULT, DUPLICATE}


def test_nothing_to_report_without_a_fault_unless_the_draw_is_false():
    got = draws(5, set(), 400)
    assert {r.nature for r in got if r} == {FALSE}
    assert 0.1 < sum(r is not None for r in got) / len(got) < 0.2  # false ones only, at their share
    assert all(r is None for r in draws(5, set(), 50, Mix(false_share=0.0)))


def test_only_kinds_with_a_service_code_are_reported():
    rng = np.random.default_rng(2)
    codes = {"lighting": "streetlight"}
    got = [choose(rng, SPOTS, {"J-DIJ-001", "LC-DIJ-001"}, {}, codes) for _ in range(200)]
    assert {r.spot.kind for r in got if r} == {"lighting"}


def test_the_form_is_georeport_v2_with_made_up_contact_details():
    rng = np.random.default_rng(9)
    r = choose(rng, SPOTS, {"LC-DIJ-001"}, {})
    assert r is not None
    form = r.form()
    assert set(form) == {
        "service_code",
        "lat",
        "long",
        "address_string",
        "description",
        "email",
        "first_name",
        "last_name",
        "phone",
    }
    assert form["service_code"] == "streetlight" and form["address_string"] == "Dijon"
    assert float(form["lat"]) == pytest.approx(r.lat, abs=1e-6) and float(form["long"]) == pytest.approx(r.lon, abs=1e-6)
    assert form["email"].endswith("@example.org") and form["phone"].startswith("+33 1 99 00 ")
    assert form["description"]
    keyed = r.form(api_key="k-1", jurisdiction_id="dijon-metropole")
    assert keyed["api_key"] == "k-1" and keyed["jurisdiction_id"] == "dijon-metropole"


def test_reports_come_at_the_daily_rate_of_simulated_time():
    rng = np.random.default_rng(0)
    waits = [next_wait(rng, 630) for _ in range(5000)]
    assert sum(waits) / len(waits) == pytest.approx(86_400 / 630, rel=0.05)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"duplicate_share": 1.5}, "fractions"),
        ({"false_share": -0.1}, "fractions"),
        ({"duplicate_share": 0.6, "false_share": 0.6}, "exceed 1"),
        ({"jitter_m": -1.0}, "jitter_m"),
        ({"jitter_m": math.inf}, "jitter_m"),
    ],
)
def test_a_bad_mix_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mix(**kwargs)


class Nothing:
    def spots(self) -> list[Spot]:
        return []

    def faulty(self) -> set[str]:
        return set()


@pytest.mark.parametrize(
    "url, per_day, message",
    [
        ("ftp://127.0.0.1/open311", 10, "http:// or https://"),
        ("127.0.0.1:8080", 10, "http:// or https://"),
        ("http://127.0.0.1:8080/open311/v2", 0, "positive"),
        ("http://127.0.0.1:8080/open311/v2", math.nan, "positive"),
    ],
)
def test_a_bad_generator_setting_is_refused(url, per_day, message):
    with pytest.raises(ValueError, match=message):
        ReportGenerator(Nothing(), url, per_day)


def test_the_requests_go_to_the_endpoints_requests_json():
    g = ReportGenerator(Nothing(), "http://127.0.0.1:8080/open311/v2/", 10)
    assert g.requests_url == "http://127.0.0.1:8080/open311/v2/requests.json"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["city", "--reports-per-day", "10"], "needs --open311"),
        (["city", "--reports-per-day", "-1", "--open311", "http://x/"], "zero or more"),
        (["city", "--report-services", "lighting"], "KIND=CODE"),
        (["city", "--report-services", "tram=stop"], "KIND=CODE"),
    ],
)
def test_the_cli_refuses_bad_report_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# -- many citizens, many addresses -----------------------------------------------------------------

LOCAL = "http://127.0.0.1:8080/open311/v2"


@pytest.mark.parametrize(
    "url, count, first, expected",
    [
        (LOCAL, 3, "127.3.11.1", ("127.3.11.1", "127.3.11.2", "127.3.11.3")),
        ("http://localhost:8080/open311/v2", 2, "127.9.0.254", ("127.9.0.254", "127.9.0.255")),
        ("http://127.200.0.1/open311/v2", 2, "127.0.0.2", ("127.0.0.2", "127.0.0.3")),  # any of 127/8
        (LOCAL, 1, "127.3.11.1", (None,)),  # one address: the system's choice, as one client
        ("http://192.0.2.10:8080/open311/v2", 32, "127.3.11.1", (None,)),  # a loopback address cannot reach it
        ("https://open311.example.org/v2", 32, "127.3.11.1", (None,)),  # a name is not resolved
        ("http://[::1]:8080/open311/v2", 32, "127.3.11.1", (None,)),  # IPv6 has one loopback address
    ],
)
def test_reports_leave_from_many_loopback_addresses_only_to_a_loopback_target(url, count, first, expected):
    assert client_addresses(url, count, first) == expected


def test_the_default_spread_is_a_few_dozen_addresses_on_loopback():
    g = ReportGenerator(Nothing(), LOCAL, 10)
    assert len(g.addresses) == ADDRESSES == 32 and g.addresses[0] == FIRST_ADDRESS
    assert len(set(g.addresses)) == 32
    assert ReportGenerator(Nothing(), "http://192.0.2.10/open311/v2", 10).addresses == (None,)


@pytest.mark.parametrize(
    "count, first, message",
    [
        (0, FIRST_ADDRESS, "from 1 to 1024, not 0"),
        (-3, FIRST_ADDRESS, "from 1 to 1024"),
        (1025, FIRST_ADDRESS, "from 1 to 1024"),
        (2.5, FIRST_ADDRESS, "from 1 to 1024"),
        (True, FIRST_ADDRESS, "from 1 to 1024"),
        (8, "nowhere", "'nowhere' is not an IP address"),
        (8, "127.3.11", "is not an IP address"),
        (8, "10.0.0.1", "not in 127.0.0.0/8"),
        (8, "::1", "not in 127.0.0.0/8"),
        (8, "127.0.0.0", "leave 127.0.0.1-127.255.255.254"),
        (32, "127.255.255.240", "leave 127.0.0.1-127.255.255.254"),
    ],
)
def test_a_bad_address_setting_is_refused_whatever_the_target(count, first, message):
    for url in (LOCAL, "http://192.0.2.10/open311/v2"):  # bad everywhere, even where it is unused
        with pytest.raises(ValueError, match=re.escape(message)):
            client_addresses(url, count, first)
    with pytest.raises(ValueError, match=re.escape(message)):
        ReportGenerator(Nothing(), LOCAL, 10, addresses=count, first_address=first)


def test_the_citizens_addresses_do_not_change_what_they_report():
    """The address is drawn from its own stream: with or without the spread, the same reports."""
    spread = ReportGenerator(Nothing(), LOCAL, 10, seed=3)
    one = ReportGenerator(Nothing(), LOCAL, 10, seed=3, addresses=1)
    assert [spread.rng.random() for _ in range(5)] == [one.rng.random() for _ in range(5)]
    picks = spread.address_rng.integers(len(spread.addresses), size=200)
    assert len(set(picks.tolist())) == 32  # every address in use


def test_429s_are_logged_at_the_first_then_once_a_window_and_the_rest_at_the_end():
    t = ThrottleLog(60.0)
    logged = [t.note(now) for now in (0.0, 1.0, 2.0, 59.9, 60.0, 61.0, 200.0, 201.0, 202.0)]
    # first: 1; at 60 s the 4 since (1, 2, 59.9, 60); at 200 s the 2 since (61, 200)
    assert logged == [1, 0, 0, 0, 4, 0, 2, 0, 0]
    assert t.flush() == 2 and t.flush() == 0  # the end: what the last window held, once
    assert t.total == 9 == sum(logged) + 2
    with pytest.raises(ValueError, match="seconds"):
        ThrottleLog(math.nan)


def test_the_stats_say_what_became_of_the_reports():
    g = ReportGenerator(Nothing(), LOCAL, 10, addresses=4)
    assert g.stats() == {
        "sent": 0, "accepted": 0, "refused": 0, "throttled": 0, "failed": 0, "skipped": 0, "addresses": 4,
    }  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--report-addresses", "0"], "from 1 to 1024, not 0"),
        (["--report-addresses", "many"], "invalid int value"),
        (["--report-first-address", "10.1.2.3"], "not in 127.0.0.0/8"),
        (["--report-first-address", "localhost"], "is not an IP address"),
    ],
)
def test_the_cli_refuses_bad_report_addresses(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["city", "--reports-per-day", "10", "--open311", LOCAL, *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
