"""IHE PCD-04 alarms (ORU^R40) end to end: ACK^R40 after COMMIT, the lifecycle
of one alarm in cms.alarms and cms.alarm_history, exactly once across resends,
an end for an unknown alarm stored and flagged, heartbeats only refreshing
cms.device_last_heard, unknown facets kept, and an alarm naming another device
refused with AR and an audit row (docs/clinical-data.md)."""

import datetime
import json

import helpers as h

DEV = "MON-0002"
OTHER = "MON-0001"


def r40(device, cid, alarm_id, phase, state="active", prio="PH", kind="SP", value="84",
        at="20261115083011.750+0100", ns=None, extra=(), inactivation="enabled",
        patient="MRN-448812"):
    """An SpO2 desaturation alarm event in the IHE PCD TF-2 layout (as
    tests/unit/sample_pcd04.h r40_desat_start): OBR-3 = alarm id ^ namespace,
    one OBX per facet, the facet number at the end of OBX-4."""
    ns = ns or device
    segs = [
        "MSH|^~\\&|%s^%s^L|Example Monitors|CMS|GENERAL HOSPITAL|20261115083012.500+0100||"
        "ORU^R40^ORU_R40|%s|P|2.6|||AL|NE||UNICODE UTF-8|||"
        "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO" % (device, device, cid),
        "PID|||%s^^^GENERAL HOSPITAL^MR||ROE^RICHARD^^^^^L||19580211|M" % patient,
        "PV1||I|CCU^^BED-07",
        "OBR|1|%s^%s|%s^%s|196616^MDC_EVT_ALARM^MDC|||20261115083012+0100" % (
            cid, device, alarm_id, ns),
        "OBX|1|ST|196674^MDC_EVT_DESAT^MDC|1.22.1.150456.1|SpO2 Desat||||||F|||%s" % at,
        "OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.150456.2|%s|262688^MDC_DIM_PERCENT^MDC"
        "|90-100|L|||F" % value,
        "OBX|3|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.22.1.150456.3|%s||||||F" % phase,
        "OBX|4|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.22.1.150456.4|%s||||||F" % state,
        "OBX|5|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.22.1.150456.5|%s||||||F"
        % inactivation,
        "OBX|6|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.22.1.150456.6|%s||||||F" % prio,
        "OBX|7|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.22.1.150456.7|%s||||||F" % kind,
    ]
    return "\r".join(segs + list(extra)) + "\r"


def alarm(db, alarm_id):
    rows = db.query("SELECT alarm_ref, device_serial, patient_id, location, phase, state, "
                    "inactivation, priority, kind, value, limits, started_at IS NOT NULL, "
                    "ended_at IS NOT NULL, current, nevents, unknown_start, event_label, "
                    "alarm_text FROM cms.alarms WHERE alarm_id = %s ORDER BY alarm_ref",
                    (alarm_id,))
    cols = ["ref", "device", "patient", "location", "phase", "state", "inactivation", "priority",
            "kind", "value", "limits", "started", "ended", "current", "nevents", "unknown_start",
            "event_label", "alarm_text"]
    return [dict(zip(cols, r)) for r in rows]


def history(db, alarm_id):
    return db.query("SELECT phase, state, unknown_alarm, facets::text FROM cms.alarm_history "
                    "WHERE alarm_id = %s ORDER BY event_at, received_at", (alarm_id,))


def test_alarm_lifecycle_acked_after_commit(cmsd, db, connect):
    aid = h.unique("ALM")
    pt = h.unique("PT-ALM")
    with connect(cmsd.port, DEV) as c:
        cid = h.unique("A")
        ack = c.request(r40(DEV, cid, aid, "start", patient=pt))
        assert (ack.code, ack.control_id) == ("AA", cid), ack
        assert ack.get("MSH", 9, 1) == "ACK" and ack.get("MSH", 9, 2) == "R40", ack
        # AA means committed: the alarm is there now
        a = alarm(db, aid)
        assert len(a) == 1 and a[0]["device"] == DEV and a[0]["patient"] == pt, a
        assert (a[0]["phase"], a[0]["state"], a[0]["priority"], a[0]["kind"]) == (
            "start", "active", "PH", "physiological"), a
        assert (a[0]["value"], a[0]["limits"], a[0]["location"]) == (84, "90-100", "CCU^^BED-07")
        assert a[0]["current"] and a[0]["started"] and not a[0]["ended"], a
        assert (a[0]["event_label"], a[0]["alarm_text"]) == ("MDC_EVT_DESAT", "SpO2 Desat")

        cont = h.unique("A")
        msg = r40(DEV, cont, aid, "continue", value="82", inactivation="audio-paused",
                  at="20261115083021.750+0100")
        ack = c.request(msg)
        assert ack.code == "AA", ack
        # the same continue again (a resend after a lost ACK): AA, not a new event
        ack = c.request(msg)
        assert (ack.code, ack.control_id) == ("AA", cont), ack
        a = alarm(db, aid)
        assert (a[0]["nevents"], a[0]["value"], a[0]["inactivation"]) == (2, 82, "audio-paused"), a

        ack = c.request(r40(DEV, h.unique("A"), aid, "end", state="inactive", value="93",
                            inactivation="alert-acknowledged", at="20261115083148+0100"))
        assert ack.code == "AA", ack
    a = alarm(db, aid)
    assert len(a) == 1, a
    assert (a[0]["phase"], a[0]["state"], a[0]["nevents"]) == ("end", "inactive", 3), a
    assert a[0]["ended"] and not a[0]["current"] and not a[0]["unknown_start"], a
    assert [(p, s, u) for p, s, u, _ in history(db, aid)] == [
        ("start", "active", False), ("continue", "active", False), ("end", "inactive", False)]
    # the identifier may be used again after the end: a new instance
    with connect(cmsd.port, DEV) as c:
        assert c.request(r40(DEV, h.unique("A"), aid, "start")).code == "AA"
    assert [x["current"] for x in alarm(db, aid)] == [False, True]


def test_end_of_unknown_alarm_stored_and_flagged(cmsd, db, connect):
    aid = h.unique("GHOST")
    since = cmsd.log_size()
    with connect(cmsd.port, DEV) as c:
        cid = h.unique("A")
        ack = c.request(r40(DEV, cid, aid, "end", state="inactive"))
    assert ack.code == "AA", ack
    a = alarm(db, aid)
    assert len(a) == 1 and a[0]["unknown_start"] and a[0]["ended"] and not a[0]["started"], a
    assert [(p, u) for p, _, u, _ in history(db, aid)] == [("end", True)]
    line = cmsd.wait_log(r"event=alarm_unknown", since=since)
    assert cid in line and DEV in line, line


def test_alarm_for_another_device_refused_and_audited(cmsd, db, connect):
    aid = h.unique("FOREIGN")
    since = db.max_audit_id()
    with connect(cmsd.port, DEV) as c:
        cid = h.unique("A")
        ack = c.request(r40(DEV, cid, aid, "start", ns=OTHER))
        assert (ack.code, ack.control_id, ack.err_code) == ("AR", cid, "204"), ack
        assert OTHER in ack.reason(), ack
        # an OBX-18 naming the other device is refused the same way
        cid2 = h.unique("A")
        ack = c.request(r40(DEV, cid2, aid, "start", extra=[
            "OBX|8|ST|0^MDCX_NOTE^MDC|1.22.1.150456.9|x||||||F|||||||%s" % OTHER]))
        assert (ack.code, ack.err_code) == ("AR", "204"), ack
        # the connection stays usable
        assert c.request(r40(DEV, h.unique("A"), h.unique("OK"), "start")).code == "AA"
    assert alarm(db, aid) == []
    assert db.scalar("SELECT count(*) FROM cms.messages WHERE control_id IN (%s, %s)",
                     (cid, cid2)) == 0
    rows = [e for e in db.audit_events(since) if e["event"] == "impersonation"]
    assert len(rows) == 2, rows
    d = json.loads(rows[0]["detail"])
    assert (rows[0]["device"], d["claimed"], d["control_id"], d["message"]) == (
        DEV, OTHER, cid, "ORU^R40"), rows


def test_heartbeat_refreshes_last_heard_not_alarm_list(cmsd, db, connect):
    aid = h.unique("HB")
    with connect(cmsd.port, DEV) as c:
        ack = c.request(r40(DEV, h.unique("A"), aid, "continue", prio="PN", kind="SA",
                            at="20261115083100+0100"))
    assert ack.code == "AA", ack
    assert alarm(db, aid) == [] and history(db, aid) == []
    heard = db.scalar("SELECT last_heard_at FROM cms.device_last_heard WHERE device_serial = %s",
                      (DEV,))
    assert heard == datetime.datetime(2026, 11, 15, 7, 31, tzinfo=datetime.timezone.utc), heard


def test_unknown_facets_kept(cmsd, db, connect):
    aid = h.unique("FACET")
    extra = ["OBX|8|NM|0^MDCX_VENDOR_ALARM_REPEAT^MDC|1.22.1.150456.9|3||||||R"]
    with connect(cmsd.port, DEV) as c:
        ack = c.request(r40(DEV, h.unique("A"), aid, "start", state="blinking", extra=extra))
    assert ack.code == "AA", ack
    (phase, state, unknown, facets), = history(db, aid)
    assert (phase, state, unknown) == ("start", None, False)
    kept = json.loads(facets)
    assert [(f["label"], f["value"]) for f in kept] == [
        ("MDC_ATTR_ALARM_STATE", "blinking"), ("MDCX_VENDOR_ALARM_REPEAT", "3")], kept


def test_malformed_alarm_refused(cmsd, db, connect):
    aid = h.unique("BAD")
    with connect(cmsd.port, DEV) as c:
        cid = h.unique("A")
        ack = c.request(r40(DEV, cid, aid, "wobble"))
        assert (ack.code, ack.control_id, ack.err_code) == ("AR", cid, "102"), ack
        assert ack.get("MSH", 9, 2) == "R40", ack
        msg = r40(DEV, h.unique("A"), aid, "start").replace(
            "OBX|3|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.22.1.150456.3|start||||||F\r", "")
        ack = c.request(msg)
        assert (ack.code, ack.err_code) == ("AR", "101"), ack
    assert alarm(db, aid) == []
