"""The load generators of `make bench`, at small scale, against a real cmsd and
PostgreSQL: every figure in docs/benchmarks.md is computed from their counts, so
their counts must be what the server stored and answered. No timing is asserted
here (the benchmarks measure that); only that counts match and nothing is lost.

  cms-monitor  P1 (as fast as the window allows) and P2 (paced): messages and
               observations it counts as ACKed (AA) are the rows in the database;
               with --waveforms, --alarms and --heartbeat (the waveform and alarm
               scenarios): samples, alarm events and heartbeats too;
               P6 (--source 127.0.0.x): its connections come from that address;
  hsbench      P4: every handshake it counts reached cmsd's device check (one
               device_connected line each), resumed ones included, and "resume"
               mode resumes;
  holder.py    P3: every session it reports open sent a message that was stored.
"""

import json
import subprocess
import sys

import pytest

import helpers as h

FIRST, COUNT = 201, 8
DEVICES = ["MON-%04d" % i for i in range(FIRST, FIRST + COUNT)]
MONITOR = h.BUILD / "cms-monitor"
HSBENCH = h.BUILD / "hsbench"
HOLDER = h.ROOT / "tools" / "bench" / "holder.py"


@pytest.fixture(scope="module")
def bench_devices(pki, db):
    pki.mint("MON-", FIRST, COUNT)
    for serial in DEVICES:
        h.device_add(db, serial, status="active")
    return DEVICES


def stored(db):
    """(messages, observations) stored for the devices of this module."""
    return db.query(
        "SELECT count(DISTINCT m.id), count(o.message_id) FROM cms.messages m "
        "JOIN cms.devices d ON d.id = m.device_id "
        "LEFT JOIN cms.observations o ON o.message_id = m.id "
        "WHERE d.serial = ANY(%s)", (DEVICES,))[0]


def run_json(cmd, timeout=180):
    p = h.run([str(c) for c in cmd], timeout=timeout, check=False)
    assert p.returncode == 0, "%s exited %d:\n%s" % (cmd[0], p.returncode, p.stderr[-3000:])
    return json.loads(p.stdout)


def monitor(cmsd, pki, *extra):
    assert MONITOR.exists(), "%s is missing (make)" % MONITOR
    return run_json([MONITOR, "--host", "127.0.0.1", "--port", cmsd.port, "--ca", pki.root_ca,
                     "--cert-dir", pki.dir, "--first", FIRST, "--devices", COUNT, "--json",
                     "--connect-rate", 0, "--drain-timeout", 60000] + list(extra))


@pytest.mark.parametrize("scenario,args", [
    ("P1 as fast as the window allows", ["--rate", 0, "--window", 8, "--duration", 2]),
    ("P2 paced, one message in flight", ["--rate", 20, "--window", 1, "--duration", 2]),
])
def test_monitor_counts_are_what_the_database_holds(cmsd, pki, db, bench_devices, scenario, args):
    msgs0, obs0 = stored(db)
    m = monitor(cmsd, pki, *args)
    msgs, obs = stored(db)
    assert m["devices_acked"] == COUNT, m
    assert m["sent"] > 0, m
    # Every message sent was answered AA: none refused, none left without an answer.
    assert (m["acked_aa"], m["ae"], m["ar"], m["unacked"], m["lost"]) == (m["sent"], 0, 0, 0, 0), m
    assert m["unmatched_acks"] == 0 and m["bad_acks"] == 0, m
    assert m["obs_acked"] == 10 * m["acked_aa"], m  # --obs default: 10 per message
    assert m["latency_ms"]["n"] == m["acked_aa"], m
    # What it counts as acknowledged is exactly what was committed, no more, no less.
    assert (msgs - msgs0, obs - obs0) == (m["acked_aa"], m["obs_acked"]), (scenario, m)


def stored_clinical(db):
    """(waveform blocks, samples, alarm events, messages) of this module's devices."""
    return db.query(
        "SELECT (SELECT count(*) FROM cms.waveform_blocks w WHERE w.device_id = ANY(ids)),"
        " (SELECT coalesce(sum(nsamples), 0) FROM cms.waveform_blocks w"
        "  WHERE w.device_id = ANY(ids)),"
        " (SELECT count(*) FROM cms.alarm_events e WHERE e.device_id = ANY(ids)),"
        " (SELECT count(*) FROM cms.messages m WHERE m.device_id = ANY(ids)) "
        "FROM (SELECT array_agg(id) AS ids FROM cms.devices WHERE serial = ANY(%s)) d",
        (DEVICES,))[0]


def test_monitor_waveforms_and_alarms_counts(cmsd, pki, db, bench_devices):
    blocks0, samples0, events0, msgs0 = stored_clinical(db)
    m = monitor(cmsd, pki, "--rate", 4, "--window", 4, "--duration", 6, "--waveforms",
                "ecg2,pleth", "--alarms", 1, "--heartbeat", 1, "--steady-after", 1)
    blocks, samples, events, msgs = stored_clinical(db)
    assert (m["ae"], m["ar"], m["unacked"], m["lost"]) == (0, 0, 0, 0), m
    assert m["alarms_sent"] > 0 and m["alarms_aa"] == m["alarms_sent"], m
    assert m["heartbeats_sent"] > 0 and m["heartbeats_aa"] == m["heartbeats_sent"], m
    assert m["alarm_latency_ms"]["n"] == m["alarms_aa"], m
    # the steady figures: only the alarms sent from 1 s after every device's first ACK
    assert 0 < m["alarm_latency_ms"]["steady"]["n"] < m["alarm_latency_ms"]["n"], m
    # a block per channel per message: 500 Hz / 4 + 125 Hz / 4 samples
    assert m["samples_acked"] == m["acked_aa"] * (125 + 31), m
    assert (blocks - blocks0, samples - samples0) == (2 * m["acked_aa"], m["samples_acked"]), m
    # heartbeats are messages but not alarm events
    assert events - events0 == m["alarms_aa"], m
    assert msgs - msgs0 == m["acked_aa"] + m["alarms_aa"] + m["heartbeats_aa"], m


def hsbench(cmsd, pki, mode, devices=4, procs=2):
    assert HSBENCH.exists(), "%s is missing (make)" % HSBENCH
    return run_json([HSBENCH, "--port", cmsd.port, "--cert-dir", pki.dir, "--first", FIRST,
                     "--devices", devices, "--procs", procs, "--duration", 1.5, "--mode", mode,
                     "--probe", "mllp", "--ticket-wait", 20])


def device_connected(cmsd, since):
    """Serials of the device_connected lines since, one per session."""
    return [d for line in cmsd.log_lines(since) if "device_connected" in line
            for d in DEVICES if "device=%s " % d in line]


@pytest.mark.parametrize("mode", ["full", "resume"])
def test_hsbench_counts_handshakes_that_reached_the_device_check(cmsd, pki, bench_devices, mode):
    since = cmsd.log_size()
    r = hsbench(cmsd, pki, mode)
    assert r["errors"] == 0 and r["no_ticket"] == 0, r
    assert r["handshakes"] == r["full"] + r["resumed"] > 0, r
    if mode == "full":
        assert r["resumed"] == 0, r
    else:
        # The first connection of each of the 4 device slots is full; the rest resume.
        assert r["full"] == 4 and r["resumed"] > 0, r
    # Each counted handshake was answered after cmsd checked the device's status:
    # resumed sessions are checked too (one device_connected line per session).
    h.wait_until(lambda: len(device_connected(cmsd, since)) >= r["handshakes"], 10,
                 what="cmsd's device_connected lines")
    seen = device_connected(cmsd, since)
    assert len(seen) == r["handshakes"], r
    # Each handshake used its slot's own device certificate: all four rotate.
    assert set(seen) == set(DEVICES[:4]), sorted(set(seen))


def test_holder_sessions_are_stored_and_held(cmsd, pki, db, bench_devices):
    msgs0, _ = stored(db)
    p = subprocess.Popen([sys.executable, str(HOLDER), "--port", str(cmsd.port), "--pki",
                          str(pki.dir), "--first", str(FIRST), "--devices", str(COUNT),
                          "--proto", "mllp", "--timeout", "60"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        line = p.stdout.readline()
        assert line, "holder.py printed nothing: %s" % p.stderr.read()[-3000:]
        r = json.loads(line)
        assert r["open"] == COUNT and r["failed"] == 0, r
        assert p.poll() is None, "holder.py must hold its sessions until stdin closes"
        # Each session's message (one observation) was ACKed AA, hence committed.
        msgs, _ = stored(db)
        assert msgs - msgs0 == COUNT
    finally:
        p.stdin.close()
        p.wait(30)
    assert p.returncode == 0, p.stderr.read()[-3000:]


def test_monitor_source_address_is_the_connections_source(cmsd, pki, db, bench_devices):
    """P6 spreads 30 000 sessions over several cms-monitor processes, each with its own
    --source 127.0.0.x (one source/destination pair has ~28 000 ephemeral ports): the
    connections must come from that address, as cmsd sees them."""
    since = cmsd.log_size()
    msgs0, _ = stored(db)
    m = monitor(cmsd, pki, "--source", "127.0.0.2", "--rate", 20, "--window", 1,
                "--duration", 1)
    assert m["devices_acked"] == COUNT, m
    assert (m["acked_aa"], m["ae"], m["ar"], m["unacked"]) == (m["sent"], 0, 0, 0), m
    assert stored(db)[0] - msgs0 == m["acked_aa"]
    h.wait_until(lambda: len(device_connected(cmsd, since)) >= COUNT, 10,
                 what="cmsd's device_connected lines")
    lines = [line for line in cmsd.log_lines(since) if "device_connected" in line
             and any("device=%s " % d in line for d in DEVICES)]
    assert len(lines) == COUNT, lines
    peers = {line.split(" peer=", 1)[1].split()[0] for line in lines}
    assert len(peers) == COUNT, peers  # one connection (one local port) per device
    assert all(p.startswith("127.0.0.2:") for p in peers), peers


@pytest.mark.parametrize("source,why", [
    ("192.0.2.1", "cannot bind"),          # TEST-NET-1: not an address of this host
    ("::1", "not a numeric IPv4 address"),  # the server is 127.0.0.1
    ("localhost", "not a numeric IPv4 address"),
])
def test_monitor_source_that_cannot_be_used_is_a_setup_error(cmsd, pki, bench_devices, source,
                                                             why):
    p = h.run([str(MONITOR), "--host", "127.0.0.1", "--port", str(cmsd.port), "--ca",
               str(pki.root_ca), "--cert-dir", str(pki.dir), "--first", str(FIRST), "--devices",
               "1", "--count", "1", "--source", source], timeout=60, check=False)
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    assert "--source %s: %s" % (source, why) in p.stderr, p.stderr[-2000:]


def test_monitor_wards_spread_locations(cmsd, pki, db, bench_devices):
    """--wards N: device number n reports from WARD-<1 + n % N> (PV1-3), bed BED-<n>."""
    m = monitor(cmsd, pki, "--rate", 4, "--window", 2, "--duration", 1, "--wards", 3)
    assert m["acked_aa"] > 0 and m["ae"] == 0, m
    rows = db.query("SELECT DISTINCT d.serial, m.location FROM cms.messages m "
                    "JOIN cms.devices d ON d.id = m.device_id WHERE d.serial = ANY(%s) "
                    "AND m.location LIKE 'WARD-%%'", (DEVICES,))
    want = {s: "WARD-%d^^BED-%s" % (1 + int(s[4:]) % 3, s[4:]) for s in DEVICES}
    assert rows and all(want[s] == loc for s, loc in rows), rows
    assert {loc.split("^")[0] for _, loc in rows} == {"WARD-1", "WARD-2", "WARD-3"}, rows
