"""The clinical read side over HTTPS for a viewer (docs/operator-api.md,
"Clinical data"): latest vitals per device, alarms and one alarm's events,
1-minute trends and waveform blocks, as JSON pages with cursors, with curl and
an operator certificate of the viewer role. Anonymous callers get 401."""

import pytest

pytest.register_assert_rewrite("admin_helpers")
import admin_helpers as a  # noqa: E402
import helpers as h
from test_alarms import r40  # noqa: E402
from test_waveforms import wave_msg  # noqa: E402

pytest_plugins = ["admin_helpers"]  # fixture admin_cmsd

DEV = "MON-0001"


def get(c, pki, path, status=200):
    st, body, raw = a.curl(c, pki, "GET", path, cert="viewer1")
    assert st == status, (path, st, raw)
    return body


def send(c, connect, text):
    with connect(c.port, DEV) as m:
        ack = m.request(text)
    assert ack.code == "AA", ack


@pytest.mark.parametrize("path", ["/api/v1/vitals/latest", "/api/v1/alarms", "/api/v1/alarms/1",
                                  "/api/v1/devices/%s/trend?code=150456&from=2030-01-01&to=2030-"
                                  "01-02" % DEV,
                                  "/api/v1/devices/%s/waveforms?from=2030-01-01&to=2030-01-02"
                                  % DEV])
def test_anonymous_gets_401(admin_cmsd, pki, path):
    st, body, raw = a.curl(admin_cmsd, pki, "GET", path)
    assert st == 401, (st, raw)


def test_alarms_pages_and_one_alarm(admin_cmsd, pki, connect):
    ids = [h.unique("API-ALM") for _ in range(3)]
    for aid in ids:
        send(admin_cmsd, connect, r40(DEV, h.unique("A"), aid, "start"))
    send(admin_cmsd, connect, r40(DEV, h.unique("A"), ids[0], "end", state="inactive",
                                  at="20261115083148+0100"))
    first = get(admin_cmsd, pki, "/api/v1/alarms?device=%s&limit=2" % DEV)
    assert len(first["alarms"]) == 2 and first["next_before"] is not None, first
    assert [x["alarm_id"] for x in first["alarms"]] == [ids[2], ids[1]]  # newest first
    x = first["alarms"][0]
    assert (x["device_serial"], x["priority"], x["kind"], x["state"], x["current"]) == (
        DEV, "PH", "physiological", "active", True), x
    assert x["value"] == 84 and x["limits"] == "90-100" and x["started_at"], x
    rest = get(admin_cmsd, pki, "/api/v1/alarms?device=%s&limit=2&before=%d" % (
        DEV, first["next_before"]))
    assert rest["alarms"][0]["alarm_id"] == ids[0], rest
    current = get(admin_cmsd, pki, "/api/v1/alarms?device=%s&current=true&limit=1000" % DEV)
    assert ids[0] not in [x["alarm_id"] for x in current["alarms"]]
    one = get(admin_cmsd, pki, "/api/v1/alarms/%d" % rest["alarms"][0]["alarm_ref"])
    assert one["alarm_id"] == ids[0] and one["current"] is False, one
    assert [(e["phase"], e["unknown_alarm"]) for e in one["events"]] == [
        ("start", False), ("end", False)], one["events"]
    assert get(admin_cmsd, pki, "/api/v1/alarms/999999999", status=404)["error"] == "not_found"
    bad = get(admin_cmsd, pki, "/api/v1/alarms?current=maybe", status=400)
    assert bad["error"] == "bad_request", bad


def test_latest_vitals_per_device(admin_cmsd, pki, connect):
    pt = h.unique("PT-API")
    send(admin_cmsd, connect, h.pcd01(DEV, h.unique("V"), patient=pt))

    def mine():
        body = get(admin_cmsd, pki, "/api/v1/vitals/latest?device=%s" % DEV)
        v = body["devices"][0]["vitals"] if body["devices"] else []
        return [x for x in v if x["patient_id"] == pt]
    got = h.wait_until(mine, 5, what="the latest vitals")
    assert {x["mdc_code"]: x["value"] for x in got}["150456"] == 96, got
    with connect(admin_cmsd.port, "MON-0002") as m:  # a second device: a second page
        assert m.request(h.pcd01("MON-0002", h.unique("V"), patient=pt)).code == "AA"
    h.wait_until(lambda: len(get(admin_cmsd, pki, "/api/v1/vitals/latest")["devices"]) >= 2, 5,
                 what="two devices with latest vitals")
    page = get(admin_cmsd, pki, "/api/v1/vitals/latest?limit=1")
    assert len(page["devices"]) == 1 and page["next_after"] == page["devices"][0]["device_serial"]
    page2 = get(admin_cmsd, pki, "/api/v1/vitals/latest?limit=1&after=" + page["next_after"])
    assert page2["devices"][0]["device_serial"] > page["next_after"], page2


def test_trend_pages_by_minute(admin_cmsd, pki, connect):
    for when, v in (("20310303100005", 90), ("20310303100050", 94), ("20310303100110", 97)):
        send(admin_cmsd, connect, "\r".join([
            "MSH|^~\\&|%s^%s^L|W|CMS|H|%s+0000||ORU^R01^ORU_R01|%s|P|2.6" % (
                DEV, DEV, when, h.unique("T")),
            "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.1|%d|262688^MDC_DIM_PERCENT^MDC"
            "|||||R|||%s+0000" % (v, when)]) + "\r")
    q = "/api/v1/devices/%s/trend?code=150456&from=2031-03-03T10:00:00Z&to=2031-03-03T11:00:00Z" \
        % DEV
    first = get(admin_cmsd, pki, q + "&limit=1")
    assert [(m["median"], m["n"]) for m in first["minutes"]] == [(92, 2)], first
    assert first["next_from"] == "2031-03-03T10:01:00.000000Z", first
    rest = get(admin_cmsd, pki, q.replace("from=2031-03-03T10:00:00Z",
                                          "from=" + first["next_from"]))
    assert [(m["median"], m["n"]) for m in rest["minutes"]] == [(97, 1)], rest
    assert rest["next_from"] is None
    assert get(admin_cmsd, pki, "/api/v1/devices/%s/trend?code=150456" % DEV,
               status=400)["error"] == "bad_request"


def test_waveform_pages_keep_the_channels_of_one_start(admin_cmsd, pki, connect):
    pt = h.unique("PT-WAPI")
    for second in ("00", "01"):
        msg = wave_msg(DEV, h.unique("W"), pt, ecg_n=50, pleth_n=13).replace(
            "20261115083000.000+0100", "203201010000%s.000+0000" % second)
        send(admin_cmsd, connect, msg)
    q = "/api/v1/devices/%s/waveforms?from=2032-01-01T00:00:00Z&to=2032-01-01T00:01:00Z" % DEV
    first = get(admin_cmsd, pki, q + "&limit=1")
    labels = [b["mdc_label"] for b in first["blocks"]]
    assert labels == ["MDC_ECG_ELEC_POTL_II", "MDC_PULS_OXIM_PLETH"], first
    b = first["blocks"][0]
    assert (b["sample_rate"], b["nsamples"], b["scale"]) == (500, 50, 2.5), b
    assert len(b["samples"]) == 50 and "raw_samples" not in b, b
    assert first["next_from"] == "2032-01-01T00:00:01.000000Z", first
    rest = get(admin_cmsd, pki, q.replace("from=2032-01-01T00:00:00Z",
                                          "from=" + first["next_from"]))
    assert len(rest["blocks"]) == 2 and rest["next_from"] is None, rest
