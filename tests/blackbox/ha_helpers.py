"""Engines for the scale-out and HA tests: etcd + Patroni managing PostgreSQL
on loopback, HAProxy in TCP mode, and a monitor that reconnects and resends.

Everything runs under <build>/test-run/ha (or /var/tmp when the postgres
account cannot reach the checkout), on ports picked at run time, and is
stopped by the fixtures that start it. PostgreSQL (and so Patroni) runs as
the postgres account; etcd and HAProxy as the caller.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import re
import threading
import time
import urllib.request
from pathlib import Path

import psycopg2

import helpers as h

PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(src, sport, dst="127.0.0.1", dport=2575, local=False, tlv=b""):
    """A PROXY protocol v2 header as HAProxy's send-proxy-v2 writes it (IPv4 or IPv6)."""
    import ipaddress
    import struct
    if local:
        return PROXY_V2_SIG + b"\x20\x00" + struct.pack(">H", len(tlv)) + tlv
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    fam = b"\x11" if a.version == 4 else b"\x21"
    body = a.packed + b.packed + struct.pack(">HH", sport, dport) + tlv
    return PROXY_V2_SIG + b"\x21" + fam + struct.pack(">H", len(body)) + body


def metrics_text(c):
    """GET /metrics from cmsd c's loopback metrics_listen (set in its config)."""
    port = int(c.cfg["metrics_listen"].rsplit(":", 1)[1])
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        return r.read().decode()


def metric(c, name, **labels):
    """The value of one sample (the sum over the series matching labels), or None."""
    found = None
    for ln in metrics_text(c).splitlines():
        m = re.match(r"^(\S+?)(\{(.*)\})? (\S+)$", ln)
        if not m or ln.startswith("#") or m.group(1) != name:
            continue
        lb = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(lb.get(k) == str(v) for k, v in labels.items()):
            found = (found or 0.0) + float(m.group(4))
    return found


ETCD = shutil.which("etcd") or "/usr/bin/etcd"
PATRONI = shutil.which("patroni") or "/usr/bin/patroni"
PATRONICTL = shutil.which("patronictl") or "/usr/bin/patronictl"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def ha_base_dir(name):
    """A fresh directory the postgres account can reach."""
    base = h.pg_base_dir().parent / ("ha-" + name) if h.pg_base_dir().name == "pg" \
        else Path(str(h.pg_base_dir()) + "-ha-" + name)
    if base.exists():
        shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True, mode=0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    return base


class Etcd:
    """One etcd member with the v2 API (Patroni 3.0's python3-etcd client)."""

    def __init__(self, base):
        self.dir = Path(base) / "etcd"
        self.client = h.free_port()
        self.peer = h.free_port()
        self.proc = None
        self.log = Path(base) / "etcd.log"

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.client

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [ETCD, "--name", "e1", "--data-dir", str(self.dir),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer,
                 "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer,
                 "--initial-cluster", "e1=http://127.0.0.1:%d" % self.peer,
                 "--enable-v2=true"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.client), timeout=1).close()
                return True
            except OSError:
                return False
        h.wait_until(up, 30, 0.1, "etcd to listen")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


PATRONI_YML = """\
scope: {scope}
name: {name}
log: {{level: WARNING}}
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd:
  host: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: 6
    loop_wait: 1
    retry_timeout: 2
    maximum_lag_on_failover: 1048576
    # A commit returns only when the synchronous standby has the WAL too
    # (synchronous_commit = on), and only a synchronous standby may be promoted:
    # an ACK cmsd sent after COMMIT survives the loss of the primary. Strict: with
    # no standby left, the primary stops committing instead of going on alone.
    synchronous_mode: true
    synchronous_mode_strict: true
    # etcd unreachable: the primary stays primary as long as it reaches every
    # member over Patroni's REST API (POST /failsafe), instead of demoting itself.
    failsafe_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        synchronous_commit: "on"
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 8
        max_replication_slots: 8
        max_connections: 100
        fsync: "off"
        full_page_writes: "on"
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: {bindir}
  pgpass: {base}/pgpass-{name}
  authentication:
    superuser: {{username: postgres, password: ha-test}}
    replication: {{username: replicator, password: ha-test}}
    rewind: {{username: rewinder, password: ha-test}}
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication replicator 127.0.0.1/32 trust
  parameters:
    unix_socket_directories: "{base}"
"""


class PatroniNode:
    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.rest = h.free_port()
        self.pg = h.free_port()
        self.cfg = cluster.dir / ("%s.yml" % name)
        self.data = cluster.dir / ("data-" + name)
        self.log = cluster.dir / ("%s.log" % name)
        self.proc = None

    def write_config(self):
        self.cfg.write_text(PATRONI_YML.format(
            scope=self.cluster.scope, name=self.name, rest=self.rest, etcd=self.cluster.etcd.client,
            pg=self.pg, data=self.data, bindir=h.pg_bindir(), base=self.cluster.dir))
        if os.geteuid() == 0:
            shutil.chown(self.cfg, "postgres", "postgres")

    def start(self):
        self.write_config()
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(h.as_postgres([PATRONI, self.cfg]), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()

    def postmaster_pid(self):
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split("\n")[0])
        return None

    def crash(self):
        """The machine dies: Patroni and PostgreSQL killed at once (-9)."""
        pm = self.postmaster_pid()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if pm:
            # The postmaster and its children (also stopped ones, which would
            # never notice its death).
            self._signal_postgres(signal.SIGKILL)
        self.proc.wait(10)

    def postgres_pids(self):
        """The postmaster and its children (each child calls setsid(): no common
        process group to signal)."""
        pm = self.postmaster_pid()
        if not pm:
            return []
        pids = [pm]
        for d in os.listdir("/proc"):
            if d.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = Path("/proc/%s/stat" % d).read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == pm:
                        pids.append(int(d))
        return pids

    def _signal_postgres(self, sig):
        for pid in self.postgres_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _signal_all(self, sig):
        """sig to Patroni's process group and to every PostgreSQL process."""
        if self.proc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        self._signal_postgres(sig)

    def freeze(self):
        """The node stops answering (a partition, a hung machine): SIGSTOP to
        Patroni and every PostgreSQL process of the node. Sockets stay open."""
        self._signal_all(signal.SIGSTOP)

    def thaw(self):
        self._signal_all(signal.SIGCONT)

    def freeze_postgres(self):
        """Only PostgreSQL stops (its WAL receiver too: a standby that lags)."""
        self._signal_postgres(signal.SIGSTOP)

    def thaw_postgres(self):
        self._signal_postgres(signal.SIGCONT)

    def stop(self):
        self.thaw()
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.crash()
        pm = self.postmaster_pid()
        if pm:  # a postmaster Patroni left behind (it was killed): stop it too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pm, signal.SIGQUIT)


class PatroniCluster:
    """etcd + n Patroni nodes (one primary, a synchronous standby, replicas)."""

    def __init__(self, name, n=3):
        self.dir = ha_base_dir(name)
        self.scope = "cms-" + name
        self.etcd = Etcd(self.dir)
        self.nodes = [PatroniNode(self, "n%d" % (i + 1)) for i in range(n)]

    def start(self):
        self.etcd.start()
        self.nodes[0].start()
        h.wait_until(lambda: self.leader() is not None, 120, 0.5, "a Patroni leader")
        for n in self.nodes[1:]:
            n.start()
        h.wait_until(lambda: self.sync_standby() is not None and
                     all(m["state"] in ("running", "streaming") for m in self.members()) and
                     len(self.members()) == len(self.nodes), 180, 0.5,
                     "every Patroni member running, one synchronous standby")
        return self

    def members(self):
        """[{name, role, state, host, port, ...}] from patronictl (any live node's config)."""
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                p = subprocess.run([PATRONICTL, "-c", str(n.cfg), "list", "-f", "json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   timeout=30)
                if p.returncode == 0:
                    with contextlib.suppress(ValueError):
                        return [{k.lower(): v for k, v in m.items()}
                                for m in json.loads(p.stdout)]
        return []

    def _by_role(self, role):
        for m in self.members():
            if m.get("role", "").lower().replace(" ", "_") == role and \
                    m.get("state") in ("running", "streaming"):
                return next(n for n in self.nodes if n.name == m["member"])
        return None

    def leader(self):
        return self._by_role("leader")

    def sync_standby(self):
        return self._by_role("sync_standby")

    def conninfo(self, dbname="postgres", user="postgres", attrs="read-write"):
        """libpq multi-host conninfo over every node."""
        hosts = ",".join("127.0.0.1" for _ in self.nodes)
        ports = ",".join(str(n.pg) for n in self.nodes)
        return ("host=%s port=%s dbname=%s user=%s target_session_attrs=%s connect_timeout=2"
                % (hosts, ports, dbname, user, attrs))

    # The interface helpers.Db expects of a cluster.
    def dsn(self, dbname="postgres", user="postgres"):
        return self.conninfo(dbname, user)

    def connect(self, dbname="postgres", user="postgres"):
        c = psycopg2.connect(self.conninfo(dbname, user))
        c.autocommit = True
        return c

    def stop(self):
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.stop()
        self.etcd.stop()


class ResilientMonitor(threading.Thread):
    """A monitor as a real one behaves: sends its messages in order with a
    window, and after a lost connection reconnects (with backoff) and resends
    what was not acknowledged, with the same MSH-10. aa: control ids that got
    AA; other: control id -> other codes; resends: count."""

    def __init__(self, pki, port, device, msgs, window=8, host="127.0.0.1", deadline=240,
                 pace=0.0):
        super().__init__(daemon=True)
        self.pki, self.port, self.device, self.host = pki, port, device, host
        self.msgs = list(msgs)  # [(control_id, text)]
        self.window = window
        self.deadline = deadline
        self.pace = pace
        self.aa = set()
        self.ack_at = {}  # control id -> monotonic time of its AA
        self.other = {}
        self.resends = 0
        self.reconnects = 0
        self.error = None

    def run(self):
        end = time.monotonic() + self.deadline
        todo = [cid for cid, _ in self.msgs]
        text = dict(self.msgs)
        backoff = 0.1
        while todo and time.monotonic() < end:
            try:
                c = h.device_client(self.pki, self.port, self.device, host=self.host, timeout=5)
            except (OSError, ssl.SSLError, h.Closed):
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                self.reconnects += 1
                continue
            backoff = 0.1
            inflight = []
            try:
                i = 0
                while (i < len(todo) or inflight) and time.monotonic() < end:
                    while i < len(todo) and len(inflight) < self.window:
                        cid = todo[i]
                        c.send(text[cid], timeout=5)
                        inflight.append(cid)
                        i += 1
                        if self.pace:
                            time.sleep(self.pace)
                    a = c.recv_ack(timeout=40)
                    if a.control_id in inflight:
                        inflight.remove(a.control_id)
                    if a.code == "AA":
                        self.aa.add(a.control_id)
                        self.ack_at.setdefault(a.control_id, time.monotonic())
                    else:
                        self.other.setdefault(a.control_id, []).append(a.code)
                todo = [cid for cid in todo if cid not in self.aa]
            except (OSError, ssl.SSLError, h.Closed, ValueError) as e:
                self.error = repr(e)
                left = [cid for cid in todo if cid not in self.aa]
                self.resends += sum(1 for cid in inflight if cid not in self.aa)
                todo = left
                self.reconnects += 1
            finally:
                c.close()
            todo = [cid for cid in todo if cid not in self.aa]
            if todo:
                time.sleep(0.05)


HAPROXY_CFG = """\
# HAProxy in front of {n} cmsd: TCP mode, TLS passed through (mTLS stays end to end
# between monitor and cmsd), the monitor's address in a PROXY protocol v2 header,
# health checks on cmsd's readiness endpoint over its HTTPS port.
global
    # Two descriptors per proxied connection; the per-process limit here is 20 000.
    maxconn 9000
    log stdout format raw local0 warning

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    timeout check 2s
    retries 3
    option redispatch

frontend mllp
    bind 127.0.0.1:{mllp}
    default_backend cmsd_mllp

frontend https
    bind 127.0.0.1:{https}
    default_backend cmsd_https

backend cmsd_mllp
    balance leastconn
    option httpchk
    http-check send meth GET uri {check}
    http-check expect status 200
{mllp_servers}

backend cmsd_https
    balance roundrobin
    option httpchk
    http-check send meth GET uri {check}
    http-check expect status 200
{https_servers}
"""


class HAProxy:
    """HAProxy 2.6 in the foreground (-db) with the config above."""

    def __init__(self, base, backends, check="/readyz"):
        self.dir = Path(base)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mllp = h.free_port()
        self.https = h.free_port()
        self.cfg = self.dir / "haproxy.cfg"
        self.log = self.dir / "haproxy.log"
        self.backends = backends  # [(name, mllp_port, https_port)]
        self.check = check
        self.proc = None

    def write(self):
        opts = ("check inter 500ms fall 1 rise 2 check-ssl verify none check-send-proxy "
                "send-proxy-v2")
        ms = "\n".join("    server %s 127.0.0.1:%d %s port %d" % (n, m, opts, hp)
                       for n, m, hp in self.backends)
        hs = "\n".join("    server %s 127.0.0.1:%d %s" % (n, hp, opts)
                       for n, m, hp in self.backends)
        self.cfg.write_text(HAPROXY_CFG.format(n=len(self.backends), mllp=self.mllp,
                                               https=self.https, check=self.check,
                                               mllp_servers=ms, https_servers=hs))

    def start(self):
        self.write()
        subprocess.run([HAPROXY, "-c", "-f", str(self.cfg)], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.cfg)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.mllp), timeout=1).close()
                return True
            except OSError:
                return False
        h.wait_until(up, 30, 0.1, "haproxy to listen")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ---- shared by the fault tests (test_ha_fault_*.py) ----------------------

def patroni_cluster(name, n=3):
    """A module fixture's body: an etcd + Patroni cluster, stopped afterwards."""
    import pytest
    for tool in (ETCD, PATRONI, PATRONICTL):
        if not os.path.exists(tool):
            pytest.fail("%s is missing (tools/deps.sh installs etcd-server and patroni)" % tool)
    c = PatroniCluster(name, n=n)
    try:
        t0 = time.monotonic()
        c.start()
        print("patroni %s: cluster up in %.1f s" % (name, time.monotonic() - t0))
        yield c
    finally:
        c.stop()


def ha_cmsd_config(cluster, dbname):
    """cmsd on the cluster's multi-host conninfo, with a loopback metrics port."""
    return {"db_conninfo": cluster.conninfo(dbname, h.DB_ROLE) + " application_name=cmsd-ha",
            "db_reconnect_min_ms": 50, "db_reconnect_max_ms": 500,
            "ingest_timeout_ms": 60000, "db_query_timeout_ms": 5000,
            "metrics_listen": "127.0.0.1:%d" % h.free_port()}


def start_monitors(pki, port, devs, n, run, pace, deadline=300, window=8):
    mons = []
    for d in devs:
        msgs = [("%s-%s-%05d" % (run, d[-1], i), None) for i in range(n)]
        msgs = [(cid, h.pcd01(d, cid, patient="PT-" + cid)) for cid, _ in msgs]
        mons.append(ResilientMonitor(pki, port, d, msgs, window=window, deadline=deadline,
                                     pace=pace))
    for m in mons:
        m.start()
    return mons


def assert_exactly_once(db, mons, n):
    """Every monitor done, every message ACKed, each ACKed one stored exactly
    once with its observations. Returns the number of messages checked."""
    for m in mons:
        m.join(300)
    for m in mons:
        assert not m.is_alive(), "%s still sending" % m.device
        assert len(m.aa) == n, "%s: %d of %d acknowledged (last error %s, other %s)" % (
            m.device, len(m.aa), n, m.error, dict(list(m.other.items())[:5]))
        stored = db.messages_for(m.device, [cid for cid, _ in m.msgs])
        missing = sorted(m.aa - set(stored))
        assert not missing, "%s: ACKed but not stored: %s" % (m.device, missing[:5])
        dup = {cid: v for cid, v in stored.items() if v[0] != 1}
        assert not dup, "%s: stored more than once: %s" % (m.device, list(dup.items())[:5])
        want = stored[m.msgs[0][0]][1]
        short = {cid: v for cid, v in stored.items() if v[1] != want or not want}
        assert not short, "%s: observations missing: %s" % (m.device, list(short.items())[:5])
    return sum(len(m.aa) for m in mons)


def ack_times(mons):
    return sorted(t for m in mons for t in m.ack_at.values())


def ack_stall(mons, t_fault):
    """(longest gap between two ACKs from the last one before t_fault on, first
    ACK after t_fault - t_fault)."""
    times = ack_times(mons)
    after = [t for t in times if t > t_fault]
    assert after, "no ACK after the fault"
    before = [t for t in times if t <= t_fault]
    seq = ([before[-1]] if before else []) + after
    return max(b - a for a, b in zip(seq, seq[1:])), after[0] - t_fault


class MetricSampler(threading.Thread):
    """Samples cmsd metrics every interval s: samples = [(t, {name: value})]."""

    def __init__(self, c, names, interval=0.5):
        super().__init__(daemon=True)
        self.c, self.names, self.interval = c, names, interval
        self.samples = []
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            with contextlib.suppress(OSError, ValueError):
                text = metrics_text(self.c)
                row = {}
                for n in self.names:
                    for ln in text.splitlines():
                        if ln.startswith(n + " ") or ln.startswith(n + "{"):
                            row[n] = row.get(n, 0.0) + float(ln.rsplit(" ", 1)[1])
                self.samples.append((time.monotonic(), row))
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join(10)

    def values(self, name, t0=0.0, t1=float("inf")):
        return [r[name] for t, r in self.samples if t0 <= t <= t1 and name in r]


def log_events(c, since, *events):
    """{event: count} of cmsd c's log lines from offset since."""
    out = {e: 0 for e in events}
    for ln in c.log_lines(since):
        for e in events:
            if "event=%s " % e in ln or ln.endswith("event=%s" % e):
                out[e] += 1
    return out
