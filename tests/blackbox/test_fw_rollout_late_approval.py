"""A device approved for a release after its rollout was created (sql/017): the running
rollout does not take it (its target set is a snapshot), so it is offered nothing; a second
rollout of the release takes exactly the devices approved since (the first keeps its own),
audited with how many were left to the first; with nothing new to take, a further rollout is
refused 409 overlap naming the unfinished rollout. Python ssl / http.client as the devices,
curl as the operators, psycopg2 for the audit log."""

import json

import pytest

import helpers as h
from fw_helpers import fw_cmsd, fw_devices  # noqa: F401  (fixtures)
from fw_helpers import approve, import_release, sign_release, unique_model, wait_audit
from test_fw_rollout import assert_refused, create, offered, show

PREFIX = "FWL-"


@pytest.fixture(scope="module")
def late_devices(pki, fw_devices):
    pki.mint(PREFIX, 1, 4)
    return ["%s%04d" % (PREFIX, i) for i in range(1, 5)]


def test_second_rollout_takes_devices_approved_since(fw_cmsd, pki, db, late_devices):
    c = fw_cmsd
    model = unique_model()
    for s in late_devices:
        h.device_add(db, s, model=model)
    first, late = late_devices[:3], late_devices[3]
    rel = sign_release(model, "3.1.0", 5, size=9000)
    rid = import_release(c, pki, rel, "operator1")["id"]
    approve(c, pki, rid, "operator2", devices=first)

    st, body, raw = create(c, pki, {"release_id": rid, "stages": ["100%"]})
    assert st == 201 and body["rollout"]["state"] == "running", raw
    one = body["rollout"]["id"]
    assert body["rollout"]["devices"] == 3, raw
    assert all(offered(c, pki, s) for s in first)
    assert not offered(c, pki, late)  # not approved

    # Approved now: the running rollout's snapshot does not hold it, so nothing is offered.
    approve(c, pki, rid, "operator2", devices=[late])
    assert not offered(c, pki, late)

    a0 = db.max_audit_id()
    st, body, raw = create(c, pki, {"release_id": rid, "stages": ["100%"]})
    assert st == 201, raw
    two = body["rollout"]["id"]
    assert two != one and body["rollout"]["devices"] == 1, raw
    rows = wait_audit(db, a0, "rollout_created",
                      lambda r: json.loads(r["detail"])["rollout_id"] == two)
    d = json.loads(rows[0]["detail"])
    assert (d["devices"], d["target_devices"], d["held_elsewhere"]) == (1, 1, 3), d
    assert offered(c, pki, late)
    assert all(offered(c, pki, s) for s in first)  # still through the first rollout
    assert show(c, pki, one)["devices"] == 3

    # Nothing approved since: refused, naming the unfinished rollouts that hold them.
    a1 = db.max_audit_id()
    got = create(c, pki, {"release_id": rid, "stages": ["100%"]})
    assert_refused(c, db, a1, 409, "overlap", got)
    detail = got[1]["detail"]
    assert "%d, %d" % (one, two) in detail and "approved since" in detail, detail
