"""The read side for clinicians and EMRs (docs/clinical-data.md):
cms.latest_vitals follows the newest committed value of each (device, code,
sub id) within about a second and an older value never replaces a newer one;
cms.vitals_trend gives 1-minute medians; text and coded observations are
stored; the reporting role cms_reader may read the views."""

import datetime

import psycopg2
import pytest

import helpers as h

SERIAL = "MON-0301"
UTC = datetime.timezone.utc


@pytest.fixture(scope="module")
def device(pki, db):
    pki.mint("MON-", 301, 1)
    h.device_add(db, SERIAL, status="active")
    return SERIAL


def oru(device, cid, obx, when="20300101120000+0000", patient="PT-VIEWS"):
    segs = ["MSH|^~\\&|%s^%s^L|W|CMS|H|%s||ORU^R01^ORU_R01|%s|P|2.6" % (device, device, when, cid),
            "PID|||%s^^^H^MR" % patient,
            "OBR|1|%s^%s|%s^%s|182777000^monitoring of patient^SCT|||%s" % (
                cid, device, cid, device, when)]
    return "\r".join(segs + obx) + "\r"


def spo2(value, when, sub="1.22.1.1", n=1):
    return "OBX|%d|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|%s|%s|262688^MDC_DIM_PERCENT^MDC|||||R|||%s" % (
        n, sub, value, when)


def latest(db, device):
    return {(r[0], r[1]): (r[2], r[3]) for r in db.query(
        "SELECT mdc_code, sub_id, value, observed_at FROM cms.latest_vitals "
        "WHERE device_serial = %s", (device,))}


def send(cmsd, connect, device, text):
    with connect(cmsd.port, device) as c:
        ack = c.request(text)
    assert ack.code == "AA", ack


def test_latest_vitals_newest_wins(cmsd, db, connect, device):
    send(cmsd, connect, device, oru(device, h.unique("L"), [
        spo2(95, "20300101120000+0000"), spo2(40, "20300101120000+0000", sub="1.22.1.9", n=2)]))
    h.wait_until(lambda: latest(db, device).get(("150456", "1.22.1.1")), 5,
                 what="cms.latest_vitals to show the value")
    t12 = datetime.datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert latest(db, device)[("150456", "1.22.1.1")] == (95, t12)
    assert latest(db, device)[("150456", "1.22.1.9")] == (40, t12)  # sub ids apart
    # an older observation arriving later does not replace it...
    send(cmsd, connect, device, oru(device, h.unique("L"), [spo2(80, "20300101115900+0000")]))
    # ...a newer one does
    send(cmsd, connect, device, oru(device, h.unique("L"), [spo2(97, "20300101120100+0000")]))
    h.wait_until(lambda: latest(db, device)[("150456", "1.22.1.1")][0] == 97, 5,
                 what="the newer value")
    assert latest(db, device)[("150456", "1.22.1.1")] == (97, t12 + datetime.timedelta(minutes=1))
    # the older one is in cms.vitals all the same
    assert db.scalar("SELECT count(*) FROM cms.vitals WHERE device_serial = %s AND value = 80",
                     (device,)) == 1


def test_trend_one_minute_medians(cmsd, db, connect, device):
    values = [("20300202100005", 90), ("20300202100020", 97), ("20300202100050", 92),
              ("20300202100110", 95), ("20300202100130", 96)]
    for when, v in values:
        send(cmsd, connect, device, oru(device, h.unique("T"), [spo2(v, when + "+0000")]))
    rows = db.query("SELECT * FROM cms.vitals_trend(%s, '150456', %s, %s)", (
        device, datetime.datetime(2030, 2, 2, 10, tzinfo=UTC),
        datetime.datetime(2030, 2, 2, 11, tzinfo=UTC)))
    t10 = datetime.datetime(2030, 2, 2, 10, tzinfo=UTC)
    assert [tuple(r) for r in rows] == [
        (t10, 92.0, 90.0, 97.0, 3),
        (t10 + datetime.timedelta(minutes=1), 95.5, 95.0, 96.0, 2)], rows


def test_text_and_coded_observations_stored(cmsd, db, connect, device):
    cid = h.unique("X")
    send(cmsd, connect, device, oru(device, cid, [
        "OBX|1|ST|184326^MDC_ECG_STAT_RHY^MDC|1.5.1.2|Sinus \\T\\ rhythm||||||R|||20300101120000+0000",
        "OBX|2|CWE|192512^MDC_ECG_LEAD^MDC|1.5.1.3|131330^MDC_ECG_ELEC_POTL_II^MDC||||||R",
        "OBX|3|ST|1^NOTE^MDC|1.0.0.1|%s||||||R" % ("x" * 300)]))
    rows = db.query("SELECT value_type, code, value_text, value_code, value_system, "
                    "value_truncated FROM cms.text_observations t JOIN cms.messages m "
                    "ON m.id = t.message_id WHERE m.control_id = %s ORDER BY t.set_id", (cid,))
    assert [tuple(r) for r in rows] == [
        ("ST", "184326", "Sinus & rhythm", None, None, False),
        ("CWE", "192512", "MDC_ECG_ELEC_POTL_II", "131330", "MDC", False),
        ("ST", "1", "x" * 255, None, None, True)], rows


def test_reader_role_reads_the_views(db, device):
    login = h.unique("reader").replace("-", "_")
    db.execute("CREATE ROLE %s LOGIN IN ROLE cms_reader" % login)
    try:
        c = psycopg2.connect(db.pg.dsn(db.name, login))
        with c, c.cursor() as cur:
            for view in ("cms.latest_vitals", "cms.alarms", "cms.alarm_history", "cms.waveforms",
                         "cms.device_last_heard", "cms.vitals"):
                cur.execute("SELECT count(*) FROM %s" % view)
            cur.execute("SELECT count(*) FROM cms.vitals_trend(%s, '150456', now() - "
                        "interval '1 day', now())", (device,))
            with pytest.raises(psycopg2.Error):
                cur.execute("SELECT count(*) FROM cms.waveform_blocks")
        c.close()
    finally:
        db.execute("DROP ROLE %s" % login)
