"""A monitor's PCD-01 ORU^R01 -> AA after commit -> the right rows in the
public view cms.vitals (values, MDC codes and labels, units, patient, times
with their timezone)."""

import datetime

import pytest

import helpers as h

UTC = datetime.timezone.utc


def db_now(db):
    return db.scalar("SELECT now()")


def assert_aa(ack, control_id, device):
    assert ack.code == "AA", "expected AA, got %r" % ack
    assert ack.control_id == control_id
    assert ack.get("MSH", 9) == "ACK", ack
    assert ack.get("MSH", 3) == "CMS-TEST", "MSH-3 of the ACK must be hl7_app: %r" % ack
    assert ack.get("MSH", 4) == "BB-HOSPITAL", "MSH-4 of the ACK must be hl7_facility: %r" % ack
    assert ack.get("MSH", 5) == device, "MSH-5 of the ACK must echo the sender: %r" % ack
    assert ack.get("MSH", 10), "the ACK needs its own MSH-10: %r" % ack


def assert_sample_rows(rows, device, patient, t_before, t_after):
    assert len(rows) == h.SAMPLE_NOBS, "expected the sample's 8 NM observations, got %d:\n%s" % (
        len(rows), "\n".join(map(str, rows)))
    by_code = {r["mdc_code"]: r for r in rows}
    assert set(by_code) == set(h.SAMPLE_OBS), "MDC codes stored: %s" % sorted(by_code)
    for code, (label, value, unit, unit_label, observed) in h.SAMPLE_OBS.items():
        r = by_code[code]
        assert r["device_serial"] == device
        assert r["patient_id"] == patient
        assert r["mdc_label"] == label, r
        assert r["value"] == pytest.approx(value), r
        assert r["unit_code"] == unit, r
        assert r["unit_label"] == unit_label, r
        assert r["observed_at"].tzinfo is not None, "observed_at must be timestamptz: %r" % r
        assert r["observed_at"] == observed, "code %s: observed_at %s, expected %s" % (
            code, r["observed_at"], observed.isoformat())
        assert r["received_at"] is not None and r["received_at"].tzinfo is not None, r
        slack = datetime.timedelta(seconds=5)
        assert t_before - slack <= r["received_at"] <= t_after + slack, (
            "received_at %s not within the exchange [%s, %s]" % (r["received_at"], t_before,
                                                               t_after))


def test_sample_message_is_acked_and_stored(cmsd, db, connect):
    # The sample as shipped, with its MSH-3 changed to the certificate's serial.
    m = h.parse(h.SAMPLE)
    m["MSH.F3"] = "MON-0001^MON-0001^L"
    text = h.to_wire(m)
    control_id = str(m.segment("MSH")(10))
    assert control_id == "MON-0002-000417"

    t0 = db_now(db)
    with connect(cmsd.port, "MON-0001") as c:
        ack = c.request(text)
    t1 = db_now(db)
    assert_aa(ack, control_id, "MON-0001")

    rows = [r for r in db.vitals(patient_id="MRN-448812", device="MON-0001")
            if r["received_at"] >= t0 - datetime.timedelta(seconds=5)]
    assert_sample_rows(rows, "MON-0001", "MRN-448812", t0, t1)
    # observed_at carries the sender's +01:00: 08:30:00+01 = 07:30:00Z,
    # the NIBP rows their own 08:28:45+01.
    times = {r["mdc_code"]: r["observed_at"].astimezone(UTC) for r in rows}
    assert times["150456"] == datetime.datetime(2026, 11, 15, 7, 30, 0, tzinfo=UTC)
    assert times["150021"] == datetime.datetime(2026, 11, 15, 7, 28, 45, tzinfo=UTC)
    # The message itself is recorded once under its (device, MSH-10) key.
    assert db.message_count("MON-0001", control_id) == 1
    assert db.obs_count("MON-0001", control_id) == h.SAMPLE_NOBS


def test_frames_coalesced_in_one_write(cmsd, db, connect):
    msgs = [(h.unique("COAL"), h.unique("PT-COAL")) for _ in range(3)]
    data = b"".join(h.frame(h.pcd01("MON-0002", cid, patient=pt)) for cid, pt in msgs)
    t0 = db_now(db)
    with connect(cmsd.port, "MON-0002") as c:
        c.send_bytes(data)
        acks = [c.recv_ack() for _ in msgs]
    t1 = db_now(db)
    assert sorted(a.control_id for a in acks) == sorted(cid for cid, _ in msgs), acks
    for a in acks:
        assert_aa(a, a.control_id, "MON-0002")
    for cid, pt in msgs:
        assert_sample_rows(db.vitals(patient_id=pt), "MON-0002", pt, t0, t1)


def test_frame_split_byte_by_byte(cmsd, db, connect):
    cid, pt = h.unique("SPLIT"), h.unique("PT-SPLIT")
    data = h.frame(h.pcd01("MON-0001", cid, patient=pt))
    t0 = db_now(db)
    with connect(cmsd.port, "MON-0001") as c:
        for i in range(len(data)):
            c.send_bytes(data[i:i + 1])  # one TLS record per byte
        ack = c.recv_ack()
        # and the connection still frames correctly afterwards
        cid2, pt2 = h.unique("SPLIT"), h.unique("PT-SPLIT")
        ack2 = c.request(h.pcd01("MON-0001", cid2, patient=pt2))
    t1 = db_now(db)
    assert_aa(ack, cid, "MON-0001")
    assert_aa(ack2, cid2, "MON-0001")
    assert_sample_rows(db.vitals(patient_id=pt), "MON-0001", pt, t0, t1)
    assert_sample_rows(db.vitals(patient_id=pt2), "MON-0001", pt2, t0, t1)


def test_unknown_mdc_code_is_stored_with_its_code(cmsd, db, connect):
    cid, pt = h.unique("UNK"), h.unique("PT-UNK")
    extra = ["OBX|13|NM|999999^MDC_BB_NOT_A_REAL_CODE^MDC|1.99.1.1|42.5|262688^MDC_DIM_PERCENT^MDC"
             "|||||R|||20261115083000+0100",
             "OBX|14|NM|888888^^MDC|1.99.1.2|-3|||||||R|||20261115083000+0100"]
    with connect(cmsd.port, "MON-0001") as c:
        ack = c.request(h.pcd01("MON-0001", cid, patient=pt, extra_obx=extra))
    assert_aa(ack, cid, "MON-0001")
    rows = {r["mdc_code"]: r for r in db.vitals(patient_id=pt)}
    assert len(rows) == h.SAMPLE_NOBS + 2, sorted(rows)
    r = rows["999999"]
    assert r["mdc_label"] == "MDC_BB_NOT_A_REAL_CODE"
    assert r["value"] == pytest.approx(42.5)
    assert r["unit_code"] == "262688" and r["unit_label"] == "MDC_DIM_PERCENT"
    assert r["observed_at"] == datetime.datetime(2026, 11, 15, 7, 30, tzinfo=UTC)
    r = rows["888888"]
    assert r["value"] == pytest.approx(-3)
    assert r["unit_code"] in (None, ""), r


def test_observation_times_fall_back_and_default_zone(cmsd, db, connect):
    """OBX-14 absent -> OBR-7; a time without offset is read in db_timezone
    (UTC in the test config)."""
    cid, pt = h.unique("TIME"), h.unique("PT-TIME")
    extra = ["OBX|13|NM|151712^MDC_CONC_AWAY_CO2_ET^MDC|1.7.1.1|38|266016^MDC_DIM_MMHG^MDC"
             "|||||R",
             "OBX|14|NM|150033^MDC_PRESS_BLD_ART_SYS^MDC|1.2.1.1|121|266016^MDC_DIM_MMHG^MDC"
             "|||||R|||20261115091500"]
    with connect(cmsd.port, "MON-0001") as c:
        ack = c.request(h.pcd01("MON-0001", cid, patient=pt, extra_obx=extra))
    assert_aa(ack, cid, "MON-0001")
    rows = {r["mdc_code"]: r for r in db.vitals(patient_id=pt)}
    # OBR-7 of the sample is 20261115083000+0100
    assert rows["151712"]["observed_at"] == datetime.datetime(2026, 11, 15, 7, 30, tzinfo=UTC)
    assert rows["150033"]["observed_at"] == datetime.datetime(2026, 11, 15, 9, 15, tzinfo=UTC)


def test_frame_split_at_awkward_places_with_pauses(cmsd, db, connect):
    """Separate reads are guaranteed by pauses: after the start byte, inside
    a segment, between 0x1C and 0x0D."""
    import time
    cid, pt = h.unique("PAUSE"), h.unique("PT-PAUSE")
    data = h.frame(h.pcd01("MON-0002", cid, patient=pt))
    cuts = [1, len(data) // 2, len(data) - 1]
    t0 = db_now(db)
    with connect(cmsd.port, "MON-0002") as c:
        prev = 0
        for cut in cuts + [len(data)]:
            c.send_bytes(data[prev:cut])
            prev = cut
            time.sleep(0.3)
        ack = c.recv_ack()
    assert_aa(ack, cid, "MON-0002")
    assert_sample_rows(db.vitals(patient_id=pt), "MON-0002", pt, t0, db_now(db))
