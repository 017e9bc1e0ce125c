"""Malformed input from an authenticated monitor gets AR (or AE where the
contract allows it) with a human-readable reason in MSA-3/ERR-8, nothing is
stored, and the connection keeps working. Framing violations (oversize
frame, bytes outside a frame) close the connection with a log line."""

import re

import pytest

import helpers as h

DEV = "MON-0001"


def bad_messages():
    """name -> (payload builder(cid, patient), allowed MSA-1 codes, ERR-3 code or None)"""
    def with_fields(fields):
        return lambda cid, pt: h.pcd01(DEV, cid, patient=pt, set_fields=fields)

    def bad_nm(cid, pt):
        return h.pcd01(DEV, cid, patient=pt).replace(
            "|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.1|96|",
            "|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.1|ninety-six|")

    def no_msh10(cid, pt):
        return h.pcd01(DEV, "", patient=pt)

    def too_many_obs(cid, pt):
        rows = ["OBX|%d|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.%d|96|262688^MDC_DIM_PERCENT^MDC"
                "|||||R|||20261115083000+0100" % (100 + i, i) for i in range(130)]
        return h.pcd01(DEV, cid, patient=pt, extra_obx=rows)

    def long_msh10(cid, pt):
        return h.pcd01(DEV, cid + "-" + "9" * 240, patient=pt)

    return {
        "not-hl7": (lambda cid, pt: "GET / HTTP/1.1\r\nHost: cms\r\n\r\nthis is not HL7",
                    {"AR"}, None),
        "adt-not-oru": (with_fields({"MSH.F9": "ADT^A01^ADT_A01"}), {"AR"}, "200"),
        "version-3": (with_fields({"MSH.F12": "3.0"}), {"AR"}, "203"),
        "bad-nm-value": (bad_nm, {"AR", "AE"}, None),
        "missing-msh10": (no_msh10, {"AR"}, None),
        # beyond the documented limits (PCD01_MAX_OBS numeric observations,
        # MSH-10 longer than v2.6's 199 characters): refused as a whole
        "too-many-observations": (too_many_obs, {"AR", "AE"}, None),
        "msh10-too-long": (long_msh10, {"AR", "AE"}, None),
    }


BAD = bad_messages()


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_rejected_with_reason(cmsd, db, connect, case):
    build, codes, err_code = BAD[case]
    cid, pt = h.unique("BAD"), h.unique("PT-BAD")
    with connect(cmsd.port, DEV) as c:
        ack = c.request(build(cid, pt))
        assert ack.code in codes, "%s: expected %s, got %r" % (case, codes, ack)
        reason = ack.reason()
        assert len(reason) >= 8 and re.search(r"[A-Za-z]{3}", reason), (
            "%s: no human-readable reason in MSA-3/ERR-8: %r" % (case, ack))
        if err_code:
            assert ack.err_code == err_code, "%s: ERR-3 should be %s: %r" % (case, err_code, ack)
        if case not in ("not-hl7", "missing-msh10", "msh10-too-long"):
            assert ack.control_id == cid, "the AR must echo MSH-10: %r" % ack
        # the same connection keeps working
        cid2, pt2 = h.unique("OK"), h.unique("PT-OK")
        ack2 = c.request(h.pcd01(DEV, cid2, patient=pt2))
        assert ack2.code == "AA" and ack2.control_id == cid2, ack2
    assert db.vitals(patient_id=pt) == [], "a rejected message was stored"
    assert len(db.vitals(patient_id=pt2)) == h.SAMPLE_NOBS


def big_message(cid, pt, total):
    """A valid PCD-01 padded to about total bytes with an ST observation."""
    base = h.pcd01(DEV, cid, patient=pt)
    head = "OBX|13|ST|0^MDC_BB_PADDING^MDC|1.99.9.9|"
    pad = total - len(base.encode()) - len(head) - 1
    return base + head + "x" * pad + "\r"


def test_frame_under_limit_accepted(cmsd, db, connect):
    cid, pt = h.unique("BIG"), h.unique("PT-BIG")
    msg = big_message(cid, pt, cmsd.cfg["max_frame_bytes"] - 1024)
    with connect(cmsd.port, DEV) as c:
        ack = c.request(msg)
    assert ack.code == "AA" and ack.control_id == cid, ack
    assert len(db.vitals(patient_id=pt)) == h.SAMPLE_NOBS


def test_oversize_frame_closes_connection(cmsd, pki, db, connect):
    since = cmsd.test_log_start
    cid, pt = h.unique("HUGE"), h.unique("PT-HUGE")
    msg = big_message(cid, pt, cmsd.cfg["max_frame_bytes"] + 4096)
    c = connect(cmsd.port, DEV)
    try:
        c.send(msg)
    except h.Closed:
        pass
    assert c.wait_closed(20), "connection still open 20s after an oversize frame"
    assert b"MSA|AA" not in c.buf, "oversize frame was acknowledged: %r" % c.buf[:300]
    h.assert_refusal_logged(cmsd, c.local_port, r"(?i)frame|too (large|big|long)|limit|size",
                            since)
    assert db.vitals(patient_id=pt) == []
    h.good_client_still_served(cmsd, pki)


def test_bytes_outside_frame_close_connection(cmsd, db, connect):
    since = cmsd.test_log_start
    c = connect(cmsd.port, DEV)
    cid = h.unique("OUT")
    ack = c.request(h.pcd01(DEV, cid, patient=h.unique("PT")))
    assert ack.code == "AA", ack
    try:
        c.send_bytes(b"garbage between frames\r\n")
    except h.Closed:
        pass
    assert c.wait_closed(20), "connection still open after bytes outside an MLLP frame"
    h.assert_refusal_logged(cmsd, c.local_port, r"(?i)mllp|frame|framing|protocol|outside",
                            since)



def test_longest_msh10_accepted(cmsd, db, connect):
    cid = h.unique("L") + "-"
    cid += "7" * (199 - len(cid))
    assert len(cid) == 199
    with connect(cmsd.port, DEV) as c:
        ack = c.request(h.pcd01(DEV, cid, patient=h.unique("PT")))
    assert ack.code == "AA" and ack.control_id == cid, ack
    assert db.message_count(DEV, cid) == 1
