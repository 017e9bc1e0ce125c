"""Real senders vary: delimiters come from MSH-1/MSH-2, text may carry
escape sequences, segments may end in CRLF. Each variant is stored with the
same values as the plain sample; OBX-4 sub-id, OBX-11 status and PV1-3
location are kept."""

import pytest

import helpers as h

DEV = "MON-0003"


def stored_as_sample(db, pt):
    rows = db.vitals(patient_id=pt)
    assert len(rows) == h.SAMPLE_NOBS, rows
    for r in rows:
        label, value, unit, unit_label, observed = h.SAMPLE_OBS[r["mdc_code"]]
        assert (r["mdc_label"], r["unit_code"], r["unit_label"]) == (label, unit, unit_label), r
        assert r["value"] == pytest.approx(value), r
        assert r["observed_at"] == observed, r


def send(cmsd, connect, text, cid):
    with connect(cmsd.port, DEV) as c:
        ack = c.request(text)
    assert ack.code == "AA" and ack.control_id == cid, ack


def test_other_delimiters_from_msh1_msh2(cmsd, db, connect):
    cid, pt = h.unique("DELIM"), h.unique("PT-DELIM")
    text = h.pcd01(DEV, cid, patient=pt)
    assert "#" not in text and "$" not in text
    text = text.replace("|", "#").replace("^", "$")
    assert text.startswith("MSH#$~\\&#")
    send(cmsd, connect, text, cid)
    stored_as_sample(db, pt)


def test_escape_sequences_unescaped(cmsd, db, connect):
    cid, base = h.unique("ESC"), h.unique("PT-ESC")
    # \T\ is the subcomponent separator (&), \F\ the field separator (|)
    text = h.pcd01(DEV, cid, patient=base + "\\T\\1\\F\\2")
    text = text.replace("150456^MDC_PULS_OXIM_SAT_O2^MDC", "150456^MDC_PULS\\S\\OXIM^MDC")
    send(cmsd, connect, text, cid)
    rows = db.vitals(patient_id=base + "&1|2")
    assert len(rows) == h.SAMPLE_NOBS, "patient id not unescaped to %r" % (base + "&1|2")
    assert {r["mdc_label"] for r in rows if r["mdc_code"] == "150456"} == {"MDC_PULS^OXIM"}


def test_crlf_segment_endings(cmsd, db, connect):
    cid, pt = h.unique("CRLF"), h.unique("PT-CRLF")
    text = h.pcd01(DEV, cid, patient=pt).replace("\r", "\r\n")
    send(cmsd, connect, text, cid)
    stored_as_sample(db, pt)


def test_sub_id_status_location_kept(cmsd, db, connect):
    cid, pt = h.unique("SUB"), h.unique("PT-SUB")
    send(cmsd, connect, h.pcd01(DEV, cid, patient=pt), cid)
    rows = db.query(
        "SELECT o.code, o.sub_id, o.status, m.location FROM cms.observations o "
        "JOIN cms.messages m ON m.id = o.message_id JOIN cms.devices d ON d.id = m.device_id "
        "WHERE d.serial = %s AND m.control_id = %s", (DEV, cid))
    got = {r[0]: (r[1], r[2]) for r in rows}
    assert got["150456"] == ("1.22.1.1", "R")
    assert got["150023"] == ("1.1.1.3", "R")
    assert {r[3] for r in rows} == {"CCU^^BED-07"}


def test_message_without_patient(cmsd, db, connect):
    """A monitor with no patient admitted sends no PID: stored, patient unknown."""
    cid = h.unique("NOPID")
    text = "".join(seg + "\r" for seg in h.pcd01(DEV, cid).split("\r")
                   if seg and not seg.startswith("PID|"))
    send(cmsd, connect, text, cid)
    rows = db.query("SELECT o.patient_ref FROM cms.observations o "
                    "JOIN cms.messages m ON m.id = o.message_id "
                    "JOIN cms.devices d ON d.id = m.device_id "
                    "WHERE d.serial = %s AND m.control_id = %s", (DEV, cid))
    assert db.obs_count(DEV, cid) == h.SAMPLE_NOBS
    assert rows and all(r[0] is None for r in rows), rows


def test_non_numeric_observations_kept_apart(cmsd, db, connect):
    """ST/CWE rows, a waveform (NA with its sample rate) and NM rows without a
    value do not make the message fail and do not enter cms.vitals: the text
    rows are text observations, the NA row a waveform block
    (docs/clinical-data.md), the empty NM row nothing."""
    cid, pt = h.unique("SKIP"), h.unique("PT-SKIP")
    extra = ["OBX|13|ST|0^MDC_ATTR_TEXT^MDC|1.0.0.1|lead off|||||||R",
             "OBX|14|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.0.0.2|196674^MDC_EVT_LO^MDC|||||||R",
             "OBX|15|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.5.2.1|1^2^3^4^5|"
             "266418^MDC_DIM_MILLI_VOLT^MDC|||||R",
             "OBX|16|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.5.2.1.1|500|264608^MDC_DIM_PER_SEC^MDC|||||R",
             "OBX|17|NM|151712^MDC_CONC_AWAY_CO2_ET^MDC|1.7.1.1||266016^MDC_DIM_MMHG^MDC|||||X"]
    send(cmsd, connect, h.pcd01(DEV, cid, patient=pt, extra_obx=extra), cid)
    stored_as_sample(db, pt)
    texts = db.query("SELECT t.value_type, t.code, t.value_text, t.value_code FROM "
                     "cms.text_observations t JOIN cms.messages m ON m.id = t.message_id "
                     "WHERE m.control_id = %s ORDER BY t.set_id", (cid,))
    assert [tuple(r) for r in texts] == [
        ("ST", "0", "lead off", None), ("CWE", "68480", "MDC_EVT_LO", "196674")], texts
    waves = db.query("SELECT w.mdc_code, w.sample_rate, w.samples FROM cms.waveforms w "
                     "WHERE w.patient_id = %s", (pt,))
    assert [tuple(r) for r in waves] == [
        ("131330", 500.0, [1.0, 2.0, 3.0, 4.0, 5.0])], waves
