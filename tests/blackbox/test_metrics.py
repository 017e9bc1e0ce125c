"""GET /metrics: the Prometheus text format 0.0.4, checked by Prometheus' own tools.

- On the HTTPS listener it needs an operator certificate with the role scraper (OU=scraper)
  or higher; anonymous and device peers get 401, an operator certificate without a role 403.
- `promtool check metrics` accepts the output (format and naming lint).
- Every family and every label it serves is in docs/operations.md's metrics table, and
  every family of that table is served: the two cannot drift apart.
- The counters move with what happens: a stored message, a refused handshake, a refused
  device, a full and a resumed handshake, an HTTPS answer; no label carries a device serial.
- metrics_listen serves the same on a loopback plaintext port (off by default), and
  cmsd refuses to start with a non-loopback metrics_listen.
- metrics = off: 404 on both.
- A real Prometheus (Debian's `prometheus`) scrapes cmsd on loopback, over HTTPS with
  the scraper certificate and over the plaintext listener: both targets up, and a
  query returns cmsd's series.
"""

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

pytest.register_assert_rewrite("admin_helpers")
import admin_helpers as ah  # noqa: E402
import helpers as h

pytest_plugins = ["admin_helpers"]

OPS = h.ROOT / "docs" / "operations.md"


def scraper(pki):
    return pki.path("operators/scraper.crt"), pki.path("operators/scraper.key")


def families(text):
    """{family name: type} from the # TYPE lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def samples(text):
    """[(name, {label: value}, value)] of every sample line."""
    out = []
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", ln)
        assert m, "not a sample line: %r" % ln
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def value(text, name, **labels):
    for n, lb, v in samples(text):
        if n == name and all(lb.get(k) == str(x) for k, x in labels.items()):
            return v
    raise AssertionError("no sample %s%r in:\n%s" % (name, labels, text[:3000]))


def documented():
    """{family: set(label names)} from the metrics table of docs/operations.md."""
    out = {}
    for ln in OPS.read_text().splitlines():
        m = re.match(r"^\| `((?:cmsd|process)_[a-z0-9_]+)` \| (\w+) \|([^|]*)\|", ln)
        if m:
            out[m.group(1)] = set(re.findall(r"`([a-z_]+)`", m.group(3)))
    return out


def scrape(c, pki, cert="scraper"):
    if cert == "scraper":
        cert = scraper(pki)
    return ah.curl(c, pki, "GET", "/metrics", cert=cert)


@pytest.fixture(scope="module")
def mcmsd(pki, db):
    port = h.free_port()
    cfg = ah.api_config(pki, db)
    cfg["metrics_listen"] = "127.0.0.1:%d" % port
    c = h.Cmsd("cmsd-metrics", cfg)
    c.start()
    c.metrics_port = port
    h.wait_until(lambda: ah.curl(c, pki, "GET", "/readyz")[0] == 200, 60, 0.2, "cmsd ready")
    yield c
    ah.stop_checked(c)


def test_who_may_scrape(mcmsd, pki):
    st, _, raw = scrape(mcmsd, pki)
    assert st == 200, raw
    assert "cmsd_build_info" in raw
    assert ah.curl(mcmsd, pki, "GET", "/metrics", cert="viewer1")[0] == 200
    assert ah.curl(mcmsd, pki, "GET", "/metrics", cert=None)[0] == 401
    assert ah.curl(mcmsd, pki, "GET", "/metrics", cert=pki.device("MON-0001"))[0] == 401
    # A scraper may read /metrics and nothing else.
    st, body, raw = ah.curl(mcmsd, pki, "GET", "/api/v1/devices", cert=scraper(pki))
    assert st == 403, raw
    # The content type of the text format.
    p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{content_type}", "--cacert",
                        str(pki.root_ca), "--cert", str(scraper(pki)[0]), "--key",
                        str(scraper(pki)[1]), ah.server_url(mcmsd) + "/metrics"],
                       capture_output=True, text=True, timeout=30)
    assert p.stdout == "text/plain; version=0.0.4; charset=utf-8", p


def test_promtool_accepts_it(mcmsd, pki):
    if shutil.which("promtool") is None:
        pytest.fail("promtool missing: tools/deps.sh installs Debian's prometheus package")
    st, _, raw = scrape(mcmsd, pki)
    assert st == 200
    p = subprocess.run(["promtool", "check", "metrics"], input=raw, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        "promtool check metrics:\n%s%s" % (p.stdout, p.stderr)
    # And it would catch a bad line (the check above can fail).
    bad = raw + "cmsd_oops_total{a=\"1\"} x\n"
    p = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0


def test_docs_list_exactly_what_is_served(mcmsd, pki):
    st, _, raw = scrape(mcmsd, pki)
    assert st == 200
    served = families(raw)
    docs = documented()
    assert docs, "no metrics table in docs/operations.md"
    assert set(served) == set(docs), \
        "served but not documented: %s; documented but not served: %s" % (
            sorted(set(served) - set(docs)), sorted(set(docs) - set(served)))
    labels = {}
    for name, lb, _ in samples(raw):
        fam = re.sub(r"_(bucket|sum|count)$", "", name) if name not in served else name
        labels.setdefault(fam, set()).update(k for k in lb if k != "le")
    for fam in served:
        assert labels.get(fam, set()) == docs[fam], \
            "%s: labels served %s, documented %s" % (fam, sorted(labels.get(fam, set())),
                                                     sorted(docs[fam]))


def test_counters_follow_events(mcmsd, pki, connect):
    before = scrape(mcmsd, pki)[2]
    with connect(mcmsd.port, "MON-0001") as cl:
        ack = cl.request(h.pcd01("MON-0001", h.unique("MET"), patient=h.unique("PT")))
        assert ack.code == "AA", ack
    # A device the registry does not know, a certificate from a CA the MLLP listener does
    # not trust (an operator's), one that is no client certificate (serverAuth only).
    h.expect_refused(pki, mcmsd.port, pki.device("MON-0099"), h.pcd01("MON-0099", "X1"))
    h.expect_refused(pki, mcmsd.port, ah.operator(pki, "viewer1"), h.pcd01("MON-0001", "X2"))
    h.expect_refused(pki, mcmsd.port,
                     (pki.path("bad/server-eku.crt"), pki.path("bad/server-eku.key")),
                     h.pcd01("MON-0001", "X3"))

    want = [  # (sample, labels, at least this much more)
        ("cmsd_hl7_messages_total", {"type": "ORU^R01", "result": "AA"}, 1),
        ("cmsd_observations_stored_total", {}, 1),
        ("cmsd_ack_latency_seconds_count", {}, 1),
        ("cmsd_commit_latency_seconds_count", {}, 1),
        ("cmsd_batch_messages_count", {}, 1),
        ("cmsd_db_roundtrip_seconds_count", {"query": "ingest"}, 1),
        ("cmsd_connections_accepted_total", {"listener": "mllp"}, 4),
        ("cmsd_tls_handshakes_total", {"listener": "mllp", "kind": "full"}, 2),
        ("cmsd_connections_refused_total", {"listener": "mllp", "reason": "unregistered"}, 1),
        ("cmsd_connections_refused_total", {"listener": "mllp", "reason": "unknown_ca"}, 1),
        ("cmsd_connections_refused_total", {"listener": "mllp", "reason": "bad_certificate"}, 1),
        ("cmsd_http_responses_total", {"code": "2xx"}, 1),
    ]
    missing = []

    def moved():
        after = scrape(mcmsd, pki)[2]
        missing[:] = [(n, lb, value(after, n, **lb) - value(before, n, **lb))
                      for n, lb, least in want
                      if value(after, n, **lb) - value(before, n, **lb) < least]
        return not missing
    try:
        h.wait_until(moved, 20, 0.3, "the counters to move")
    except AssertionError:
        raise AssertionError("did not move enough: %s" % missing)
    after = scrape(mcmsd, pki)[2]
    assert value(after, "cmsd_db_up") == 1
    assert value(after, "cmsd_ready") == 1
    assert value(after, "cmsd_build_info", version="0.1.0") == 1
    assert value(after, "cmsd_certificate_expiry_timestamp_seconds", certificate="server") > \
        time.time()
    assert value(after, "cmsd_crl_next_update_timestamp_seconds") > time.time()
    # No device serial, patient id or address anywhere in the output.
    assert "MON-" not in after and "127.0.0.1" not in after


def test_plaintext_listener_is_loopback_only(mcmsd, pki, cmsd_factory):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mcmsd.metrics_port,
                                timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "# TYPE cmsd_connections_open gauge" in r.read().decode()
    with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % mcmsd.metrics_port,
                                timeout=10) as r:
        assert json.loads(r.read())["status"] == "ready"
    c = cmsd_factory("cmsd-metrics-any", start=False, metrics_listen="0.0.0.0:%d" % h.free_port())
    c.start(wait=False)
    assert c.proc.wait(30) == 1
    assert "loopback" in c.log_text()


def test_metrics_off(cmsd_factory, pki, db):
    port = h.free_port()
    cfg = ah.api_config(pki, db)
    c = cmsd_factory("cmsd-metrics-off", metrics="off", metrics_listen="127.0.0.1:%d" % port,
                     tls_crl=cfg["tls_crl"])
    st, body, raw = scrape(c, pki)
    assert st == 404 and body["detail"] == "metrics = off", raw
    try:
        urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10)
        raise AssertionError("200 with metrics = off")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_a_real_prometheus_scrapes_cmsd(mcmsd, pki, tmp_path):
    prom = shutil.which("prometheus")
    if prom is None:
        pytest.fail("prometheus missing: tools/deps.sh installs Debian's prometheus package")
    port = h.free_port()
    cert, key = scraper(pki)
    (tmp_path / "prometheus.yml").write_text("""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: cmsd-https
    scheme: https
    tls_config:
      ca_file: %s
      cert_file: %s
      key_file: %s
      server_name: localhost
    static_configs:
      - targets: ['127.0.0.1:%d']
  - job_name: cmsd-plain
    static_configs:
      - targets: ['127.0.0.1:%d']
""" % (pki.root_ca, cert, key, ah.https_port(mcmsd), mcmsd.metrics_port))
    log = open(tmp_path / "prometheus.log", "w")
    p = subprocess.Popen([prom, "--config.file=%s" % (tmp_path / "prometheus.yml"),
                          "--storage.tsdb.path=%s" % (tmp_path / "data"),
                          "--web.listen-address=127.0.0.1:%d" % port],
                         stdout=log, stderr=subprocess.STDOUT)
    api = "http://127.0.0.1:%d/api/v1/" % port

    def get(path):
        with urllib.request.urlopen(api + path, timeout=5) as r:
            return json.loads(r.read())

    try:
        def both_up():
            try:
                t = get("targets")["data"]["activeTargets"]
            except OSError:
                return False
            return len(t) == 2 and all(x["health"] == "up" for x in t)
        try:
            h.wait_until(both_up, 90, 0.5, "Prometheus to scrape both cmsd targets")
        except AssertionError:
            raise AssertionError("targets: %s\nprometheus log:\n%s" % (
                get("targets"), (tmp_path / "prometheus.log").read_text()[-3000:]))

        def queried():
            r = get("query?query=cmsd_build_info")
            return r["status"] == "success" and len(r["data"]["result"]) == 2
        h.wait_until(queried, 30, 0.5, "cmsd_build_info in Prometheus")
        r = get("query?query=sum%20by%20(job)%20(cmsd_db_up)")
        assert sorted(float(x["value"][1]) for x in r["data"]["result"]) == [1.0, 1.0], r
    finally:
        p.terminate()
        p.wait(30)
        log.close()
