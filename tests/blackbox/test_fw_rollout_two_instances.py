"""Two cmsd instances on one database agree on a staged rollout (sql/016):
the devices of stage 1 report their installs through both at once, and the
stage advances exactly once (one rollout_stage_advanced row, whichever
instance's evaluation or tick got there first); two operators pausing at the
same moment through different instances get one 200 and one 409 (audited).
Python ssl / http.client as the devices, curl as the operators."""

import concurrent.futures
import json
import time

import pytest

import helpers as h
from fw_helpers import fw_cmsd, fw_devices  # noqa: F401  (fixtures)
from fw_helpers import report, start_fw_cmsd, stop_checked, wait_audit
from test_fw_rollout import (action, by_hash, create, offered, release_for, rollout_devices,  # noqa: F401
                             show, wait_state)


@pytest.fixture(scope="module")
def second_cmsd(pki, db, fw_devices):
    c = start_fw_cmsd(pki, db, "cmsd-fw-rollout-b")
    yield c
    stop_checked(c)


def test_two_instances_agree(fw_cmsd, second_cmsd, pki, db, rollout_devices):
    a, b = fw_cmsd, second_cmsd
    model, serials, rel, rid = release_for(a, pki, db, 8)
    a0 = db.max_audit_id()
    st, body, raw = create(a, pki, {"release_id": rid, "stages": ["50%", "100%"],
                                    "success_threshold": 100, "failure_threshold": 100})
    assert st == 201, raw
    ro = body["rollout"]
    first = by_hash(serials)[:4]
    # Both instances offer stage 1 alone.
    for c in (a, b):
        for s in serials:
            assert offered(c, pki, s) == (s in first), (c.name, s)

    def install(i_s):
        i, s = i_s
        return report(a if i % 2 else b, pki, s, "installed", version="2.0.0",
                      sha256=rel.sha256)[0]

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        assert list(ex.map(install, enumerate(first))) == [200] * 4
    wait_state(a, pki, ro["id"], lambda x: x["current_stage"] == 2, "stage 2 opens")
    h.wait_until(lambda: show(b, pki, ro["id"])["current_stage"] == 2, 10, 0.2, "b agrees")
    # Past both instances' ticks (5 s): still exactly one advance.
    time.sleep(6)
    adv = [r for r in db.audit_events(a0) if r["event"] == "rollout_stage_advanced"
           and json.loads(r["detail"])["rollout_id"] == ro["id"]]
    assert len(adv) == 1, adv
    for s in serials:
        assert offered(b, pki, s), s

    # Two operators pause at the same moment, one through each instance.
    a1 = db.max_audit_id()
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        res = list(ex.map(lambda c: action(c, pki, ro["id"], "pause", {"note": c.name}),
                          (a, b)))
    assert sorted(r[0] for r in res) == [200, 409], [r[2] for r in res]
    wait_audit(db, a1, "fw_rollout_refused")
    rows = db.audit_events(a1)
    assert len([r for r in rows if r["event"] == "rollout_paused"]) == 1
    assert len([r for r in rows if r["event"] == "fw_rollout_refused"]) == 1
    assert show(b, pki, ro["id"])["state"] == "paused"
