"""Refusals audited at a bounded rate (scada/security/refusal_audit.py): per key, per client, the
summaries at the end of a window, allowed acts and logins never aggregated, bounded memory."""

from __future__ import annotations

import asyncio
import json

import pytest

from scada.security.audit import AuditRecord, MemoryAudit
from scada.security.refusal_audit import OTHERS, PER_KEY, Budget, RefusalAudit, client_of, refusal_audit_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(
    i: int = 0,
    action: str = "denied",
    target: str = "Write",
    result: str = "BadUserAccessDenied",
    session: str = "",
    address: str = "127.0.0.1:5000",
) -> AuditRecord:
    return AuditRecord(i, action, "anonymous", ("Observer",), session, address, "", target, "{}", result)


def limiter(**kw) -> tuple[RefusalAudit, MemoryAudit, Clock]:
    sink, clock = MemoryAudit(), Clock()
    return RefusalAudit(sink, Budget(**kw), clock=clock), sink, clock


def summaries(sink: MemoryAudit) -> list[dict]:
    return [json.loads(r.arguments) | {"_target": r.target} for r in sink.records if "not_audited" in r.arguments]


def test_the_first_refusals_of_a_key_are_recorded_then_one_summary_at_the_end_of_the_window() -> None:
    audit, sink, clock = limiter(per_key=3)
    for i in range(10):
        audit.record(refusal(i))
    assert [r.time_ns for r in sink.records] == [0, 1, 2]
    assert audit.not_recorded == 7 and audit.flush() == 0  # the window is still open
    clock.now += 60
    assert audit.flush() == 1
    last = sink.records[-1]
    assert (last.action, last.target, last.result, last.user) == ("denied", "Write", "BadUserAccessDenied", "anonymous")
    assert json.loads(last.arguments) == {"not_audited": 7, "window_s": 60.0, "first_ns": 3, "last_ns": 9}
    audit.record(refusal(20))  # a new window: recorded again
    assert sink.records[-1].time_ns == 20


def test_keys_are_client_target_and_code() -> None:
    audit, sink, _ = limiter(per_key=1)
    audit.record(refusal(1))
    audit.record(refusal(2, target="Browse"))
    audit.record(refusal(3, result="BadServiceUnsupported"))
    audit.record(refusal(4, address="127.0.0.2:6000"))
    audit.record(refusal(5, address="127.0.0.1:5001"))  # the same address, another connection
    audit.record(refusal(6, session="ns=1;g=1"))
    assert [r.time_ns for r in sink.records] == [1, 2, 3, 4, 6]
    assert client_of(refusal(session="s")) == "s" and client_of(refusal()) == "127.0.0.1"


def test_allowed_acts_and_logins_are_never_aggregated() -> None:
    audit, sink, _ = limiter(per_key=1, per_client=1)
    audit.record(refusal(1))
    audit.record(refusal(2))  # counted
    audit.record(refusal(3, result="Good"))
    audit.record(refusal(4, action="call", target="i=1", result="Good"))
    for i in range(5, 9):
        audit.record(refusal(i, action="activate_session", target="ns=1;g=2"))  # failed logins: every one
    assert [r.time_ns for r in sink.records] == [1, 3, 4, 5, 6, 7, 8]


def test_targets_a_client_chooses_cost_bounded_records_and_memory() -> None:
    audit, sink, clock = limiter(per_key=5, per_client=10, max_keys=4)
    for i in range(1000):
        audit.record(refusal(i, action="subscription", target=f"subscription {i}"))
    assert len(sink.records) == 4  # one per key while the keys last; the rest under "*"
    (window,) = audit._windows.values()
    assert len(window.keys) == 5
    clock.now += 60
    audit.flush()
    assert summaries(sink) == [{"_target": OTHERS, "not_audited": 996, "window_s": 60.0, "first_ns": 4, "last_ns": 999}]


def test_a_client_budget_covers_all_its_keys() -> None:
    audit, sink, clock = limiter(per_key=5, per_client=8)
    for i in range(40):
        audit.record(refusal(i, target=("Write", "Browse", "Read", "Call")[i % 4]))
    assert len(sink.records) == 8
    clock.now += 60
    assert audit.flush() == 4 and sum(s["not_audited"] for s in summaries(sink)) == 32


def test_many_clients_share_one_budget_beyond_the_table() -> None:
    audit, sink, clock = limiter(per_key=1, max_clients=3)
    for i in range(10):
        audit.record(refusal(i, address=f"10.0.0.{i}:1"))
    assert [r.time_ns for r in sink.records] == [0, 1, 2, 3]  # 3 clients, then "*" once
    assert len(audit._windows) == 4
    clock.now += 60
    audit.flush()
    assert summaries(sink)[0]["not_audited"] == 6 and not audit._windows


def test_a_window_past_its_end_is_closed_by_the_next_refusal_of_the_client() -> None:
    audit, sink, clock = limiter(per_key=1)
    audit.record(refusal(1))
    audit.record(refusal(2))
    clock.now += 61
    audit.record(refusal(3))
    assert [json.loads(r.arguments).get("not_audited") for r in sink.records] == [None, 1, None]


def test_the_summary_comes_by_itself_when_the_window_ends_on_a_loop() -> None:
    async def run() -> MemoryAudit:
        sink = MemoryAudit()
        audit = RefusalAudit(sink, Budget(per_key=1, window_s=0.05))
        for i in range(3):
            audit.record(refusal(i))
        while len(sink.records) < 2:  # the timer's summary, no further refusal needed
            await asyncio.sleep(0.01)
        return sink

    sink = asyncio.run(asyncio.wait_for(run(), 30))
    assert json.loads(sink.records[1].arguments)["not_audited"] == 2


def test_an_error_of_the_limiter_records_the_refusal_as_it_is() -> None:
    audit, sink, _ = limiter()
    audit.clock = None  # type: ignore[assignment]  # a bug in the limiter: calling it raises
    audit.record(refusal(1))
    assert [r.time_ns for r in sink.records] == [1]


def test_one_limiter_per_sink_shared_by_its_callers() -> None:
    sink = MemoryAudit()
    assert refusal_audit_for(sink) is refusal_audit_for(sink)
    own = RefusalAudit(sink)
    assert refusal_audit_for(own) is own


@pytest.mark.parametrize("action", ["denied", "register_server", "call", "alarm_action", "subscription", "limit"])
def test_each_refusal_action_is_aggregated(action: str) -> None:
    audit, sink, _ = limiter(per_key=1)
    audit.record(refusal(1, action=action))
    audit.record(refusal(2, action=action))
    assert len(sink.records) == 1 and audit.not_recorded == 1


def test_a_full_table_first_closes_the_windows_that_ended() -> None:
    audit, sink, clock = limiter(per_key=1, max_clients=2)
    audit.record(refusal(1, address="10.0.0.1:1"))
    audit.record(refusal(2, address="10.0.0.1:1"))  # counted
    clock.now += 30
    audit.record(refusal(3, address="10.0.0.2:1"))
    clock.now += 31  # the first window has ended, the second not
    audit.record(refusal(4, address="10.0.0.3:1"))
    assert list(audit._windows) == ["10.0.0.2", "10.0.0.3"]  # the newcomer has a budget of its own
    assert [json.loads(r.arguments).get("not_audited") for r in sink.records] == [None, None, 1, None]


def test_certificate_and_channel_refusals_are_at_a_bounded_rate():
    """A client retrying a refused certificate or a None channel in a loop: the first PER_KEY
    refusals recorded, the rest counted (scada.opcua.endpoints.ClientCertificates)."""
    from scada.opcua.endpoints import ClientCertificates
    from scada.security.audit import MemoryAudit

    sink = MemoryAudit()
    checks = ClientCertificates(None, sink)  # type: ignore[arg-type]  # the verifier is not used here
    for _ in range(3 * PER_KEY):
        checks.policy_refused("10.0.0.9:5000", "http://opcfoundation.org/UA/SecurityPolicy#None", "None", 1)
    assert len(sink.records) == PER_KEY
    assert {r.action for r in sink.records} == {"secure_channel"}
