"""Staged firmware rollouts (sql/016, docs/firmware.md "Staged rollouts"):
stage 1 is offered only to its devices (by a stable hash of the serial),
the next stage opens when the success threshold of installs is reported,
the rollout completes after the last; it pauses by itself when failures
exceed the threshold; manual pause / resume / abort (abort withdraws the
offers); maintenance windows; a rollback report re-targets the device
once, then excludes it; bad input is a 4xx JSON answer with one
fw_rollout_refused audit row. Python ssl / http.client as the devices,
curl and cmsctl as the operators, psycopg2 for the audit log."""

import datetime
import hashlib
import itertools
import json
import re
import zoneinfo

import pytest

import helpers as h
from admin_helpers import curl
from fw_helpers import fw_cmsd, fw_devices  # noqa: F401  (fixtures)
from fw_helpers import (approve, cmsctl, device_request, get_manifest, import_release,
                        manifest_parts, report, sign_release, unique_model, wait_audit)

PREFIX = "FWR-"
COUNT = 60
_serials = itertools.count(1)
API = "/api/v1/firmware/rollouts"


@pytest.fixture(scope="module")
def rollout_devices(pki, fw_devices):
    """FWR-0001..: this file's own device certificates (minted once)."""
    pki.mint(PREFIX, 1, COUNT)
    return True


def devices(db, model, n):
    out = []
    for _ in range(n):
        i = next(_serials)
        assert i <= COUNT, "raise COUNT in test_fw_rollout.py"
        serial = "%s%04d" % (PREFIX, i)
        h.device_add(db, serial, model=model)
        out.append(serial)
    return out


def by_hash(serials):
    """The rank order of cms.fw_rollout_create: sha256(serial), then serial."""
    return sorted(serials, key=lambda s: (hashlib.sha256(s.encode()).digest(), s))


def release_for(c, pki, db, n, version="2.0.0", counter=3, approve_all=True):
    model = unique_model()
    serials = devices(db, model, n)
    rel = sign_release(model, version, counter, size=12000)
    rid = import_release(c, pki, rel, "operator1")["id"]
    if approve_all:
        approve(c, pki, rid, "operator2", devices=serials)
    return model, serials, rel, rid


def create(c, pki, body, op="operator2"):
    return curl(c, pki, "POST", API, cert=op, data=body)


def show(c, pki, rollout_id, op="viewer1"):
    st, body, raw = curl(c, pki, "GET", "%s/%d" % (API, rollout_id), cert=op)
    assert st == 200, raw
    return body["rollout"]


def action(c, pki, rollout_id, verb, body=None, op="operator2"):
    return curl(c, pki, "POST", "%s/%d/%s" % (API, rollout_id, verb), cert=op,
                data=body if body is not None else {})


def offered(c, pki, serial, installed="1.0.0"):
    st, _, doc = get_manifest(c, pki, serial, installed)
    assert st in (200, 204), (serial, st, doc)
    return st == 200


def wait_state(c, pki, rollout_id, pred, what, timeout=20):
    def look():
        ro = show(c, pki, rollout_id)
        return ro if pred(ro) else None
    return h.wait_until(look, timeout, 0.2, what)


def refused_rows(db, since):
    return [r for r in db.audit_events(since) if r["event"] == "fw_rollout_refused"]


def assert_refused(c, db, since, status, code, got):
    st, body, raw = got
    assert st == status, raw
    assert isinstance(body, dict) and body.get("error") == code and body.get("detail"), raw
    rows = h.wait_until(lambda: refused_rows(db, since) or None, 15, 0.1, "fw_rollout_refused")
    assert len(rows) == 1, rows
    d = json.loads(rows[0]["detail"])
    assert d["status"] == status and d["error"] == code, d
    assert rows[0]["actor"].startswith("operator:")
    return d


def test_stages_offer_advance_complete(fw_cmsd, pki, db, rollout_devices):
    c = fw_cmsd
    model, serials, rel, rid = release_for(c, pki, db, 10)
    a0 = db.max_audit_id()
    p = cmsctl(c, pki, "operator2", "--json", "firmware", "rollout", "create", str(rid),
               "--stages", "20%,100%", "--success", "100", "--failure", "50")
    ro = json.loads(p.stdout)["rollout"]
    assert ro["state"] == "running" and ro["current_stage"] == 1 and ro["stages_total"] == 2
    assert [(s["spec"], s["devices"]) for s in ro["stages"]] == [("20%", 2), ("100%", 8)]
    assert ro["devices"] == 10 and ro["window"] is None and ro["time_zone"] == "UTC"
    rows = wait_audit(db, a0, "rollout_created", lambda r: json.loads(r["detail"])["rollout_id"]
                      == ro["id"])
    assert rows[0]["actor"] == "operator:operator2"
    wait_audit(db, a0, "rollout_started")

    # Stage 1 = the first 20% by hash of the serial: offered; the others get nothing.
    first = by_hash(serials)[:2]
    full = show(c, pki, ro["id"])
    assert sorted(d["serial"] for d in full["device_list"] if d["stage"] == 1) == sorted(first)
    assert len(full["device_list"]) == 10 and full["device_list_truncated"] is False
    st, body, raw = curl(c, pki, "GET", "%s/%d?stage=1" % (API, ro["id"]), cert="viewer1")
    assert st == 200 and sorted(d["serial"] for d in body["rollout"]["device_list"]) == \
        sorted(first), raw
    for s in serials:
        assert offered(c, pki, s) == (s in first), s
    # Still the per-device signed manifest.
    st, _, doc = get_manifest(c, pki, first[0], "1.0.0")
    _, _, body = manifest_parts(doc)
    assert body["device"]["serial"] == first[0] and body["release_id"] == rid

    # One install of two (50% < 100%): no advance. Both: stage 2 opens.
    report(c, pki, first[0], "installed", version="2.0.0", sha256=rel.sha256)
    assert show(c, pki, ro["id"])["current_stage"] == 1
    a1 = db.max_audit_id()
    report(c, pki, first[1], "installed", version="2.0.0", sha256=rel.sha256)
    wait_state(c, pki, ro["id"], lambda x: x["current_stage"] == 2, "stage 2 opens")
    adv = wait_audit(db, a1, "rollout_stage_advanced")
    d = json.loads(adv[0]["detail"])
    assert (d["from_stage"], d["to_stage"], d["installed"], d["devices"]) == (1, 2, 2, 2)
    assert adv[0]["actor"] == "system:rollout"
    for s in serials[:]:
        if s not in first:
            assert offered(c, pki, s), s

    # Every device installs: completed.
    for s in serials:
        if s not in first:
            report(c, pki, s, "installed", version="2.0.0", sha256=rel.sha256)
    done = wait_state(c, pki, ro["id"], lambda x: x["state"] == "completed", "completed")
    assert done["installed"] == 10 and done["finished_at"]
    assert [s["installed"] for s in done["stages"]] == [2, 8]
    wait_audit(db, a1, "rollout_completed")
    # Counted (docs/operations.md): this cmsd made these transitions. The audit row is
    # committed before cmsd reads the statement's answer, so the counter may lag a moment.
    counted = ("rollout_created", "rollout_started", "rollout_stage_advanced",
               "rollout_completed")

    def all_counted():
        st, _, text = curl(c, pki, "GET", "/metrics", cert=(pki.path("operators/scraper.crt"),
                                                            pki.path("operators/scraper.key")))
        assert st == 200, text[:300]
        for ev in counted:
            m = re.search(r'^cmsd_fw_rollout_transitions_total\{event="%s"\} (\S+)$' % ev,
                          text, re.M)
            if not (m and float(m.group(1)) >= 1):
                return False
        return True
    h.wait_until(all_counted, 10, interval=0.1,
                 what="cmsd_fw_rollout_transitions_total >= 1 for each of %s" % (counted,))

    # cmsctl's table and list; a finished rollout cannot be paused (409, audited).
    p = cmsctl(c, pki, "viewer1", "firmware", "rollout", "show", str(ro["id"]))
    assert "completed" in p.stdout and "20%" in p.stdout and first[0] in p.stdout
    p = cmsctl(c, pki, "viewer1", "--json", "firmware", "rollout", "list", "--release", str(rid))
    assert [x["id"] for x in json.loads(p.stdout)["rollouts"]] == [ro["id"]]
    a2 = db.max_audit_id()
    assert_refused(c, db, a2, 409, "conflict", action(c, pki, ro["id"], "pause"))
    p = cmsctl(c, pki, "operator2", "firmware", "rollout", "pause", str(ro["id"]), check=False)
    assert p.returncode == 3 and "409 conflict" in p.stderr, p.stderr


def test_auto_pause_manual_pause_resume_abort(fw_cmsd, pki, db, rollout_devices):
    c = fw_cmsd
    model, serials, rel, rid = release_for(c, pki, db, 5)
    st, body, raw = create(c, pki, {"release_id": rid, "stages": ["40%", "100%"],
                                    "success_threshold": 100, "failure_threshold": 20})
    assert st == 201, raw
    ro = body["rollout"]
    first = by_hash(serials)[:2]
    second = [s for s in serials if s not in first]
    assert all(offered(c, pki, s) for s in first)

    # One failure of two (50% > 20%): paused by itself; nothing new is offered.
    a0 = db.max_audit_id()
    report(c, pki, first[0], "failed", version="1.0.0", sha256=rel.sha256, reason="flash error")
    paused = wait_state(c, pki, ro["id"], lambda x: x["state"] == "paused", "auto pause")
    assert paused["pause_reason"].startswith("auto:") and "stage 1" in paused["pause_reason"]
    row = wait_audit(db, a0, "rollout_paused")[0]
    assert json.loads(row["detail"])["reason"] == "auto" and row["actor"] == "system:rollout"
    assert not offered(c, pki, first[1])
    # A device holding a manifest from before may still download.
    st, _, _ = device_request(c, pki, first[1], "HEAD", "/fw/v1/images/" + rel.sha256)
    assert st == 200

    # Resume (the failure is acknowledged); pause and resume by hand.
    a1 = db.max_audit_id()
    st, body, raw = action(c, pki, ro["id"], "resume")
    assert st == 200 and body["rollout"]["state"] == "running", raw
    assert [s["failures_acknowledged"] for s in body["rollout"]["stages"]] == [1, 0]
    assert offered(c, pki, first[1])
    st, body, raw = action(c, pki, ro["id"], "pause", {"note": "ward busy"})
    assert st == 200 and body["rollout"]["state"] == "paused", raw
    assert body["rollout"]["pause_reason"] == "manual by operator:operator2: ward busy"
    assert not offered(c, pki, first[1])
    a2 = db.max_audit_id()
    assert_refused(c, db, a2, 409, "conflict", action(c, pki, ro["id"], "pause"))
    st, body, raw = action(c, pki, ro["id"], "resume")
    assert st == 200 and body["rollout"]["state"] == "running", raw
    ev = [r["event"] for r in db.audit_events(a1) if r["event"].startswith("rollout_")]
    assert ev == ["rollout_resumed", "rollout_paused", "rollout_resumed"], ev
    manual = [json.loads(r["detail"]) for r in db.audit_events(a1) if r["event"] == "rollout_paused"]
    assert manual[0]["reason"] == "manual" and manual[0]["note"] == "ward busy"

    # A second failure in stage 1 (2 of 2, 1 acknowledged: 50% new > 20%) pauses again.
    a3 = db.max_audit_id()
    report(c, pki, first[1], "failed", version="1.0.0", sha256=rel.sha256)
    wait_state(c, pki, ro["id"], lambda x: x["state"] == "paused", "auto pause again")
    wait_audit(db, a3, "rollout_paused")

    # Abort: offers to devices that did not install are withdrawn, downloads refused.
    st, body, raw = action(c, pki, ro["id"], "resume")
    assert st == 200, raw
    assert offered(c, pki, first[0])  # re-offered after its failure
    st, body, raw = action(c, pki, ro["id"], "abort", {"note": "bad batch"})
    assert st == 200 and body["rollout"]["state"] == "aborted", raw
    ab = wait_audit(db, a3, "rollout_aborted")
    assert json.loads(ab[0]["detail"])["offers_withdrawn"] >= 1
    assert db.scalar("SELECT o.state FROM cms.fw_rollout o JOIN cms.devices d ON d.id = "
                     "o.device_id WHERE d.serial = %s AND o.release_id = %s",
                     (first[0], rid)) == "withdrawn"
    for s in serials:
        assert not offered(c, pki, s), s
    st, _, _ = device_request(c, pki, first[0], "HEAD", "/fw/v1/images/" + rel.sha256)
    assert st == 404
    assert second  # never offered at all
    a4 = db.max_audit_id()
    assert_refused(c, db, a4, 409, "conflict", action(c, pki, ro["id"], "resume"))
    a5 = db.max_audit_id()
    assert_refused(c, db, a5, 409, "conflict", action(c, pki, ro["id"], "abort"))
    # Aborted: the devices can be in a new rollout of the release.
    st, body, raw = create(c, pki, {"release_id": rid, "stages": ["100%"]})
    assert st == 201, raw


def hhmm(t):
    return t.strftime("%H:%M")


def test_maintenance_window(fw_cmsd, pki, db, rollout_devices):
    c = fw_cmsd
    model, serials, rel, rid = release_for(c, pki, db, 2)
    now = datetime.datetime.now(datetime.timezone.utc)
    # A window that excludes now (in two hours, for an hour): nothing is offered.
    outside = "%s-%s" % (hhmm(now + datetime.timedelta(hours=2)),
                         hhmm(now + datetime.timedelta(hours=3)))
    st, body, raw = create(c, pki, {"release_id": rid, "stages": ["100%"], "window": outside})
    assert st == 201, raw
    ro = body["rollout"]
    assert ro["window"] == outside and ro["window_open"] is False
    assert not any(offered(c, pki, s) for s in serials)
    assert action(c, pki, ro["id"], "abort")[0] == 200
    # A window that includes now, written in another time zone (+05:30): offered.
    tz = zoneinfo.ZoneInfo("Asia/Kolkata")
    local = now.astimezone(tz)
    inside = "%s-%s" % (hhmm(local - datetime.timedelta(hours=1)),
                        hhmm(local + datetime.timedelta(hours=1)))
    st, body, raw = create(c, pki, {"release_id": rid, "stages": ["100%"], "window": inside,
                                    "time_zone": "Asia/Kolkata"})
    assert st == 201, raw
    assert body["rollout"]["window_open"] is True and body["rollout"]["time_zone"] == "Asia/Kolkata"
    assert all(offered(c, pki, s) for s in serials)


def test_rollback_is_retargeted_then_excluded(fw_cmsd, pki, db, rollout_devices):
    c = fw_cmsd
    model, serials, rel, rid = release_for(c, pki, db, 2)
    st, body, raw = create(c, pki, {"release_id": rid, "stages": ["100%"],
                                    "failure_threshold": 100, "max_retargets": 1})
    assert st == 201, raw
    ro = body["rollout"]
    dev = serials[0]
    assert offered(c, pki, dev)
    # A rolled_back report must name the image it went back from.
    st, _, raw = report(c, pki, dev, "rolled_back", version="1.0.0")
    assert st == 400, raw
    a0 = db.max_audit_id()
    st, _, raw = report(c, pki, dev, "rolled_back", version="1.0.0", sha256=rel.sha256,
                        reason="watchdog reset after boot")
    assert st == 200 and json.loads(raw)["release_id"] == rid, raw
    rt = wait_audit(db, a0, "rollout_device_retargeted")
    d = json.loads(rt[0]["detail"])
    assert (d["device"], d["retargets"], d["max_retargets"]) == (dev, 1, 1)
    x = {d["serial"]: d for d in show(c, pki, ro["id"])["device_list"]}[dev]
    assert (x["state"], x["retargets"], x["excluded"]) == ("rolled_back", 1, False)
    assert db.scalar("SELECT firmware_version FROM cms.devices WHERE serial = %s",
                     (dev,)) == "1.0.0"
    # Offered again, once; a second rollback excludes it.
    assert offered(c, pki, dev)
    a1 = db.max_audit_id()
    report(c, pki, dev, "rolled_back", version="1.0.0", sha256=rel.sha256)
    wait_audit(db, a1, "rollout_device_excluded")
    x = {d["serial"]: d for d in show(c, pki, ro["id"])["device_list"]}[dev]
    assert x["excluded"] is True and "rolled back 2" in x["excluded_reason"], x
    assert not offered(c, pki, dev)
    ro = show(c, pki, ro["id"])
    assert ro["state"] == "running" and ro["retargets"] == 1
    assert ro["stages"][0]["rolled_back"] == 1 and ro["stages"][0]["excluded"] == 1
    assert offered(c, pki, serials[1])  # the other device is not concerned


def test_bad_input_refused_and_audited(fw_cmsd, pki, db, rollout_devices):
    c = fw_cmsd
    model, serials, rel, rid = release_for(c, pki, db, 3)
    _, _, rel2, unapproved = release_for(c, pki, db, 1, version="2.1.0", approve_all=False)
    cases = [
        ({"release_id": 999999, "stages": ["100%"]}, 404, "not_found"),
        ({"release_id": unapproved, "stages": ["100%"]}, 409, "not_approved"),
        ({"release_id": rid, "stages": ["100%"], "success_threshold": 0}, 400, "bad_request"),
        ({"release_id": rid, "stages": ["100%"], "success_threshold": 101}, 400, "bad_request"),
        ({"release_id": rid, "stages": ["100%"], "failure_threshold": -1}, 400, "bad_request"),
        ({"release_id": rid, "stages": ["100%"], "failure_threshold": 101}, 400, "bad_request"),
        ({"release_id": rid, "stages": ["100%"], "success_threshold": "90"}, 400, "bad_request"),
        ({"release_id": rid, "stages": []}, 400, "bad_request"),
        ({"release_id": rid, "stages": ["0%"]}, 400, "bad_request"),
        ({"release_id": rid, "stages": ["50%", "50%"]}, 400, "bad_request"),
        ({"release_id": rid, "stages": ["group:no-such-group"]}, 404, "not_found"),
        ({"release_id": rid, "stages": ["100%"], "window": "25:00-01:00"}, 400, "bad_request"),
        ({"release_id": rid, "stages": ["100%"], "window": "10:00-10:00"}, 400, "bad_request"),
        ({"release_id": rid, "stages": ["100%"], "window": "01:00-02:00",
          "time_zone": "Mars/Olympus_Mons"}, 400, "bad_request"),
        ({"release_id": rid, "stages": ["100%"], "colour": "red"}, 400, "bad_request"),
        ({"stages": ["100%"]}, 400, "bad_request"),
        ("not json", 400, "bad_request"),
    ]
    for body, status, code in cases:
        a = db.max_audit_id()
        d = assert_refused(c, db, a, status, code, create(c, pki, body))
        assert d["action"] == "create", (body, d)
    assert db.scalar("SELECT count(*) FROM cms.fw_rollouts WHERE release_id IN (%s, %s)",
                     (rid, unapproved)) == 0

    # A stage that takes no device (the group holds all three, nothing is left for 100%).
    grp = "rollout-bad-%s" % serials[0].lower()
    cmsctl(c, pki, "operator2", "group", "add", grp, *serials)
    a = db.max_audit_id()
    assert_refused(c, db, a, 400, "bad_request",
                   create(c, pki, {"release_id": rid, "stages": ["group:" + grp, "100%"]}))

    # Overlap: the same devices in two unfinished rollouts.
    st, body, raw = create(c, pki, {"release_id": rid, "stages": ["34%", "100%"],
                                    "start": False})
    assert st == 201 and body["rollout"]["state"] == "created", raw
    first = body["rollout"]["id"]
    assert not any(offered(c, pki, s) for s in serials)  # created, not started
    a = db.max_audit_id()
    assert_refused(c, db, a, 409, "overlap",
                   create(c, pki, {"release_id": rid, "stages": ["100%"]}))
    # cmsctl: exit 3 with the API's code.
    p = cmsctl(c, pki, "operator2", "firmware", "rollout", "create", str(rid), "--stages",
               "100%", check=False)
    assert p.returncode == 3 and "409 overlap" in p.stderr, p.stderr
    p = cmsctl(c, pki, "operator2", "firmware", "rollout", "create", str(rid), "--stages",
               "100%", "--success", "lots", check=False)
    assert p.returncode == 2, p.stderr

    # Roles: a viewer may read, not change (router: 403 + operator_forbidden).
    st, body, raw = curl(c, pki, "POST", "%s/%d/resume" % (API, first), cert="viewer1", data={})
    assert st == 403 and body["error"] == "forbidden", raw
    st, body, raw = curl(c, pki, "GET", API + "?state=bogus", cert="viewer1")
    assert st == 400, raw
    st, body, raw = curl(c, pki, "GET", API + "/424242", cert="viewer1")
    assert st == 404, raw
    a = db.max_audit_id()
    assert_refused(c, db, a, 404, "not_found", action(c, pki, 424242, "pause"))
    a = db.max_audit_id()
    assert_refused(c, db, a, 400, "bad_request", action(c, pki, first, "resume", {"x": 1}))

    # Resume starts the created rollout (rollout_started).
    a = db.max_audit_id()
    st, body, raw = action(c, pki, first, "resume")
    assert st == 200 and body["rollout"]["state"] == "running", raw
    wait_audit(db, a, "rollout_started")
    stage1 = by_hash(serials)[:2]  # ceil(34% of 3) = 2
    for s in serials:
        assert offered(c, pki, s) == (s in stage1), s
    assert cmsctl(c, pki, "viewer1", "audit", "verify").returncode == 0


def test_tick_evaluates_without_a_report(fw_cmsd, pki, db, rollout_devices):
    """An install recorded without the evaluation that follows a report (as after a cmsd
    killed between the two) is picked up by the periodic tick (every 5 s)."""
    c = fw_cmsd
    model, serials, rel, rid = release_for(c, pki, db, 2)
    st, body, raw = create(c, pki, {"release_id": rid, "stages": ["50%", "100%"],
                                    "success_threshold": 100})
    assert st == 201, raw
    ro = body["rollout"]
    first = by_hash(serials)[0]
    a0 = db.max_audit_id()
    db.execute("INSERT INTO cms.fw_rollout (release_id, device_id, state) "
               "SELECT %s, id, 'installed' FROM cms.devices WHERE serial = %s", (rid, first))
    wait_state(c, pki, ro["id"], lambda x: x["current_stage"] == 2, "the tick advances", 20)
    adv = wait_audit(db, a0, "rollout_stage_advanced",
                     lambda r: json.loads(r["detail"])["rollout_id"] == ro["id"])
    assert json.loads(adv[0]["detail"])["trigger"] == "tick"
    assert offered(c, pki, serials[1])
