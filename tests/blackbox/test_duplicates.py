"""Resends are normal (a lost ACK): the same MSH-10 from the same device is
acknowledged AA again but stored once. The dedup key is (device, MSH-10):
the same MSH-10 from two devices is two messages."""

import helpers as h


def test_same_control_id_same_device_stored_once(cmsd, db, connect):
    cid, pt = h.unique("DUP"), h.unique("PT-DUP")
    msg = h.pcd01("MON-0001", cid, patient=pt)
    with connect(cmsd.port, "MON-0001") as c:
        a1 = c.request(msg)
        a2 = c.request(msg)
    # and once more on a new connection, as after a reconnect
    with connect(cmsd.port, "MON-0001") as c:
        a3 = c.request(msg)
    for a in (a1, a2, a3):
        assert a.code == "AA" and a.control_id == cid, a
    assert db.message_count("MON-0001", cid) == 1
    assert db.obs_count("MON-0001", cid) == h.SAMPLE_NOBS
    assert len(db.vitals(patient_id=pt)) == h.SAMPLE_NOBS


def test_duplicates_in_one_write_stored_once(cmsd, db, connect):
    """Both copies can land in the same group commit."""
    cid, pt = h.unique("DUPB"), h.unique("PT-DUPB")
    msg = h.pcd01("MON-0002", cid, patient=pt)
    with connect(cmsd.port, "MON-0002") as c:
        c.send_bytes(h.frame(msg) * 3)
        acks = [c.recv_ack() for _ in range(3)]
    assert [(a.code, a.control_id) for a in acks] == [("AA", cid)] * 3, acks
    assert db.message_count("MON-0002", cid) == 1
    assert len(db.vitals(patient_id=pt)) == h.SAMPLE_NOBS


def test_same_control_id_two_devices_both_stored(cmsd, db, connect):
    cid = h.unique("SHARED")
    pts = {"MON-0001": h.unique("PT-A"), "MON-0002": h.unique("PT-B")}
    for dev, pt in pts.items():
        with connect(cmsd.port, dev) as c:
            a = c.request(h.pcd01(dev, cid, patient=pt))
        assert a.code == "AA" and a.control_id == cid, a
    for dev, pt in pts.items():
        assert db.message_count(dev, cid) == 1
        rows = db.vitals(patient_id=pt)
        assert len(rows) == h.SAMPLE_NOBS
        assert {r["device_serial"] for r in rows} == {dev}


def test_resend_with_changed_content_keeps_first(cmsd, db, connect):
    """A resend is the same message: a second copy with the same MSH-10 (even
    if its content differs) does not add or replace rows."""
    cid, pt = h.unique("DUPC"), h.unique("PT-DUPC")
    first = h.pcd01("MON-0003", cid, patient=pt)
    second = first.replace("|NM|147842^MDC_ECG_HEART_RATE^MDC|1.5.1.1|72|",
                           "|NM|147842^MDC_ECG_HEART_RATE^MDC|1.5.1.1|180|")
    assert second != first
    with connect(cmsd.port, "MON-0003") as c:
        assert c.request(first).code == "AA"
        assert c.request(second).code == "AA"
    rows = {r["mdc_code"]: r for r in db.vitals(patient_id=pt)}
    assert len(rows) == h.SAMPLE_NOBS
    assert rows["147842"]["value"] == 72
