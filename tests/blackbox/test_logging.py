"""cmsd's log is structured: one logfmt line per event on stderr with a
timestamp, a level and an event name; connection events name the device
and the peer address."""

import re

import helpers as h

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)$")


def test_log_lines_are_logfmt(cmsd, connect):
    since = cmsd.test_log_start
    with connect(cmsd.port, "MON-0001") as c:
        ack = c.request(h.pcd01("MON-0001", h.unique("LOG"), patient=h.unique("PT")))
        assert ack.code == "AA", ack
        local = c.local_port
    cmsd.wait_log(lambda ln: ln in cmsd.peer_lines(local, since), since, 20,
                  "a line about our connection")
    lines = [ln for ln in cmsd.log_lines() if ln.strip() and not ln.startswith("### test harness")]
    assert lines
    for ln in lines:
        f = h.logfmt(ln)
        assert TS.match(f.get("ts", "")), "no ISO ts= in %r" % ln
        assert f.get("level") in ("debug", "info", "warn", "error"), ln
        assert re.match(r"^[a-z][a-z0-9_]*$", f.get("event", "")), ln
    ours = [h.logfmt(ln) for ln in cmsd.peer_lines(local, since)]
    assert any(f.get("device") == "MON-0001" for f in ours), ours


def test_json_lines(cmsd_factory, connect):
    """log_format = json: every line cmsd writes is one JSON object with the same fields."""
    import json
    c = cmsd_factory("cmsd-json-log", log_format="json")
    since = c.log_size()
    with connect(c.port, "MON-0001") as cl:
        assert cl.request(h.pcd01("MON-0001", h.unique("JSON"), patient=h.unique("PT"))).code \
            == "AA"
    c.wait_log(lambda ln: '"event":"device_connected"' in ln, since, 20, "device_connected")
    lines = [ln for ln in c.log_lines() if ln.strip() and not ln.startswith("### test harness")]
    assert lines
    for ln in lines:
        j = json.loads(ln)
        assert TS.match(j["ts"]) and j["level"] in ("debug", "info", "warn", "error"), j
        assert re.match(r"^[a-z][a-z0-9_]*$", j["event"]), j
    assert any(json.loads(ln).get("device") == "MON-0001" for ln in lines)
