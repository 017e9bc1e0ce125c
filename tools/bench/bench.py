#!/usr/bin/python3
"""bench.py - the scenarios of `make bench` (issue 5), run side by side with their peers.

Started by tools/bench.sh (which installs the packages, builds, raises the fd limit).
Everything lives under build/bench/: pki/ (dev PKI + minted MON-0001..), pg/ (private
PostgreSQL cluster, run as the postgres account), run/ (configs and logs of cmsd, nginx,
mosquitto), fw/ (the P5 image), results.json, results.csv, profile-*.txt.

    bench.py [--quick] [--runs N] [--only P1,P3] [--sweep] [--profile P1,P3,P4,P6]

Scenarios (docs/benchmarks.md has the method):
  P1  observations committed+ACKed/s, cms-monitor -> cmsd -> PostgreSQL, vs psql \\copy of
      the same rows into cms.observations in the same run
  P2  ACK latency p50/p99 at 10 000 monitors x 1 msg/s x 10 obs (or the largest level held),
      with GET /metrics scraped every second meanwhile (the loopback metrics listener)
  P1M the cost of metrics: P1 with metrics = off and = on, runs alternating, side by side
  P3  RSS per held mTLS session, cmsd vs Mosquitto
  P4  full and resumed mTLS handshakes/s, cmsd vs nginx (same workers)
  P5  64 MiB firmware download over mTLS, cmsd (signed, approved release) vs nginx (a file)
  P2V P2's load at BENCH_P2V_DEVICES monitors (1000, spread over BENCH_P2V_WARDS wards, 20)
      run six times, side by side: without, with 200 open live-event streams watching every
      ward, with 200 each watching one ward (?ward=, the console's ward view), those ward
      streams on a second cmsd on the same database (the events relayed, as behind HAProxy),
      those ward streams with events_batch_ms = BENCH_P2V_BATCH_MS (250; default 50), and
      those ward streams with the readers under SCHED_IDLE (their CPU no longer competes,
      as when the viewers are browsers on other machines)
      (GET /api/v1/events: 195 curl, 5 probes that time each event from its publication to
      its arrival): ACK p99 each way, event delivery p50/p99, streams dropped, cores
  W   waveforms: BENCH_W_DEVICES monitors (100) x 2 ECG channels x 500 Hz (+ 10 numerics),
      1 msg/s: ACK p50/p99, MB stored per ECG channel-hour against the raw 16-bit samples
  A   alarms under P2's load: the last tenth of the monitors also raise IHE PCD-04 alarms
      (start, continue, end) once all are connected: the alarms' ACK p50/p99
  P6  30 000 live mTLS monitors (1 msg / 10 s) on 2 cmsd processes sharing the ports
      (SO_REUSEPORT), from several cms-monitor processes each with its own --source
      127.0.0.x: ACK p50/p99, sessions refused, RSS per session vs Mosquitto
"""

import argparse
import contextlib
import csv
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / os.environ.get("BUILD", "build")
BENCH = BUILD / "bench"
RUN = BENCH / "run"
PKI = BENCH / "pki"
PGDIR = BENCH / "pg"
FWDIR = BENCH / "fw"
BIN = BENCH / "bin"
CMSD = BIN / "cmsd"  # snapshots made by tools/bench.sh
MONITOR = BIN / "cms-monitor"
CMSCTL = BIN / "cmsctl"
HSBENCH = BIN / "hsbench"
HOLDER = ROOT / "tools" / "bench" / "holder.py"
PG_PORT = int(os.environ.get("BENCH_PG_PORT", "55870"))
NDEV = 10000  # minted device certificates MON-0001 .. MON-10000
P2V_WARDS = int(os.environ.get("BENCH_P2V_WARDS", "20"))  # P2V: monitors spread over wards
PY = "/usr/bin/python3"
PROFILE = set()

# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def log(msg):
    sys.stderr.write("bench: %s\n" % msg)
    sys.stderr.flush()


def sh(cmd, check=True, timeout=600, **kw):
    p = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError("failed (rc=%d): %s\n%s%s" % (p.returncode, " ".join(map(str, cmd)),
                                                      p.stdout[-2000:], p.stderr[-2000:]))
    return p


_PORTS_GIVEN = set()


def free_port():
    """A free port on 127.0.0.1 not handed out before in this run (two calls in a row
    can get the same one from the kernel; cmsd refuses mllp_listen = https_listen)."""
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(p)
            return p
    raise RuntimeError("no free port")


def wait_port(port, timeout=60, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited (rc=%s) before listening on %d" % (proc.returncode, port))
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on 127.0.0.1:%d after %ds" % (port, timeout))


def clk():
    return os.sysconf("SC_CLK_TCK")


def proc_cpu(pid, reaped=False):
    """utime+stime of a process (all threads), seconds; 0 if gone. reaped: plus the CPU of
    its children that have exited (cutime+cstime: e.g. the postmaster's ended backends)."""
    try:
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if reaped else 0)) / clk()
    except (OSError, IndexError):
        return 0.0


def children(ppid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = open("/proc/%s/stat" % d).read().rsplit(")", 1)[1].split()
                if int(f[1]) == ppid:
                    out.append(int(d))
            except (OSError, IndexError):
                pass
    return out


def rss_kib(pid, key="VmRSS"):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


def owns_listener(pid, port):
    """True when process pid holds a TCP socket listening on 127.0.0.1:port."""
    want = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            x = line.split()
            if x[3] == "0A" and int(x[1].rsplit(":", 1)[1], 16) == port:
                want.add("socket:[%s]" % x[9])
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) in want:
                return True
        except OSError:
            pass
    return False


def machine_busy():
    """(busy, total) jiffies of the whole machine."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


class CpuMeter:
    """CPU seconds of named process groups over an interval, plus the rest of the machine
    (machine noise: other users' processes)."""

    def __init__(self, groups):
        self.groups = groups  # name -> callable returning pids

    def snap(self):
        return {n: f() if n == "postgres" else sum(proc_cpu(p) for p in f())
                for n, f in self.groups.items()}

    def start(self):
        self.t0 = time.monotonic()
        self.c0 = self.snap()
        self.m0 = machine_busy()

    def stop(self, extra_cpu=0.0):
        el = time.monotonic() - self.t0
        c1 = self.snap()
        m1 = machine_busy()
        out = {n: round((c1[n] - self.c0[n]) / el, 3) for n in c1}
        busy = (m1[0] - self.m0[0]) / clk() / el
        ours = sum(out.values()) + extra_cpu / el
        out["machine_busy"] = round(busy, 3)
        out["others"] = round(max(0.0, busy - ours), 3)
        return out


def stats(values):
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v),
            "runs": v}


# ---------------------------------------------------------------------------------------------
# PostgreSQL (tools/pg.sh: the postgres account, Unix socket only)
# ---------------------------------------------------------------------------------------------


class Pg:
    def __init__(self):
        self.dir = PGDIR

    def pgsh(self, *args, **kw):
        return sh([ROOT / "tools" / "pg.sh"] + list(args), **kw)

    def dsn(self, role="postgres"):
        return self.pgsh("dsn", self.dir, PG_PORT, role).stdout.strip()

    def psql(self, sql, timeout=600):
        return sh(["/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
                   self.dsn(), "-c", sql], timeout=timeout).stdout.strip()

    def fresh(self):
        """A new cluster every run of make bench: stop, remove, initdb, tune, migrate."""
        self.pgsh("stop", self.dir, PG_PORT, check=False)
        link = self.dir / "cluster"
        if link.is_symlink():
            shutil.rmtree(os.readlink(link), ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.pgsh("start", self.dir, PG_PORT)
        # Same settings for cmsd and COPY: durable commits (fsync, synchronous_commit on),
        # room for WAL so that no checkpoint lands in a measurement.
        for k, v in (("shared_buffers", "1GB"), ("max_wal_size", "16GB"),
                     ("min_wal_size", "1GB"), ("checkpoint_timeout", "30min"),
                     ("wal_buffers", "64MB"), ("max_connections", "200")):
            self.psql("ALTER SYSTEM SET %s = '%s'" % (k, v))
        self.pgsh("stop", self.dir, PG_PORT)
        self.pgsh("start", self.dir, PG_PORT)
        sh([CMSCTL, "db", "migrate", "--dsn", self.dsn(), "--sql-dir", ROOT / "sql"])
        self.pgsh("setup", self.dir, PG_PORT)
        self.psql(
            "INSERT INTO cms.devices (serial, model, status) "
            "SELECT 'MON-' || CASE WHEN i < 10000 THEN lpad(i::text, 4, '0') ELSE i::text END, "
            "'bench', 'active' FROM generate_series(1, %d) i "
            "ON CONFLICT (serial) DO UPDATE SET status = 'active'" % NDEV)
        self.psql("ANALYZE")

    def postmaster_pid(self):
        root = Path(os.readlink(self.dir / "cluster")) if (self.dir / "cluster").is_symlink() else self.dir
        try:
            return int((root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self):
        pm = self.postmaster_pid()
        return ([pm] + children(pm)) if pm else []

    def cpu(self):
        """CPU seconds of the whole cluster so far: live processes + reaped backends."""
        pm = self.postmaster_pid()
        if not pm:
            return 0.0
        return proc_cpu(pm, reaped=True) + sum(proc_cpu(p) for p in children(pm))

    def clean_ingest(self):
        self.psql("TRUNCATE cms.observations, cms.messages, cms.patients")
        self.psql("CHECKPOINT")

    def versions(self):
        return self.psql("SHOW server_version")


# ---------------------------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------------------------


class Server:
    name = "server"

    def __init__(self):
        self.proc = None
        self.port = None

    def pids(self):
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid] + children(self.proc.pid)

    def rss(self, key="VmRSS"):
        return sum(rss_kib(p, key) for p in self.pids())

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            log("%s had exited by itself, rc=%s (negative: killed by that signal); log in %s"
                % (self.name, self.proc.returncode, RUN))
            self.died = self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Cmsd(Server):
    name = "cmsd"

    def __init__(self, pg, overrides=None, tag="cmsd", ports=None):
        super().__init__()
        self.pg = pg
        self.tag = tag
        self.ports = ports  # (mllp, https) shared with other cmsd processes (P6), or None
        self.cfg = {
            "workers": os.cpu_count() or 1,  # one loop per core (the sweep shows why)
            "log_level": "warn",
            "max_connections": 19000,
            "idle_timeout_ms": 600000,
            "max_frame_bytes": 1048576,
            "tls_cert": PKI / "server.crt",
            "tls_key": PKI / "server.key",
            "tls_device_ca": PKI / "device-ca-bundle.pem",
            "tls_crl": PKI / "crl.pem",
        }
        self.cfg.update(BENCH_CMSD)
        self.cfg.update(overrides or {})

    def start(self):
        self.port, https = self.ports or (free_port(), free_port())
        self.metrics_port = free_port()
        conf = RUN / ("%s.conf" % self.tag)
        lines = [
            "# written by tools/bench/bench.py",
            "mllp_listen = 127.0.0.1:%d" % self.port,
            "https_listen = 127.0.0.1:%d" % https,
            "metrics_listen = 127.0.0.1:%d" % self.metrics_port,
            'db_conninfo = "%s application_name=cmsd-bench%s"' % (
                self.pg.dsn("cmsd"), os.environ.get("BENCH_DSN_EXTRA", "")),
        ] + ["%s = %s" % kv for kv in self.cfg.items()]
        conf.write_text("\n".join(lines) + "\n")
        self.https_port = https
        self.logf = open(RUN / ("%s.log" % self.tag), "a")
        # BENCH_CMSD_WRAP="valgrind --tool=massif": a tool in front of cmsd (docs/benchmarks.md)
        wrap = shlex.split(os.environ.get("BENCH_CMSD_WRAP", ""))
        self.proc = subprocess.Popen(wrap + [CMSD, "--config", conf], stdout=self.logf,
                                     stderr=subprocess.STDOUT, cwd=RUN)  # cores land here
        wait_port(self.port, 90, self.proc)
        if self.ports:
            # Another process may already listen on these ports (SO_REUSEPORT): wait until
            # this one holds its own listening sockets on both.
            deadline = time.monotonic() + 90
            while not all(owns_listener(self.proc.pid, p) for p in self.ports):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("%s does not listen on %s (rc=%s); log in %s"
                                       % (self.tag, self.ports, self.proc.poll(), RUN))
                time.sleep(0.1)
        time.sleep(0.5)  # the store's connections and the first maintenance queries
        self.perf = None
        scn = self.tag.split("-")[-1].upper()
        if scn in PROFILE:
            # P6 runs several cmsd processes: one profile each (cmsd1-p6 -> profile-P6-cmsd1)
            self.perf_data = BENCH / ("perf-%s.data" % (
                scn if self.tag == "cmsd-" + scn.lower() else "%s-%s" % (scn, self.tag.split("-")[0])))
            self.perf = subprocess.Popen(
                ["perf", "record", "-q", "-e", "cpu-clock", "-F",
                 os.environ.get("BENCH_PERF_FREQ", "999"),
                 "--call-graph", os.environ.get("BENCH_PERF_CALLGRAPH", "fp"), "-p",
                 str(self.proc.pid), "-o", str(self.perf_data)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        if getattr(self, "perf", None) is not None:
            self.perf.send_signal(signal.SIGINT)
            self.perf.wait(60)
            self.perf = None
            scn = self.perf_data.stem.split("-", 1)[1]
            out = BENCH / ("profile-%s.txt" % scn)
            rep = sh(["perf", "report", "-i", self.perf_data, "--no-children", "--stdio",
                      "--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.5"],
                     check=False, timeout=600).stdout
            # inclusive view: which of our functions the time is spent under
            rep += "\n\n# --- inclusive (children), cmsd's own functions ---\n"
            rep += sh(["perf", "report", "-i", self.perf_data, "--children", "--stdio",
                       "--sort", "symbol", "--dsos", "cmsd", "-g", "none",
                       "--percent-limit", "2"], check=False, timeout=600).stdout
            out.write_text(rep)
            log("profile of cmsd under %s: %s" % (scn, out))
        super().stop()

    def threads(self):
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []


class Nginx(Server):
    name = "nginx"

    def __init__(self, workers):
        super().__init__()
        self.workers = workers

    def start(self):
        self.port = free_port()
        (RUN / "nginx-tmp").mkdir(parents=True, exist_ok=True)
        text = (ROOT / "tools" / "bench" / "nginx.conf.in").read_text()
        for k, v in {"WORKERS": self.workers, "NOFILE": NOFILE, "CONNS": min(NOFILE - 100, 30000),
                     "RUN": RUN, "PKI": PKI, "PORT": self.port, "FWDIR": FWDIR}.items():
            text = text.replace("@%s@" % k, str(v))
        conf = RUN / "nginx.conf"
        conf.write_text(text)
        root_crl = RUN / "root-crl.pem"
        if not root_crl.exists():
            sh(["openssl", "ca", "-gencrl", "-config", PKI / "ca" / "root-ca" / "ca.cnf",
                "-out", root_crl])
        (RUN / "nginx-crl.pem").write_text((PKI / "crl.pem").read_text() + root_crl.read_text())
        self.logf = open(RUN / "nginx.log", "a")
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", RUN, "-e", RUN / "nginx-error.log",
                                      "-g", "daemon off;"], stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        wait_port(self.port, 30, self.proc)
        time.sleep(0.3)


class Mosquitto(Server):
    name = "mosquitto"

    def start(self):
        self.port = free_port()
        text = (ROOT / "tools" / "bench" / "mosquitto.conf.in").read_text()
        for k, v in {"PKI": PKI, "PORT": self.port}.items():
            text = text.replace("@%s@" % k, str(v))
        conf = RUN / "mosquitto.conf"
        conf.write_text(text)
        self.logf = open(RUN / "mosquitto.log", "a")
        self.proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        wait_port(self.port, 30, self.proc)
        time.sleep(0.3)


# ---------------------------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------------------------

P2_PROGRESS = re.compile(r"\[\s*([\d.]+)s\] conns (\d+)/(\d+) sent \d+ \(([\d.]+)/s\) aa \d+ "
                         r"\(([\d.]+)/s\).*lat ms p50 ([\d.]+) p99 ([\d.]+) max ([\d.]+)")


def monitor(port, devices, rate, window, duration, extra=(), timeout=None):
    cmd = [MONITOR, "--host", "127.0.0.1", "--port", port, "--ca", PKI / "ca.pem",
           "--cert-dir", PKI, "--devices", devices, "--rate", rate, "--window", window,
           "--duration", duration, "--json", "--connect-rate", 0, "--report-interval", 2000,
           "--drain-timeout", 30000] + list(extra)
    p = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout or duration + 300)
    try:
        j = json.loads(p.stdout)
    except ValueError:
        raise RuntimeError("cms-monitor gave no JSON (rc=%d): %s" % (p.returncode, p.stderr[-1500:]))
    j["progress"] = [m.groups() for m in map(P2_PROGRESS.search, p.stderr.splitlines()) if m]
    j["rc"] = p.returncode
    return j


def mon_cpu(m):
    """CPU seconds of a cms-monitor run (user + sys) from its --json output."""
    c = m.get("cpu", {})
    return c.get("user_s", 0.0) + c.get("sys_s", 0.0)


def steady_intervals(m, devices, skip=3):
    """cms-monitor's 2-s progress intervals (P2_PROGRESS groups) with all `devices`
    connected, minus the first `skip` (the backlog the connection ramp built drains there;
    all kept when there are no more than skip + 2)."""
    s = [g for g in m["progress"] if int(g[1]) == devices]
    return s[skip:] if len(s) > skip + 2 else s


def p1_once(pg, i, overrides=None, with_copy=True):
    pg.clean_ingest()
    c = Cmsd(pg, overrides, tag="cmsd-p1")
    c.start()
    meter = CpuMeter({"cmsd": c.pids, "postgres": pg.cpu})
    try:
        meter.start()
        m = monitor(c.port, P1_DEVICES, 0, P1_WINDOW, P1_SECONDS)
        cpu = meter.stop(extra_cpu=mon_cpu(m))
    finally:
        c.stop()
    cpu["cms-monitor"] = round(mon_cpu(m) / m["elapsed_s"], 3)
    stored = int(pg.psql("SELECT count(*) FROM cms.observations"))
    r = {"obs_per_s": m["obs_per_s"], "msgs_per_s": m["msgs_per_s"], "obs_acked": m["obs_acked"],
         "obs_stored": stored, "ae": m["ae"], "ar": m["ar"], "unacked": m["unacked"],
         "p50_ms": m["latency_ms"]["p50"], "p99_ms": m["latency_ms"]["p99"],
         "monitor_cpu_share": m["cpu"]["share_of_one_core"], "cores": cpu}
    # Noise-robust view: rows per CPU-second spent by the servers (cmsd + PostgreSQL).
    busy = cpu["cmsd"] + cpu["postgres"]
    r["obs_per_cpu_s"] = r["obs_per_s"] / busy if busy else None
    # cmsd's own CPU per observation (what metrics add to, if anything): microseconds
    r["cmsd_us_per_obs"] = 1e6 * cpu["cmsd"] / r["obs_per_s"] if r["obs_per_s"] else None
    if with_copy:
        f = BENCH / "copy-p1.tsv"
        sh(["/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", pg.dsn(),
            "-c", "\\copy (SELECT * FROM cms.observations) TO '%s'" % f])
        pg.psql("TRUNCATE cms.observations")
        pg.psql("CHECKPOINT")
        meter = CpuMeter({"postgres": pg.cpu})
        meter.start()
        t0 = time.monotonic()
        sh(["/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", pg.dsn(),
            "-c", "\\copy cms.observations FROM '%s'" % f])
        el = time.monotonic() - t0
        r["copy_cores"] = meter.stop()
        r["copy_pg_cpu_s"] = r["copy_cores"]["postgres"] * el
        n = int(pg.psql("SELECT count(*) FROM cms.observations"))
        r["copy_rows"] = n
        r["copy_rows_per_s"] = n / el
        r["ratio_vs_copy"] = r["obs_per_s"] / r["copy_rows_per_s"]
        # Noise-robust view: rows per CPU-second spent by the servers (cmsd + PostgreSQL for
        # the ingest path, PostgreSQL alone for COPY).
        r["copy_rows_per_cpu_s"] = n / r["copy_pg_cpu_s"] if r["copy_pg_cpu_s"] else None
        if r["obs_per_cpu_s"] and r["copy_rows_per_cpu_s"]:
            r["ratio_per_cpu"] = r["obs_per_cpu_s"] / r["copy_rows_per_cpu_s"]
        f.unlink()
    log("P1 run %d%s: %.0f obs/s (stored %d of %d acked), COPY %.0f rows/s, ratio %.2f; cores %s"
        % (i, " (%s)" % overrides if overrides else "", r["obs_per_s"], stored, m["obs_acked"],
           r.get("copy_rows_per_s", 0), r.get("ratio_vs_copy", 0), cpu))
    return r


class Scraper:
    """GET /metrics every second from cmsd's loopback metrics listener while a scenario runs,
    as a Prometheus would: the answer's time and size, and that every scrape succeeded."""

    def __init__(self, port, every=1.0):
        self.port, self.every = port, every
        self.ms, self.bytes, self.failures = [], [], 0
        self.stop_ev = None

    def _run(self):
        import http.client
        while not self.stop_ev.wait(self.every):
            t0 = time.monotonic()
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/metrics")
                r = c.getresponse()
                body = r.read()
                c.close()
                if r.status != 200 or b"cmsd_build_info" not in body:
                    self.failures += 1
                    continue
                self.ms.append(1000 * (time.monotonic() - t0))
                self.bytes.append(len(body))
            except OSError:
                self.failures += 1

    def __enter__(self):
        import threading
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.t.join(10)

    def summary(self):
        ms = sorted(self.ms)
        return {"scrapes": len(ms), "failures": self.failures,
                "p50_ms": round(ms[len(ms) // 2], 2) if ms else None,
                "max_ms": round(ms[-1], 2) if ms else None,
                "bytes": max(self.bytes) if self.bytes else None}


def p2_once(pg, i, devices):
    pg.clean_ingest()
    c = Cmsd(pg, tag="cmsd-p2")
    c.start()
    meter = CpuMeter({"cmsd": c.pids, "postgres": pg.cpu})
    try:
        meter.start()
        # Connect at P2_CONNECT_RATE (cmsd admits ~300-900 new sessions/s here: one registry
        # lookup + commit at a time), then P2_SECONDS of steady load; /metrics is scraped
        # every second all along.
        with Scraper(c.metrics_port) as scr:
            m = monitor(c.port, devices, 1, 4, int(devices / P2_CONNECT_RATE) + P2_SECONDS,
                        ["--connect-rate", P2_CONNECT_RATE])
        cpu = meter.stop(extra_cpu=mon_cpu(m))
    finally:
        c.stop()
    cpu["cms-monitor"] = round(mon_cpu(m) / m["elapsed_s"], 3)
    # steady state: every device connected, minus the first 6 s after the ramp (the backlog
    # that the connection ramp built up drains there)
    steady = steady_intervals(m, devices)
    offered = devices * 1.0
    acked_rates = [float(g[4]) for g in steady]
    p99s = [float(g[6]) for g in steady]
    held = bool(steady) and min(acked_rates) >= 0.95 * offered and m["ae"] == 0 \
        and m["unacked"] == 0 and m["ar"] == 0
    r = {"devices": devices, "offered_msgs_per_s": offered,
         "acked_msgs_per_s_steady": statistics.median(acked_rates) if acked_rates else 0,
         "obs_per_s_steady": (statistics.median(acked_rates) if acked_rates else 0) * 10,
         "p50_ms": m["latency_ms"]["p50"], "p99_ms": m["latency_ms"]["p99"],
         "p999_ms": m["latency_ms"]["p999"], "max_ms": m["latency_ms"]["max"],
         "steady_worst_interval_p99_ms": max(p99s) if p99s else None,
         "steady_median_interval_p99_ms": statistics.median(p99s) if p99s else None,
         "steady_median_interval_p50_ms": statistics.median([float(g[5]) for g in steady])
         if steady else None,
         "held": held, "ae": m["ae"], "unacked": m["unacked"], "reconnects": m["reconnects"],
         "scrape": scr.summary(),
         "monitor_cpu_share": m["cpu"]["share_of_one_core"], "cores": cpu,
         "stored_msgs": int(pg.psql("SELECT count(*) FROM cms.messages")), "acked": m["acked_aa"],
         # cms-monitor's 2-s progress lines: (t, connected, acked/s, p50 ms, p99 ms, sent/s);
         # sent/s tells a slow server (acks late: p99 up, acked < sent) from a client that sent
         # less in that interval (acked ~ sent < offered)
         "intervals": [(float(g[0]), int(g[1]), float(g[4]), float(g[5]), float(g[6]),
                        float(g[3])) for g in m["progress"]]}
    low = min(steady, key=lambda g: float(g[4])) if steady else None
    log("P2 run %d: %d devices: p50 %.1f ms p99 %.1f ms (steady worst-interval p99 %s), acked %.0f/s"
        " of %.0f offered, held=%s%s; cores %s; /metrics %s"
        % (i, devices, r["p50_ms"], r["p99_ms"], r["steady_worst_interval_p99_ms"],
           r["acked_msgs_per_s_steady"], offered, held,
           "" if held or not low else " (lowest interval at %ss: acked %s/s, sent %s/s, p99 %s ms)"
           % (low[0], low[4], low[3], low[6]), cpu, r["scrape"]))
    return r


class Viewers:
    """n live-event streams on cmsd's HTTPS listener with the bench PKI's viewer1 certificate:
    n - probes curl processes (read and discard, as fast as C reads) and `probes` Python
    threads that time every event from the hub's published_us to its arrival (same host
    clock)."""

    def __init__(self, https_port, n, probes=5, wards=0, idle=False):
        self.port, self.n, self.probes = https_port, n, min(probes, n)
        # idle: the readers (curl and probe threads) run under SCHED_IDLE, only when nothing
        # else on the host wants a core: their CPU no longer competes with cmsd, PostgreSQL
        # and the load generator, as when the viewers are browsers on other machines
        self.idle = idle
        self.wards = wards  # > 0: stream k watches ward WARD-<1 + k % wards> (?ward=), else all
        self.delays_ms, self.events, self.closed = [], 0, 0
        self.procs, self.threads, self.stop_ev = [], [], None

    def _path(self, k):
        return "/api/v1/events" + ("?ward=WARD-%d" % (1 + k % self.wards) if self.wards else "")

    @staticmethod
    def _to_idle():
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread

    def _probe(self, k):
        import ssl
        if self.idle:
            self._to_idle()
        ctx = ssl.create_default_context(cafile=str(PKI / "ca.pem"))
        ctx.load_cert_chain(str(PKI / "operators/viewer1.crt"), str(PKI / "operators/viewer1.key"))
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=30),
                            server_hostname="localhost")
        s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % self._path(k).encode())
        s.settimeout(1.0)
        buf, rx = b"", re.compile(rb'"published_us":(\d+)')
        while not self.stop_ev.is_set():
            try:
                data = s.recv(1 << 20)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                data = b""
            if not data:
                self.closed += 1
                return
            now = time.time() * 1e6
            buf += data
            cut = buf.rfind(b"\n\n")
            if cut < 0:
                continue
            for m in rx.finditer(buf, 0, cut):
                self.delays_ms.append((now - int(m.group(1))) / 1000.0)
                self.events += 1
            buf = buf[cut + 2:]
        s.close()

    def __enter__(self):
        import threading
        self.stop_ev = threading.Event()
        for k in range(self.n - self.probes):
            url = "https://localhost:%d%s" % (self.port, self._path(self.probes + k))
            self.procs.append(subprocess.Popen(
                ["curl", "-sN", "--cacert", PKI / "ca.pem", "--cert", PKI / "operators/viewer1.crt",
                 "--key", PKI / "operators/viewer1.key", "-o", "/dev/null", url],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=self._to_idle if self.idle else None))
        for k in range(self.probes):
            t = threading.Thread(target=self._probe, args=(k,), daemon=True)
            t.start()
            self.threads.append(t)
        time.sleep(2)  # every stream open before the load starts
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        for p in self.procs:
            if p.poll() is not None:
                self.closed += 1
            p.terminate()
        for p in self.procs:
            p.wait(10)
        for t in self.threads:
            t.join(5)

    def summary(self):
        d = sorted(self.delays_ms)
        q = lambda f: round(d[min(len(d) - 1, int(f * len(d)))], 1) if d else None  # noqa: E731
        return {"streams": self.n, "closed_early": self.closed, "probe_events": self.events,
                "delivery_p50_ms": q(0.50), "delivery_p99_ms": q(0.99),
                "delivery_max_ms": round(d[-1], 1) if d else None}


def metrics_value(port, name):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    body = c.getresponse().read().decode()
    c.close()
    for ln in body.splitlines():
        if ln.startswith(name + " "):
            return float(ln.split()[-1])
    return None


def p2v_once(pg, i, devices, viewers, ward_streams=False, relay=False, batch_ms=None,
             idle_readers=False):
    """P2's paced load (1 msg/s per monitor, 10 obs; the monitors in P2V_WARDS wards) with
    `viewers` live-event streams open (0: none), each watching every ward or (ward_streams)
    one ward, as the console's ward view does; ACK latency as cms-monitor measures it.
    relay: the streams are on a second cmsd on the same database (as behind HAProxy), which
    gets every event through the relay (NOTIFY cms_events). batch_ms: cmsd's
    events_batch_ms (None: its default). idle_readers: the viewers under SCHED_IDLE (Viewers)."""
    pg.clean_ingest()
    conf = {"tls_operator_ca": PKI / "operator-ca-bundle.pem"}
    if batch_ms is not None:
        conf["events_batch_ms"] = batch_ms
    c = Cmsd(pg, conf, tag="cmsd-p2v")
    c.start()
    c2 = None
    if relay:
        c2 = Cmsd(pg, {"tls_operator_ca": PKI / "operator-ca-bundle.pem"}, tag="cmsd-p2v-b")
        c2.start()
    try:
        dur = int(devices / P2_CONNECT_RATE) + P2_SECONDS
        # where the two cores went: the viewers' curl processes share them with the server
        # here (in a ward they are browsers on other machines)
        vctx = (Viewers((c2 or c).https_port, viewers, wards=P2V_WARDS if ward_streams else 0,
                        idle=idle_readers) if viewers else contextlib.nullcontext())
        with vctx as v:
            pids = (lambda: c.pids() + c2.pids()) if c2 else c.pids
            procs = {"cmsd": pids, "postgres": pg.cpu}
            if v is not None:
                procs["viewers_curl"] = lambda: [p.pid for p in v.procs]
            meter = CpuMeter(procs)
            meter.start()
            m = monitor(c.port, devices, 1, 4, dur, ["--connect-rate", P2_CONNECT_RATE,
                                                     "--wards", P2V_WARDS])
            cpu = meter.stop(extra_cpu=mon_cpu(m))
            dropped = published = None
            relayed = None
            if v is not None:
                dropped = metrics_value((c2 or c).metrics_port, "cmsd_sse_dropped_total")
                published = metrics_value(c.metrics_port, "cmsd_sse_events_total")
            if c2 is not None:
                relayed = {k: metrics_value(srv.metrics_port, "cmsd_sse_" + k + "_total")
                           for k, srv in (("relayed", c), ("relay_dropped", c),
                                          ("relay_received", c2))}
        cpu["cms-monitor"] = round(mon_cpu(m) / m["elapsed_s"], 3)
    finally:
        c.stop()
        if c2 is not None:
            c2.stop()
    steady = steady_intervals(m, devices)
    p99s = [float(g[6]) for g in steady]
    r = {"devices": devices, "viewers": viewers, "ward_streams": ward_streams,
         "p50_ms": m["latency_ms"]["p50"],
         "p99_ms": m["latency_ms"]["p99"],
         "steady_median_interval_p99_ms": statistics.median(p99s) if p99s else None,
         "ae": m["ae"], "unacked": m["unacked"], "acked": m["acked_aa"],
         "events_published": published, "streams_dropped": dropped, "cores": cpu,
         "viewers_summary": v.summary() if v else None, "relay": relay, "relayed": relayed,
         "events_batch_ms": batch_ms, "idle_readers": idle_readers}
    log("P2V run %d: %d monitors, %d viewers%s: ACK p50 %.1f ms p99 %.1f ms (steady median-interval"
        " p99 %s); events %s; cores %s" % (i, devices, viewers,
                                           (" (one ward each)" if ward_streams else "")
                                           + (" on a second instance" if relay else "")
                                           + (", events_batch_ms %d" % batch_ms
                                              if batch_ms is not None else "")
                                           + (", readers SCHED_IDLE" if idle_readers else ""),
                                           r["p50_ms"], r["p99_ms"],
                                           r["steady_median_interval_p99_ms"],
                                           r["viewers_summary"], cpu))
    return r


def p2v_variant(name, rs):
    """The figures of one P2V variant with streams (p2v_once results), keyed name_...: ACK
    p99 whole run and steady, delivery p99, cmsd and curl cores, streams dropped."""
    return {name + "_p99_ms_with": stats([r["p99_ms"] for r in rs]),
            name + "_steady_p99_ms_with": stats([r["steady_median_interval_p99_ms"] for r in rs]),
            name + "_delivery_p99_ms": stats([r["viewers_summary"]["delivery_p99_ms"] for r in rs]),
            name + "_cmsd_cores_with": stats([r["cores"]["cmsd"] for r in rs]),
            name + "_curl_cores_with": stats([r["cores"]["viewers_curl"] for r in rs]),
            name + "_streams_dropped": sum(r["streams_dropped"] or 0 for r in rs)}


def clean_clinical(pg):
    """Empty what W and A write beside the numerics (alarms, waveforms, text rows)."""
    pg.psql("TRUNCATE cms.waveform_blocks, cms.text_observations, cms.alarm_events, "
            "cms.alarm_instances, cms.device_heartbeats")
    pg.clean_ingest()  # the numerics, then a CHECKPOINT


def w_once(pg, i, devices, seconds):
    """W: `devices` monitors, each one ORU^R01 per second with 10 numerics and two ECG
    channels (ecg1, ecg2) of 500 samples (500 Hz, one NA block per channel per message):
    ACK latency, samples stored, and the bytes PostgreSQL keeps for them (heap + TOAST of
    the waveform partitions, then with their index) against 2 bytes per raw sample."""
    clean_clinical(pg)
    c = Cmsd(pg, tag="cmsd-w")
    c.start()
    meter = CpuMeter({"cmsd": c.pids, "postgres": pg.cpu})
    try:
        meter.start()
        m = monitor(c.port, devices, 1, 4, seconds,
                    ["--waveforms", "ecg1,ecg2", "--connect-rate", P2_CONNECT_RATE])
        cpu = meter.stop(extra_cpu=mon_cpu(m))
    finally:
        c.stop()
    pg.psql("CHECKPOINT")
    q = pg.psql(
        "SELECT count(*), coalesce(sum(nsamples), 0), "
        "count(*) FILTER (WHERE samples_i2 IS NOT NULL) FROM cms.waveform_blocks").split("|")
    blocks, samples, i2 = int(q[0]), int(q[1]), int(q[2])
    # heap + TOAST, heap alone, with the indexes: summed over the partitions
    table_b, heap_b, total_b = map(int, pg.psql(
        "SELECT coalesce(sum(pg_table_size(inhrelid)), 0), "
        "coalesce(sum(pg_relation_size(inhrelid)), 0), "
        "coalesce(sum(pg_total_relation_size(inhrelid)), 0) "
        "FROM pg_inherits WHERE inhparent = 'cms.waveform_blocks'::regclass").split("|"))
    stored_msgs = int(pg.psql("SELECT count(*) FROM cms.messages"))
    steady = steady_intervals(m, devices, skip=2)
    p99s = [float(g[6]) for g in steady]
    # one ECG channel-hour = 500 Hz x 3600 s samples; raw = 2 bytes a sample (16-bit ADC)
    ch_hour = 500 * 3600
    r = {"devices": devices, "seconds": seconds, "acked": m["acked_aa"], "ae": m["ae"],
         "ar": m["ar"], "unacked": m["unacked"], "stored_msgs": stored_msgs,
         "p50_ms": m["latency_ms"]["p50"], "p99_ms": m["latency_ms"]["p99"],
         "max_ms": m["latency_ms"]["max"],
         "steady_median_interval_p99_ms": statistics.median(p99s) if p99s else None,
         "steady_worst_interval_p99_ms": max(p99s) if p99s else None,
         "samples_acked": m["samples_acked"], "samples_per_s": m["samples_per_s"],
         "blocks": blocks, "samples_stored": samples, "blocks_int16": i2,
         "table_bytes": table_b, "heap_bytes": heap_b, "toast_bytes": table_b - heap_b,
         "total_bytes": total_b,
         "bytes_per_block": table_b / blocks if blocks else None,
         "bytes_per_channel_hour": table_b / samples * ch_hour if samples else None,
         "bytes_per_channel_hour_with_index": total_b / samples * ch_hour if samples else None,
         "raw_bytes_per_channel_hour": 2 * ch_hour,
         "cores": cpu, "monitor_cpu_share": m["cpu"]["share_of_one_core"]}
    r["ratio_vs_raw"] = r["bytes_per_channel_hour"] / (2 * ch_hour) if samples else None
    r["ratio_vs_raw_with_index"] = (r["bytes_per_channel_hour_with_index"] / (2 * ch_hour)
                                    if samples else None)
    log("W run %d: %d monitors x 2 ECG x 500 Hz: ACK p50 %.1f p99 %.1f ms (steady median-"
        "interval p99 %s), %d samples acked, %d stored in %d blocks, %.2f MB per channel-hour "
        "(%.2f with index; raw 3.60; heap %d B, TOAST %d B), cores %s"
        % (i, devices, r["p50_ms"], r["p99_ms"], r["steady_median_interval_p99_ms"],
           r["samples_acked"], samples, blocks, (r["bytes_per_channel_hour"] or 0) / 1e6,
           (r["bytes_per_channel_hour_with_index"] or 0) / 1e6, heap_b, table_b - heap_b, cpu))
    return r


def a_once(pg, i, devices, alarm_devices, seconds, alarm_every, lane="on"):
    """A: P2's load (devices monitors x 1 msg/s x 10 obs) in which, once every monitor is
    connected, `alarm_devices` of them (the last serials, their own cms-monitor) also raise
    IHE PCD-04 alarms (one start every alarm_every s on average per device, continues every
    10 s, an end after 5-30 s): the alarms' ACK latency in the steady state, beside the
    numerics' of both groups; cmsd's alarm_lane = lane."""
    import concurrent.futures as cf
    clean_clinical(pg)
    c = Cmsd(pg, {"alarm_lane": lane}, tag="cmsd-a")
    c.start()
    n1 = devices - alarm_devices
    ramp = n1 / P2_CONNECT_RATE
    meter = CpuMeter({"cmsd": c.pids, "postgres": pg.cpu})
    try:
        meter.start()
        with cf.ThreadPoolExecutor(2) as ex:
            f1 = ex.submit(monitor, c.port, n1, 1, 4, int(ramp + 8 + seconds + 4),
                           ["--connect-rate", P2_CONNECT_RATE])
            time.sleep(ramp + 8)  # the ramp's backlog drains first (as P2's steady part)
            f2 = ex.submit(monitor, c.port, alarm_devices, 1, 4, seconds,
                           ["--connect-rate", P2_CONNECT_RATE, "--first", n1 + 1,
                            "--alarms", alarm_every])
            m1, m2 = f1.result(), f2.result()
        cpu = meter.stop(extra_cpu=mon_cpu(m1) + mon_cpu(m2))
    finally:
        c.stop()
    stored_alarm_events = int(pg.psql("SELECT count(*) FROM cms.alarm_events"))
    steady = steady_intervals(m1, n1, skip=4)
    p99s = [float(g[6]) for g in steady]
    al = m2["alarm_latency_ms"]["steady"]  # from 5 s after its last device connected
    whole = m2["alarm_latency_ms"]
    r = {"devices": devices, "alarm_devices": alarm_devices, "seconds": seconds,
         "alarm_every_s": alarm_every, "alarm_lane": lane,
         "alarms_sent": m2["alarms_sent"], "alarms_aa": m2["alarms_aa"],
         "alarm_events_stored": stored_alarm_events,
         "alarm_p50_ms": al["p50"], "alarm_p99_ms": al["p99"], "alarm_max_ms": al["max"],
         "alarm_acks": al["n"],
         "alarm_whole_run": {k: whole[k] for k in ("p50", "p99", "max", "n")},
         "numerics_p99_ms_alarm_group": m2["latency_ms"]["p99"],
         "numerics_steady_median_interval_p99_ms": statistics.median(p99s) if p99s else None,
         "numerics_p99_ms_whole_run": m1["latency_ms"]["p99"],
         "ae": m1["ae"] + m2["ae"], "ar": m1["ar"] + m2["ar"],
         "unacked": m1["unacked"] + m2["unacked"], "cores": cpu}
    log("A run %d (alarm_lane %s): %d monitors, %d raising alarms: %d alarm events sent, %d AA, "
        "%d stored; alarm ACK (steady: %d) p50 %.1f p99 %.1f max %.1f ms (whole run: p99 %.1f "
        "max %.1f); numerics steady p99 %s ms; AE %d AR %d unacked %d; cores %s"
        % (i, lane, devices, alarm_devices, r["alarms_sent"], r["alarms_aa"], stored_alarm_events,
           al["n"], al["p50"], al["p99"], al["max"], whole["p99"], whole["max"],
           r["numerics_steady_median_interval_p99_ms"],
           r["ae"], r["ar"], r["unacked"], cpu))
    return r


def hold_sessions(srv, proto, n, extra_groups=None):
    """Fresh server: RSS before, then n sessions held by 2 holder processes, RSS after."""
    srv.start()
    try:
        time.sleep(1.0)
        before = srv.rss()
        procs, per = [], (n + HOLDER_PROCS - 1) // HOLDER_PROCS
        t0 = time.monotonic()
        for k in range(HOLDER_PROCS):
            first = 1 + k * per
            cnt = min(per, n - k * per)
            procs.append(subprocess.Popen(
                [PY, HOLDER, "--port", str(srv.port), "--pki", str(PKI), "--devices", str(cnt),
                 "--first", str(first), "--proto", proto, "--concurrency", "100"]
                + (["--no-message"] if proto == "mllp" and os.environ.get("BENCH_P3_NO_MESSAGE") else []),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        outs = [json.loads(p.stdout.readline() or "{}") for p in procs]
        ramp = time.monotonic() - t0
        time.sleep(2.0)
        after = srv.rss()
        hwm = srv.rss("VmHWM")
        opened = sum(o.get("open", 0) for o in outs)
        alive = bool(srv.pids())
        for p in procs:
            p.stdin.close()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    finally:
        srv.stop()
    r = {"sessions": opened, "failed": sum(o.get("failed", 0) for o in outs),
         "rss_before_kib": before, "rss_after_kib": after, "rss_hwm_kib": hwm,
         # a run where the server died or fewer than 95 % of the sessions opened is not used
         "kib_per_session": (after - before) / opened if alive and opened >= 0.95 * n else None,
         "server_alive": alive,
         "ramp_s": round(ramp, 1), "sessions_per_s": opened / ramp if ramp else None,
         "errors": [o.get("errors") for o in outs if o.get("errors")]}
    log("P3 %s: %d/%d sessions in %.1fs, RSS %d -> %d KiB = %s KiB/session%s"
        % (srv.name, opened, n, ramp, before, after,
           "%.2f" % r["kib_per_session"] if r["kib_per_session"] else "n/a",
           "" if alive else " (SERVER DIED: run not used)"))
    return r


def p6_setup(pg, n):
    """MON-0001 .. MON-<n>: minted (tools/bench.sh mints the first 10 000; mkpki.sh mint is
    idempotent) and registered as active."""
    if n > NDEV:
        if not (PKI / "devices" / ("MON-%04d.crt" % n)).exists():
            log("P6: minting device certificates MON-%d..MON-%d (once; ~1-3 min)" % (NDEV + 1, n))
        p = sh([ROOT / "certs" / "mkpki.sh", "mint", PKI, "MON-", NDEV + 1, n - NDEV], timeout=3600)
        log("P6: %s" % (p.stdout.strip().splitlines() or ["minted"])[0])
    pg.psql("INSERT INTO cms.devices (serial, model, status) "
            "SELECT 'MON-' || CASE WHEN i < 10000 THEN lpad(i::text, 4, '0') ELSE i::text END, "
            "'bench', 'active' FROM generate_series(1, %d) i "
            "ON CONFLICT (serial) DO UPDATE SET status = 'active'" % n)
    pg.psql("ANALYZE cms.devices")


def p6_steady(gens, sessions):
    """Steady part of the P6 generators' 2-s progress lines: the intervals in which every
    generator had all its devices connected, minus the first 3 (6 s) after the last one
    got there. The generators start within a second of each other: interval k of each
    covers about the same 2 s. Per interval: the largest p50 and p99 of the generators
    (the p99 of the whole load in that interval is at most that), acked/s and sent/s
    summed."""
    per = []
    for g in gens:
        per.append({round(float(x[0]) / 2.0): x for x in g["progress"]})
    full = [k for k in sorted(set.intersection(*[set(d) for d in per]))
            if all(int(d[k][1]) == int(d[k][2]) for d in per)]
    # only the run of full intervals that reaches the end (a drop in between restarts it)
    keys = sorted(set.intersection(*[set(d) for d in per]))
    run = []
    for k in keys:
        if k in full:
            run.append(k)
        else:
            run = []
    steady = run[3:] if len(run) > 5 else run
    out = []
    for k in steady:
        xs = [d[k] for d in per]
        out.append({"t": float(xs[0][0]), "acked_per_s": sum(float(x[4]) for x in xs),
                    "sent_per_s": sum(float(x[3]) for x in xs),
                    "p50_ms": max(float(x[5]) for x in xs), "p99_ms": max(float(x[6]) for x in xs),
                    "max_ms": max(float(x[7]) for x in xs)})
    return out, len(full)


def p6_once(pg, i):
    """P6: P6_SESSIONS live mTLS monitors (1 message / 10 s each) on P6_SERVERS cmsd
    processes sharing the ports (SO_REUSEPORT), from P6_GENERATORS cms-monitor processes,
    each from its own source address 127.0.0.<2+g>."""
    pg.clean_ingest()
    n, nsrv, ngen = P6_SESSIONS, P6_SERVERS, P6_GENERATORS
    ports = (free_port(), free_port())
    workers = int(BENCH_CMSD.get("workers", os.cpu_count() or 1))
    # Each process must stay below its open-files limit (20 000 here): per worker at most
    # (limit - 200) / workers, and never below an even share with 25 % to spare.
    per_worker = max(int(n / (nsrv * workers) * 1.25) + 10, 100)
    per_worker = min(per_worker, (NOFILE - 200) // workers)
    servers = [Cmsd(pg, {"max_connections": per_worker}, tag="cmsd%d-p6" % (k + 1), ports=ports)
               for k in range(nsrv)]
    gens, procs, samples = [], [], []
    try:
        for c in servers:
            c.start()
        time.sleep(1.0)
        rss0 = [c.rss() for c in servers]
        fd0 = [fd_count(c.proc.pid) for c in servers]
        meter = CpuMeter({"cmsd": lambda: [p for c in servers for p in c.pids()],
                          "postgres": pg.cpu})
        per = (n + ngen - 1) // ngen
        ramp = n / P6_CONNECT_RATE
        duration = int(ramp * 1.5) + P6_STEADY + 6
        meter.start()
        t0, wall0 = time.monotonic(), time.time()
        for g in range(ngen):
            first, cnt = 1 + g * per, min(per, n - g * per)
            cmd = [MONITOR, "--host", "127.0.0.1", "--port", ports[0], "--ca", PKI / "ca.pem",
                   "--cert-dir", PKI, "--first", first, "--devices", cnt, "--rate", 0.1,
                   "--window", 1, "--duration", duration, "--json",
                   "--connect-rate", P6_CONNECT_RATE / ngen, "--report-interval", 2000,
                   "--drain-timeout", 30000, "--source", "127.0.0.%d" % (2 + g)]
            procs.append(subprocess.Popen(
                [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=open(
                    RUN / ("cms-monitor%d-p6.log" % (g + 1)), "w"), text=True))
        # Server memory and sessions every 2 s while the generators run; the figure is the
        # last sample before they stop sending (all sessions up, steady traffic).
        stop_at = t0 + duration - 1.0
        while any(p.poll() is None for p in procs) and time.monotonic() < stop_at:
            time.sleep(2.0)
            samples.append({"t": round(time.monotonic() - t0, 1),
                            "rss_kib": [c.rss() for c in servers],
                            "sessions": [fd_count(c.proc.pid) - f0 if c.proc else 0
                                         for c, f0 in zip(servers, fd0)],
                            "alive": [bool(c.pids()) for c in servers]})
        hwm = [c.rss("VmHWM") for c in servers]
        for g, p in enumerate(procs):
            out, _ = p.communicate(timeout=duration + 600)
            try:
                j = json.loads(out)
            except ValueError:
                raise RuntimeError("cms-monitor %d gave no JSON (rc=%d); see %s"
                                   % (g + 1, p.returncode, RUN / ("cms-monitor%d-p6.log" % (g + 1))))
            err = (RUN / ("cms-monitor%d-p6.log" % (g + 1))).read_text()
            j["progress"] = [m.groups() for m in map(P2_PROGRESS.search, err.splitlines()) if m]
            j["rc"] = p.returncode
            gens.append(j)
        cpu = meter.stop(extra_cpu=sum(mon_cpu(m) for m in gens))
        alive = [bool(c.pids()) for c in servers]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for c in servers:
            c.stop()
    cpu["cms-monitor"] = round(sum(mon_cpu(m) for m in gens) / max(m["elapsed_s"] for m in gens), 3)
    # what cmsd refused or dropped (log_level = warn: each refusal is one warn line)
    events = {}
    for c in servers:
        for line in open(RUN / ("%s.log" % c.tag), errors="replace"):
            m = re.search(r"level=(warn|error) event=(\S+)", line)
            if m:
                events[m.group(2)] = events.get(m.group(2), 0) + 1
    steady, nfull = p6_steady(gens, n)
    # autovacuum/autoanalyze of the ingest tables during the run (seconds after the
    # generators started; the last of each only): slow intervals near them are suspects
    av = pg.psql("SELECT relname, coalesce(extract(epoch FROM last_autovacuum)::text, ''), "
                 "coalesce(extract(epoch FROM last_autoanalyze)::text, ''), autovacuum_count, "
                 "autoanalyze_count FROM pg_stat_user_tables WHERE schemaname = 'cms' "
                 "AND (autovacuum_count > 0 OR autoanalyze_count > 0) ORDER BY relname")
    autovac = []
    for line in av.splitlines():
        rel, vac, ana, nv, na = line.split("|")
        autovac.append({"table": rel, "vacuums": int(nv), "analyzes": int(na),
                        "last_vacuum_s": round(float(vac) - wall0, 1) if vac else None,
                        "last_analyze_s": round(float(ana) - wall0, 1) if ana else None})
    last = samples[-1] if samples else None
    sessions_srv = sum(last["sessions"]) if last else 0
    r = {"sessions_target": n, "servers": nsrv, "generators": ngen, "workers": workers,
         "max_connections_per_worker": per_worker, "connect_rate": P6_CONNECT_RATE,
         "devices_acked": sum(m["devices_acked"] for m in gens),
         "sent": sum(m["sent"] for m in gens), "acked": sum(m["acked_aa"] for m in gens),
         "ae": sum(m["ae"] for m in gens), "ar": sum(m["ar"] for m in gens),
         "unacked": sum(m["unacked"] for m in gens),
         "conn_failures": sum(m.get("conn_failures", 0) for m in gens),
         "reconnects": sum(m["reconnects"] for m in gens),
         "drops": sum(m.get("drops", 0) for m in gens),
         "ack_timeouts": sum(m.get("ack_timeouts", 0) for m in gens),
         "cmsd_warn_events": events,
         "generator_rc": [m["rc"] for m in gens],
         # ramp: from the start to the first interval with every device of every generator up
         "ramp_s": None,
         "steady_s": 2.0 * len(steady), "full_intervals": nfull,
         "offered_msgs_per_s": n * 0.1,
         "acked_msgs_per_s_steady": statistics.median([x["acked_per_s"] for x in steady])
         if steady else 0,
         "steady_median_interval_p50_ms": statistics.median([x["p50_ms"] for x in steady])
         if steady else None,
         "steady_median_interval_p99_ms": statistics.median([x["p99_ms"] for x in steady])
         if steady else None,
         "steady_worst_interval_p99_ms": max([x["p99_ms"] for x in steady]) if steady else None,
         # whole run incl. the connection ramp: the largest of the generators' figures
         "p50_ms": max(m["latency_ms"]["p50"] for m in gens),
         "p99_ms": max(m["latency_ms"]["p99"] for m in gens),
         "max_ms": max(m["latency_ms"]["max"] for m in gens),
         "rss_before_kib": rss0, "rss_steady_kib": last["rss_kib"] if last else None,
         "rss_hwm_kib": hwm, "sessions_at_rss": last["sessions"] if last else None,
         "kib_per_session": (sum(last["rss_kib"]) - sum(rss0)) / sessions_srv
         if last and sessions_srv >= 0.95 * n and all(alive) else None,
         "servers_alive": alive, "cores": cpu,
         "monitor_cpu_share": [m["cpu"]["share_of_one_core"] for m in gens],
         "stored_msgs": int(pg.psql("SELECT count(*) FROM cms.messages")),
         "intervals": steady, "samples": samples, "autovacuum": autovac}
    ups = [next((float(x[0]) for x in m["progress"] if int(x[1]) == int(x[2])), None) for m in gens]
    r["ramp_s"] = max(ups) if all(u is not None for u in ups) else None
    # refused: connection attempts that failed (TCP or TLS, or cmsd's device check), and
    # the refusals cmsd logged
    r["refused"] = r["conn_failures"] + sum(v for k, v in events.items()
                                            if "refused" in k or "timeout" in k)
    # Held: over the steady window (several 10-s sending periods) the ACKs keep up with the
    # offered load; single 2-s intervals swing with the phases the connection ramp gave the
    # monitors, so the mean over the window is what counts, with every device connected and
    # nothing refused, rejected or left unanswered.
    r["acked_msgs_per_s_mean"] = statistics.mean([x["acked_per_s"] for x in steady]) \
        if steady else 0
    r["held"] = bool(steady) and r["devices_acked"] == n and r["refused"] == 0 and \
        r["ae"] == 0 and r["ar"] == 0 and r["unacked"] == 0 and \
        r["acked_msgs_per_s_mean"] >= 0.95 * r["offered_msgs_per_s"]
    log("P6 run %d: %d/%d devices acked on %d cmsd (ramp %ss, steady %.0fs): steady p50 %s ms, "
        "p99 %s ms (worst interval %s), acked %.0f/s (mean) of %.0f offered; refused %d, reconnects %d,"
        " AE %d, unacked %d; cmsd RSS %s -> %s KiB for %s sessions = %s KiB/session; cores %s"
        % (i, r["devices_acked"], n, nsrv, r["ramp_s"], r["steady_s"],
           r["steady_median_interval_p50_ms"], r["steady_median_interval_p99_ms"],
           r["steady_worst_interval_p99_ms"], r["acked_msgs_per_s_mean"],
           r["offered_msgs_per_s"], r["refused"], r["reconnects"], r["ae"], r["unacked"], rss0,
           r["rss_steady_kib"], r["sessions_at_rss"],
           "%.2f" % r["kib_per_session"] if r["kib_per_session"] else "n/a", cpu))
    return r


def p4_once(srv, probe, modes):
    out = {}
    meter_groups = {srv.name: srv.pids}
    if isinstance(srv, Cmsd):
        meter_groups["postgres"] = srv.pg.cpu
    for mode in modes:
        meter = CpuMeter(meter_groups)
        meter.start()
        p = sh([HSBENCH, "--port", srv.port, "--cert-dir", PKI, "--devices", 64, "--procs",
                P4_PROCS, "--duration", P4_SECONDS, "--mode", mode, "--probe", probe],
               timeout=P4_SECONDS + 120)
        j = json.loads(p.stdout)
        j["cores"] = meter.stop(extra_cpu=j["client_cpu_s"])
        j["cores"]["hsbench"] = j["client_cores"]
        server = j["cores"][srv.name] + j["cores"].get("postgres", 0.0)
        j["per_server_cpu_s"] = j["per_s"] / server if server > 0 else None
        out[mode] = j
        log("P4 %s %s (probe %s): %.0f/s (full %.0f, resumed %.0f, errors %d); cores %s"
            % (srv.name, mode, probe, j["per_s"], j["full_per_s"], j["resumed_per_s"],
               j["errors"], j["cores"]))
    return out


def make_fw_image(size):
    FWDIR.mkdir(parents=True, exist_ok=True)
    for f in FWDIR.iterdir():
        if f.stat().st_size == size:
            return f
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    f = FWDIR / sha
    f.write_bytes(data)
    return f


def download(port, path, serial="MON-0001"):
    crt = PKI / "devices" / (serial + ".crt")
    key = PKI / "devices" / (serial + ".key")
    p = sh(["curl", "-sS", "--fail", "--cacert", PKI / "ca.pem", "--cert", crt, "--key", key,
            "-o", "/dev/null", "-w",
            "%{size_download} %{speed_download} %{time_total} %{time_starttransfer}",
            "https://localhost:%d%s" % (port, path)], check=False, timeout=300)
    if p.returncode != 0:
        return None, p.stderr.strip()
    size, speed, t, ttfb = p.stdout.split()
    return {"bytes": int(size), "MiB_per_s": float(speed) / 1048576, "seconds": float(t),
            "first_byte_s": float(ttfb)}, None


def cmsctl_op(port, operator, *args):
    op = PKI / "operators" / operator
    p = sh([CMSCTL, "--server", "https://127.0.0.1:%d" % port, "--cacert", PKI / "ca.pem",
            "--cert", str(op) + ".crt", "--key", str(op) + ".key", "--timeout", "600", "--json"]
           + list(args), timeout=900)
    return json.loads(p.stdout)


def p5_cmsd(pg, img, pairs, peer=None):
    """cmsd serving img as GET /fw/v1/images/<sha256> to MON-0001: a release signed with the
    dev publisher key (tools/fw-sign-dev.sh), imported by operator1, approved for MON-0001 by
    operator2 (two-person rule), as docs/firmware.md describes. peer(): one download from the
    other server, run before each of cmsd's cached downloads, so that the two alternate and
    share the host's moments. Returns (cmsd downloads, RSS before the first download, peak
    RSS, RSS after, peer downloads) or raises."""
    key = RUN / "fw-dist.key"
    if not key.exists():
        old = os.umask(0o077)
        try:
            sh(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key])
        finally:
            os.umask(old)
    op_crl = RUN / "operator-crl.pem"
    if not op_crl.exists():
        sh(["openssl", "ca", "-gencrl", "-config", PKI / "ca" / "operator-ca" / "ca.cnf",
            "-out", op_crl])
    crl = RUN / "cmsd-fw-crl.pem"  # with a CRL set, operator certificates need theirs too
    crl.write_text((PKI / "crl.pem").read_text() + op_crl.read_text())
    cache = RUN / "fw-cache"
    shutil.rmtree(cache, ignore_errors=True)
    c = Cmsd(pg, {"fw_publisher_keys": PKI / "publisher.pub", "fw_distribution_key": key,
                  "fw_cache_dir": cache, "fw_manifest_ttl_s": 600,
                  "tls_operator_ca": PKI / "operator-ca-bundle.pem", "tls_crl": crl},
             tag="cmsd-p5")
    c.start()
    try:
        wait_port(c.https_port, 30, c.proc)
        rel = RUN / "fw-rel"
        env = dict(os.environ, FW_PUBLISHER_KEY=str(PKI / "publisher.key"))
        version = "2.%d.0" % (int(time.time()) % 100000)
        sh([ROOT / "tools" / "fw-sign-dev.sh", img, "bench", version, "5", rel], env=env)
        rid = cmsctl_op(c.https_port, "operator1", "firmware", "import", "--image", img,
                        "--descriptor", str(rel) + ".desc.json", "--signature",
                        str(rel) + ".sig")["id"]
        cmsctl_op(c.https_port, "operator2", "firmware", "approve", str(rid), "--device",
                  "MON-0001")
        d, err = download(c.https_port, "/fw/v1/manifest?installed=1.0.0")
        if not d:
            raise RuntimeError("manifest: %s" % err)
        time.sleep(1.0)
        # The import (a 64 MiB upload) made its own peak: reset VmHWM (Linux >= 4.0).
        with open("/proc/%d/clear_refs" % c.proc.pid, "w") as f:
            f.write("5")
        rss0 = c.rss()
        dl, other = [], []
        for i in range(1 + pairs):  # the first one is cold (the image is not cached yet)
            if i and peer:
                other.append(peer())
            d, err = download(c.https_port, "/fw/v1/images/%s" % img.name)
            if not d:
                raise RuntimeError("download: %s" % err)
            dl.append(d)
        hwm = c.rss("VmHWM")
        after = c.rss()
    finally:
        c.stop()
    return dl, rss0, hwm, after, other


def fw_endpoint_exists():
    routes = ROOT / "server" / "svc" / "routes.c"
    return routes.exists() and "/fw/v1/images" in routes.read_text()


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def versions(pg):
    def first_line(cmd):
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            return p.stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return None
    return {
        "cmsd": first_line([str(CMSD), "--version"]),
        "cmsd_git": first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "openssl": first_line(["openssl", "version"]),
        "nginx": first_line(["nginx", "-v"]),
        "mosquitto": first_line(["mosquitto", "-h"]),
        "postgresql": pg.versions(),
        "kernel": os.uname().release,
        "debian": Path("/etc/debian_version").read_text().strip(),
    }


def machine():
    model = None
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(open("/proc/meminfo").readline().split()[1]) // 1024
    return {"nproc": os.cpu_count(), "cpu_model": model, "ram_mib": mem,
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3]}


def fmt(s, unit="", scale=1.0, nd=0):
    if s is None:
        return "n/a"
    f = "%%.%df" % nd
    if s["n"] == 1:
        return (f % (s["median"] * scale)) + unit
    return "%s%s (%s-%s)" % (f % (s["median"] * scale), unit, f % (s["min"] * scale),
                            f % (s["max"] * scale))


def main():
    global P1_DEVICES, P1_WINDOW, P1_SECONDS, P2_SECONDS, P2_CONNECT_RATE, P3_SESSIONS
    global P4_SECONDS, P4_PROCS, P5_PAIRS, HOLDER_PROCS, NOFILE, BENCH_CMSD, PROFILE
    global P6_SESSIONS, P6_SERVERS, P6_GENERATORS, P6_CONNECT_RATE, P6_STEADY, P6_MOSQ
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "0")))
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY", "P1,P1M,W,P2,A,P2V,P3,P4,P5,P6"))
    ap.add_argument("--sweep", action="store_true", help="cmsd config variations under P1/P4")
    ap.add_argument("--profile", default=os.environ.get("BENCH_PROFILE", ""),
                    help="perf-record cmsd under these scenarios (P1,P2,P3,P4): "
                         "build/bench/profile-Pn.txt")
    ap.add_argument("--keep-pg", action="store_true", help="reuse the bench cluster (no initdb)")
    ap.add_argument("--cmsd", action="append", default=[],
                    help="cmsd config override KEY=VALUE for every scenario (repeatable)")
    args = ap.parse_args()
    only = {s.strip().upper() for s in args.only.split(",") if s.strip()}
    PROFILE = {s.strip().upper() for s in args.profile.split(",") if s.strip()}
    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    P1_DEVICES, P1_WINDOW = 200, 16
    P1_SECONDS = 8 if quick else 20
    P2_SECONDS = 15 if quick else 30  # steady part, after the connection ramp
    P2_CONNECT_RATE = 300
    P3_SESSIONS = 10000 if not quick else 2000
    P4_SECONDS = 4 if quick else 8
    P4_PROCS = int(os.environ.get("BENCH_P4_PROCS", "16"))
    P5_PAIRS = 3 if quick else 7  # alternating downloads (nginx, cmsd) per 3 runs
    HOLDER_PROCS = 2
    NOFILE = int(os.environ.get("BENCH_NOFILE", "20000"))
    # P6: 30 000 live monitors over >= 2 cmsd processes and several generators (each
    # process of either kind is limited to NOFILE descriptors); Mosquitto, one process,
    # at the largest count that fits its limit with room to spare.
    P6_SESSIONS = int(os.environ.get("BENCH_P6_SESSIONS", "6000" if quick else "30000"))
    P6_SERVERS = int(os.environ.get("BENCH_P6_SERVERS", "2"))
    P6_GENERATORS = int(os.environ.get("BENCH_P6_GENERATORS",
                                       str(max(2, -(-P6_SESSIONS // 8000)))))
    P6_CONNECT_RATE = float(os.environ.get("BENCH_P6_CONNECT_RATE", "400"))
    P6_STEADY = int(os.environ.get("BENCH_P6_STEADY", "20" if quick else "90"))
    P6_MOSQ = int(os.environ.get("BENCH_P6_MOSQUITTO", "3000" if quick else "15000"))
    p6_runs = args.runs or 1  # P6 takes ~5 minutes: once, unless --runs is given
    BENCH_CMSD = {"workers": str(os.cpu_count() or 1)}
    BENCH_CMSD.update(dict(kv.split("=", 1) for kv in args.cmsd))
    RUN.mkdir(parents=True, exist_ok=True)
    for f in RUN.glob("*.log"):
        f.unlink()

    pg = Pg()
    if args.keep_pg and pg.postmaster_pid():
        log("reusing the PostgreSQL cluster in %s" % PGDIR)
    else:
        log("fresh PostgreSQL cluster in %s (port %d, as postgres)" % (PGDIR, PG_PORT))
        pg.fresh()
    res = {"machine": machine(), "versions": versions(pg), "quick": quick, "runs": runs,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "cmsd_overrides": BENCH_CMSD, "scenarios": {}}
    S = res["scenarios"]
    t_start = time.monotonic()

    if args.sweep:
        return sweep(pg, res, runs)

    if "P1" in only:
        rs = [p1_once(pg, i) for i in range(runs)]
        S["P1"] = {"params": {"devices": P1_DEVICES, "window": P1_WINDOW, "seconds": P1_SECONDS,
                              "obs_per_msg": 10},
                   "obs_per_s": stats([r["obs_per_s"] for r in rs]),
                   "copy_rows_per_s": stats([r["copy_rows_per_s"] for r in rs]),
                   "ratio_vs_copy": stats([r["ratio_vs_copy"] for r in rs]),
                   "p99_ms": stats([r["p99_ms"] for r in rs]),
                   "monitor_cpu_share": stats([r["monitor_cpu_share"] for r in rs]),
                   "obs_per_cpu_s": stats([r.get("obs_per_cpu_s") for r in rs]),
                   "copy_rows_per_cpu_s": stats([r.get("copy_rows_per_cpu_s") for r in rs]),
                   "ratio_per_cpu": stats([r.get("ratio_per_cpu") for r in rs]),
                   "cmsd_cores": stats([r["cores"]["cmsd"] for r in rs]),
                   "postgres_cores": stats([r["cores"]["postgres"] for r in rs]),
                   "others_cores": stats([r["cores"]["others"] for r in rs]),
                   "lost": sum(max(0, r["obs_acked"] - r["obs_stored"]) for r in rs),
                   "raw": rs}
    if "P1M" in only:
        # The same P1, metrics = off then on, alternating run by run so that a noisy moment
        # of the shared host falls on both; the ratio is per pair.
        off, on = [], []
        for i in range(runs):
            off.append(p1_once(pg, i, overrides={"metrics": "off"}, with_copy=False))
            on.append(p1_once(pg, i, overrides={"metrics": "on"}, with_copy=False))
        S["P1M"] = {"params": {"devices": P1_DEVICES, "window": P1_WINDOW, "seconds": P1_SECONDS},
                    "off_obs_per_s": stats([r["obs_per_s"] for r in off]),
                    "on_obs_per_s": stats([r["obs_per_s"] for r in on]),
                    "on_over_off": stats([b["obs_per_s"] / a["obs_per_s"]
                                          for a, b in zip(off, on) if a["obs_per_s"]]),
                    "off_obs_per_cpu_s": stats([r.get("obs_per_cpu_s") for r in off]),
                    "on_obs_per_cpu_s": stats([r.get("obs_per_cpu_s") for r in on]),
                    # cmsd's CPU per observation: the cost metrics add is cmsd's alone
                    "off_cmsd_us_per_obs": stats([r.get("cmsd_us_per_obs") for r in off]),
                    "on_cmsd_us_per_obs": stats([r.get("cmsd_us_per_obs") for r in on]),
                    "raw": {"off": off, "on": on}}
        log("P1M: metrics off %s obs/s, on %s obs/s, on/off per pair %s"
            % (fmt(S["P1M"]["off_obs_per_s"]), fmt(S["P1M"]["on_obs_per_s"]),
               fmt(S["P1M"]["on_over_off"], nd=3)))
    if "P2" in only:
        level, rs = int(os.environ.get("BENCH_P2_LEVEL", "10000")), []
        if "P1" in S and S["P1"]["obs_per_s"]["median"] / 10 < 10500 and \
                "BENCH_P2_LEVEL" not in os.environ:
            # P1 measured the saturation rate: start at ~80 % of it instead of a level that
            # cannot be held (each try costs a minute).
            cap = S["P1"]["obs_per_s"]["median"] / 10
            level = max(500, int(0.8 * cap / 500) * 500)
            log("P2: P1 saturates at %.0f msg/s: starting at %d monitors" % (cap, level))
        # A level counts as held when most of its runs hold it (one 2-s stall of a noisy
        # neighbour fails a run); it is halved once most runs of it have failed.
        attempts = []
        while True:
            rs = []
            for i in range(runs):
                rs.append(p2_once(pg, i, level))
                if 2 * sum(not r["held"] for r in rs) > runs:
                    break
            if 2 * sum(r["held"] for r in rs) > len(rs) or level <= 500:
                break
            attempts += rs
            log("P2: %d monitors not held in most runs; trying %d" % (level, level // 2))
            level //= 2
        S["P2"] = {"params": {"devices": level, "rate_per_device": 1, "obs_per_msg": 10,
                              "steady_seconds": P2_SECONDS, "connect_rate": P2_CONNECT_RATE,
                              "target_devices": 10000},
                   "p50_ms": stats([r["p50_ms"] for r in rs]),
                   "p99_ms": stats([r["p99_ms"] for r in rs]),
                   "steady_worst_interval_p99_ms": stats([r["steady_worst_interval_p99_ms"] for r in rs]),
                   "steady_median_interval_p99_ms": stats([r["steady_median_interval_p99_ms"] for r in rs]),
                   "steady_median_interval_p50_ms": stats([r["steady_median_interval_p50_ms"] for r in rs]),
                   "acked_msgs_per_s": stats([r["acked_msgs_per_s_steady"] for r in rs]),
                   "held": 2 * sum(r["held"] for r in rs) > len(rs),  # in most runs
                   "held_runs": "%d of %d" % (sum(r["held"] for r in rs), len(rs)),
                   "monitor_cpu_share": stats([r["monitor_cpu_share"] for r in rs]),
                   "scrape_p50_ms": stats([r["scrape"]["p50_ms"] for r in rs]),
                   "scrape_max_ms": stats([r["scrape"]["max_ms"] for r in rs]),
                   "scrape_failures": sum(r["scrape"]["failures"] for r in rs),
                   "scrapes": sum(r["scrape"]["scrapes"] for r in rs),
                   "attempts": attempts,  # runs of the levels tried before, not held
                   "raw": rs}
    if "P2V" in only:
        devices = int(os.environ.get("BENCH_P2V_DEVICES", "1000"))
        nview = int(os.environ.get("BENCH_P2V_VIEWERS", "200"))
        bms = int(os.environ.get("BENCH_P2V_BATCH_MS", "250"))
        off, on, ward, relayed, wbatch, widle = [], [], [], [], [], []
        for i in range(runs):  # alternating, so that a noisy neighbour hits all alike
            off.append(p2v_once(pg, i, devices, 0))
            on.append(p2v_once(pg, i, devices, nview))
            ward.append(p2v_once(pg, i, devices, nview, ward_streams=True))
            relayed.append(p2v_once(pg, i, devices, nview, ward_streams=True, relay=True))
            wbatch.append(p2v_once(pg, i, devices, nview, ward_streams=True, batch_ms=bms))
            widle.append(p2v_once(pg, i, devices, nview, ward_streams=True, idle_readers=True))
        S["P2V"] = {"params": {"devices": devices, "viewers": nview, "wards": P2V_WARDS,
                               "rate_per_device": 1,
                               "obs_per_msg": 10, "steady_seconds": P2_SECONDS},
                    "p99_ms_without": stats([r["p99_ms"] for r in off]),
                    "p99_ms_with": stats([r["p99_ms"] for r in on]),
                    "steady_p99_ms_without": stats([r["steady_median_interval_p99_ms"] for r in off]),
                    "steady_p99_ms_with": stats([r["steady_median_interval_p99_ms"] for r in on]),
                    "delivery_p50_ms": stats([r["viewers_summary"]["delivery_p50_ms"] for r in on]),
                    "delivery_p99_ms": stats([r["viewers_summary"]["delivery_p99_ms"] for r in on]),
                    "streams_dropped": sum(r["streams_dropped"] or 0 for r in on),
                    "cmsd_cores_without": stats([r["cores"]["cmsd"] for r in off]),
                    "cmsd_cores_with": stats([r["cores"]["cmsd"] for r in on]),
                    "viewers_curl_cores": stats([r["cores"]["viewers_curl"] for r in on]),
                    **p2v_variant("ward", ward), **p2v_variant("relay", relayed),
                    **p2v_variant("batch", wbatch), **p2v_variant("idle", widle),
                    "machine_busy_without": stats([r["cores"]["machine_busy"] for r in off]),
                    "machine_busy_with": stats([r["cores"]["machine_busy"] for r in on]),
                    "relay_dropped": sum((r["relayed"] or {}).get("relay_dropped") or 0
                                         for r in relayed),
                    "batch_ms": bms,
                    "raw": {"without": off, "with": on, "with_ward_streams": ward,
                            "ward_streams_on_second_instance": relayed,
                            "ward_streams_longer_batches": wbatch,
                            "ward_streams_idle_readers": widle}}
    if "W" in only:
        wdev = int(os.environ.get("BENCH_W_DEVICES", "100"))
        wsec = int(os.environ.get("BENCH_W_SECONDS", "20" if quick else "60"))
        rs = [w_once(pg, i, wdev, wsec) for i in range(runs)]
        S["W"] = {"params": {"devices": wdev, "channels": 2, "sample_rate_hz": 500,
                             "seconds": wsec, "rate_per_device": 1, "obs_per_msg": 10},
                  "p50_ms": stats([r["p50_ms"] for r in rs]),
                  "p99_ms": stats([r["p99_ms"] for r in rs]),
                  "steady_median_interval_p99_ms":
                      stats([r["steady_median_interval_p99_ms"] for r in rs]),
                  "samples_per_s": stats([r["samples_per_s"] for r in rs]),
                  "bytes_per_channel_hour": stats([r["bytes_per_channel_hour"] for r in rs]),
                  "bytes_per_channel_hour_with_index":
                      stats([r["bytes_per_channel_hour_with_index"] for r in rs]),
                  "ratio_vs_raw": stats([r["ratio_vs_raw"] for r in rs]),
                  "ratio_vs_raw_with_index": stats([r["ratio_vs_raw_with_index"] for r in rs]),
                  "cmsd_cores": stats([r["cores"]["cmsd"] for r in rs]),
                  "postgres_cores": stats([r["cores"]["postgres"] for r in rs]),
                  "lost": sum(max(0, r["samples_acked"] - r["samples_stored"]) for r in rs),
                  "nacked": sum(r["ae"] + r["ar"] + r["unacked"] for r in rs),
                  "raw": rs}
    if "A" in only:
        adev = int(os.environ.get("BENCH_A_DEVICES",
                                  str(S["P2"]["params"]["devices"]) if "P2" in S
                                  else ("2000" if quick else "10000")))
        aal = int(os.environ.get("BENCH_A_ALARM_DEVICES", str(max(1, adev // 10))))
        aev = int(os.environ.get("BENCH_A_ALARM_EVERY", "10"))
        # side by side: alarm_lane off and on, alternating run by run (a noisy moment of the
        # shared machine falls on both); the target is judged on "on" (the default)
        rs, roff = [], []
        for i in range(runs):
            roff.append(a_once(pg, i, adev, aal, P2_SECONDS, aev, lane="off"))
            rs.append(a_once(pg, i, adev, aal, P2_SECONDS, aev, lane="on"))
        S["A"] = {"params": {"devices": adev, "alarm_devices": aal, "alarm_every_s": aev,
                             "steady_seconds": P2_SECONDS, "rate_per_device": 1,
                             "obs_per_msg": 10},
                  "lane_off_alarm_p50_ms": stats([r["alarm_p50_ms"] for r in roff]),
                  "lane_off_alarm_p99_ms": stats([r["alarm_p99_ms"] for r in roff]),
                  "alarm_p99_whole_run_ms": stats([r["alarm_whole_run"]["p99"] for r in rs]),
                  "lane_off_alarm_p99_whole_run_ms":
                      stats([r["alarm_whole_run"]["p99"] for r in roff]),
                  "lane_off_numerics_steady_median_interval_p99_ms":
                      stats([r["numerics_steady_median_interval_p99_ms"] for r in roff]),
                  "alarm_p99_on_off_ratio": stats([a["alarm_p99_ms"] / b["alarm_p99_ms"]
                                                   for a, b in zip(rs, roff)
                                                   if a["alarm_p99_ms"] and b["alarm_p99_ms"]]),
                  "alarm_p50_ms": stats([r["alarm_p50_ms"] for r in rs]),
                  "alarm_p99_ms": stats([r["alarm_p99_ms"] for r in rs]),
                  "alarm_max_ms": stats([r["alarm_max_ms"] for r in rs]),
                  "alarms_aa": stats([r["alarms_aa"] for r in rs]),
                  "numerics_steady_median_interval_p99_ms":
                      stats([r["numerics_steady_median_interval_p99_ms"] for r in rs]),
                  "nacked": sum(r["ae"] + r["ar"] + r["unacked"] for r in rs + roff),
                  "raw": rs, "raw_lane_off": roff}
    if "P3" in only:
        rc, rm = [], []
        for i in range(runs):
            rc.append(hold_sessions(Cmsd(pg, tag="cmsd-p3"), "mllp", P3_SESSIONS))
            rm.append(hold_sessions(Mosquitto(), "mqtt", P3_SESSIONS))
        S["P3"] = {"params": {"sessions": P3_SESSIONS},
                   "cmsd_kib_per_session": stats([r["kib_per_session"] for r in rc]),
                   "mosquitto_kib_per_session": stats([r["kib_per_session"] for r in rm]),
                   "ratio_vs_mosquitto": stats([a["kib_per_session"] / b["kib_per_session"]
                                                for a, b in zip(rc, rm)
                                                if a["kib_per_session"] and b["kib_per_session"]]),
                   "cmsd_sessions_per_s": stats([r["sessions_per_s"] for r in rc]),
                   "mosquitto_sessions_per_s": stats([r["sessions_per_s"] for r in rm]),
                   "raw": {"cmsd": rc, "mosquitto": rm}}
    if "P4" in only:
        workers = int(BENCH_CMSD.get("workers", 1))
        rc, rn, dc, dn = [], [], [], []
        for i in range(runs):
            c = Cmsd(pg, tag="cmsd-p4")
            c.start()
            try:
                rc.append(p4_once(c, "mllp", ["full", "resume"]))
                if not quick and i == 0:
                    dc.append(p4_once(c, "ticket", ["full", "resume"]))
            finally:
                c.stop()
            n = Nginx(workers)
            n.start()
            try:
                rn.append(p4_once(n, "http", ["full", "resume"]))
                if not quick and i == 0:
                    dn.append(p4_once(n, "ticket", ["full", "resume"]))
            finally:
                n.stop()
        S["P4"] = {"params": {"workers": workers, "client_procs": P4_PROCS, "seconds": P4_SECONDS,
                              "devices": 64},
                   "cmsd_full_per_s": stats([r["full"]["full_per_s"] for r in rc]),
                   "nginx_full_per_s": stats([r["full"]["full_per_s"] for r in rn]),
                   "cmsd_resumed_per_s": stats([r["resume"]["resumed_per_s"] for r in rc]),
                   "nginx_resumed_per_s": stats([r["resume"]["resumed_per_s"] for r in rn]),
                   "full_ratio_vs_nginx": stats([a["full"]["full_per_s"] / b["full"]["full_per_s"]
                                                 for a, b in zip(rc, rn)]),
                   "cmsd_resumed_over_full": stats([a["resume"]["resumed_per_s"] / a["full"]["full_per_s"]
                                                    for a in rc if a["full"]["full_per_s"]]),
                   "nginx_resumed_over_full": stats([a["resume"]["resumed_per_s"] / a["full"]["full_per_s"]
                                                     for a in rn if a["full"]["full_per_s"]]),
                   # the same ratio per server CPU-second: what the server spends, without the
                   # client (which shares the two cores and does as much TLS work) in it
                   "cmsd_resumed_over_full_per_cpu": stats([
                       a["resume"]["per_server_cpu_s"] / a["full"]["per_server_cpu_s"]
                       for a in rc if a["full"]["per_server_cpu_s"] and a["resume"]["per_server_cpu_s"]]),
                   "nginx_resumed_over_full_per_cpu": stats([
                       a["resume"]["per_server_cpu_s"] / a["full"]["per_server_cpu_s"]
                       for a in rn if a["full"]["per_server_cpu_s"] and a["resume"]["per_server_cpu_s"]]),
                   "client_cores": stats([r["full"]["client_cores"] for r in rc + rn]),
                   "cmsd_full_per_cpu_s": stats([r["full"]["per_server_cpu_s"] for r in rc]),
                   "nginx_full_per_cpu_s": stats([r["full"]["per_server_cpu_s"] for r in rn]),
                   "cmsd_resumed_per_cpu_s": stats([r["resume"]["per_server_cpu_s"] for r in rc]),
                   "nginx_resumed_per_cpu_s": stats([r["resume"]["per_server_cpu_s"] for r in rn]),
                   "others_cores": stats([r[m]["cores"]["others"] for r in rc + rn for m in r]),
                   "errors": sum(r[m]["errors"] for r in rc + rn for m in r),
                   "tls_only": {"cmsd": dc, "nginx": dn},
                   "raw": {"cmsd": rc, "nginx": rn}}
    if "P5" in only:
        img = make_fw_image(64 << 20)
        pairs = P5_PAIRS * max(1, runs // 3)
        # nginx and cmsd run side by side and their downloads alternate (nginx, cmsd, nginx,
        # ...): a noisy moment of the shared host falls on both, not on one of them.
        n = Nginx(int(BENCH_CMSD.get("workers", 1)))
        n.start()

        def nginx_download():
            d, err = download(n.port, "/fw/v1/images/%s" % img.name)
            if not d:
                raise RuntimeError("nginx download: %s" % err)
            return d
        S["P5"] = {"params": {"image_bytes": 64 << 20, "pairs": pairs}}
        cdl = None
        try:
            rss0 = n.rss()
            if not fw_endpoint_exists():
                S["P5"]["cmsd"] = "pending: GET /fw/v1/images/<sha256> is not in the server yet"
            else:
                try:
                    cdl, c0, chwm, cafter, dl = p5_cmsd(pg, img, pairs, nginx_download)
                except (RuntimeError, OSError, ValueError, KeyError) as e:
                    S["P5"]["cmsd"] = "failed: %s" % str(e)[:300]
                    log("P5 cmsd: %s" % S["P5"]["cmsd"])
                    cdl = None
            if not cdl:
                dl = [nginx_download() for _ in range(pairs)]
            hwm = sum(rss_kib(p, "VmHWM") for p in n.pids())
        finally:
            n.stop()
        S["P5"].update({"nginx_MiB_per_s": stats([d["MiB_per_s"] for d in dl]),
                        "nginx_first_byte_ms": stats([1000 * d["first_byte_s"] for d in dl]),
                        "nginx_rss_before_kib": rss0, "nginx_peak_rss_kib": hwm})
        log("P5 nginx: %s MiB/s, peak RSS %d KiB" % (fmt(S["P5"]["nginx_MiB_per_s"], nd=0), hwm))
        if cdl:
            S["P5"].update({
                "cmsd_cold_MiB_per_s": cdl[0]["MiB_per_s"],
                "cmsd_MiB_per_s": stats([d["MiB_per_s"] for d in cdl[1:]]),
                "cmsd_first_byte_ms": stats([1000 * d["first_byte_s"] for d in cdl[1:]]),
                "cmsd_rss_before_kib": c0, "cmsd_peak_rss_kib": chwm,
                "cmsd_rss_after_kib": cafter,
                # each cmsd download over the nginx download just before it
                "ratio_vs_nginx": stats([a["MiB_per_s"] / b["MiB_per_s"]
                                         for a, b in zip(cdl[1:], dl)])})
            log("P5 cmsd: %s MiB/s, RSS before %d KiB, peak %d KiB (+%d KiB for a %d MiB image);"
                " first byte after %s ms (nginx %s ms)"
                % (fmt(S["P5"]["cmsd_MiB_per_s"], nd=0), c0, chwm, chwm - c0, 64,
                   fmt(S["P5"]["cmsd_first_byte_ms"], nd=1),
                   fmt(S["P5"]["nginx_first_byte_ms"], nd=1)))

    if "P6" in only:
        if P6_SESSIONS > 99999:
            raise SystemExit("BENCH_P6_SESSIONS: at most 99 999 (MON-%04d serials)")
        p6_setup(pg, max(P6_SESSIONS, P6_MOSQ, NDEV))
        rc, rm = [], []
        for i in range(p6_runs):
            rc.append(p6_once(pg, i))
            # Mosquitto in the same run: one process, so P6_MOSQ sessions (its descriptor
            # limit); RSS per held session as in P3
            rm.append(hold_sessions(Mosquitto(), "mqtt", P6_MOSQ))
        S["P6"] = {"params": {"sessions": P6_SESSIONS, "servers": P6_SERVERS,
                              "generators": P6_GENERATORS, "rate_per_device": 0.1,
                              "obs_per_msg": 10, "connect_rate": P6_CONNECT_RATE,
                              "steady_seconds": P6_STEADY, "mosquitto_sessions": P6_MOSQ,
                              "nofile": NOFILE},
                   "held": 2 * sum(r["held"] for r in rc) > len(rc),
                   "held_runs": "%d of %d" % (sum(r["held"] for r in rc), len(rc)),
                   "devices_acked": stats([r["devices_acked"] for r in rc]),
                   "refused": stats([r["refused"] for r in rc]),
                   "acked_msgs_per_s": stats([r["acked_msgs_per_s_mean"] for r in rc]),
                   "steady_median_interval_p50_ms": stats([r["steady_median_interval_p50_ms"] for r in rc]),
                   "steady_median_interval_p99_ms": stats([r["steady_median_interval_p99_ms"] for r in rc]),
                   "steady_worst_interval_p99_ms": stats([r["steady_worst_interval_p99_ms"] for r in rc]),
                   "p50_ms": stats([r["p50_ms"] for r in rc]),
                   "p99_ms": stats([r["p99_ms"] for r in rc]),
                   "cmsd_kib_per_session": stats([r["kib_per_session"] for r in rc]),
                   "mosquitto_kib_per_session": stats([r["kib_per_session"] for r in rm]),
                   "ratio_vs_mosquitto": stats([a["kib_per_session"] / b["kib_per_session"]
                                                for a, b in zip(rc, rm)
                                                if a["kib_per_session"] and b["kib_per_session"]]),
                   "cmsd_cores": stats([r["cores"]["cmsd"] for r in rc]),
                   "postgres_cores": stats([r["cores"]["postgres"] for r in rc]),
                   "others_cores": stats([r["cores"]["others"] for r in rc]),
                   "raw": {"cmsd": rc, "mosquitto": rm}}

    res["elapsed_s"] = round(time.monotonic() - t_start, 1)
    res["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    write_results(res)
    print_table(res)
    return 0


def sweep(pg, res, runs):
    """P1 (and P4 for workers) under cmsd config variations, one line each."""
    variants = [
        {"workers": 1},  # cmsd's defaults
        {"workers": 2},
        {"workers": 2, "batch_max_msgs": 64}, {"workers": 2, "batch_max_msgs": 1024},
        {"workers": 2, "batch_max_delay_ms": 1}, {"workers": 2, "batch_max_delay_ms": 20},
        {"workers": 2, "max_pending_per_conn": 4}, {"workers": 2, "max_pending_per_conn": 256},
    ]
    out = []
    for v in variants:
        rs = [p1_once(pg, i, overrides={k: str(x) for k, x in v.items()}, with_copy=False)
              for i in range(runs)]
        line = {"config": v, "obs_per_s": stats([r["obs_per_s"] for r in rs]),
                "p99_ms": stats([r["p99_ms"] for r in rs]),
                "cores": rs[-1]["cores"]}
        if list(v) == ["workers"]:
            c = Cmsd(pg, {k: str(x) for k, x in v.items()}, tag="cmsd-p4")
            c.start()
            try:
                p4 = [p4_once(c, "mllp", ["full", "resume"]) for _ in range(runs)]
            finally:
                c.stop()
            line["p4_full_per_s"] = stats([r["full"]["full_per_s"] for r in p4])
            line["p4_resumed_per_s"] = stats([r["resume"]["resumed_per_s"] for r in p4])
        out.append(line)
    res["sweep"] = out
    (BENCH / "sweep.json").write_text(json.dumps(res, indent=2))
    print("\ncmsd config sweep (P1: %d devices, window %d, %d s; median (min-max) of %d)"
          % (P1_DEVICES, P1_WINDOW, P1_SECONDS, runs))
    for line in out:
        extra = ""
        if "p4_full_per_s" in line:
            extra = "  P4 full %s/s resumed %s/s" % (fmt(line["p4_full_per_s"]),
                                                   fmt(line["p4_resumed_per_s"]))
        print("  %-62s %s obs/s  p99 %s ms%s" % (json.dumps(line["config"]),
                                                fmt(line["obs_per_s"]), fmt(line["p99_ms"]), extra))
    return 0


def write_results(res):
    (BENCH / "results.json").write_text(json.dumps(res, indent=2))
    rows = table_rows(res)
    with open(BENCH / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "metric", "median", "min", "max", "runs", "target", "met"])
        for r in rows:
            s, k = r["stats"], r["scale"]
            w.writerow([r["scn"], r["metric"], s and round(k * s["median"], 3),
                        s and round(k * s["min"], 3), s and round(k * s["max"], 3),
                        s and s["n"], r["target"], r["met"]])


def table_rows(res):
    S = res["scenarios"]
    rows = []

    def add(scn, metric, s, target="", met="", unit="", nd=0, scale=1.0):
        rows.append({"scn": scn, "metric": metric, "stats": s, "target": target, "met": met,
                     "unit": unit, "nd": nd, "scale": scale})

    def yes(b):
        return "" if b is None else ("yes" if b else "NO")

    if "P1" in S:
        p = S["P1"]
        add("P1", "cmsd observations committed+ACKed/s", p["obs_per_s"], ">= 100000",
            yes(p["obs_per_s"]["median"] >= 100000))
        add("P1", "PostgreSQL COPY rows/s (same rows, same table)", p["copy_rows_per_s"])
        add("P1", "ratio cmsd / COPY", p["ratio_vs_copy"], ">= 0.50",
            yes(p["ratio_vs_copy"]["median"] >= 0.5), nd=2)
        add("P1", "  per server CPU-second: cmsd+PG obs / COPY rows", p["ratio_per_cpu"], nd=2)
        add("P1", "  cores used: cmsd / PostgreSQL / other users",
            None if not p.get("cmsd_cores") else p["cmsd_cores"], nd=2)
        rows[-1]["text"] = "%.2f / %.2f / %.2f" % (p["cmsd_cores"]["median"],
                                                   p["postgres_cores"]["median"],
                                                   p["others_cores"]["median"])
        add("P1", "ACK latency p99 under saturation (ms)", p["p99_ms"], nd=1)
        add("P1", "cms-monitor CPU (share of one core)", p["monitor_cpu_share"], nd=2)
    if "P1M" in S:
        p = S["P1M"]
        add("P1M", "P1 obs/s with metrics = off", p["off_obs_per_s"])
        add("P1M", "P1 obs/s with metrics = on", p["on_obs_per_s"])
        r = p["on_over_off"]
        add("P1M", "on / off, per alternating pair", r, ">= 0.98",
            yes(r is not None and r["median"] >= 0.98), nd=3)
        add("P1M", "  per server CPU-second: on / off",
            stats([p["on_obs_per_cpu_s"]["median"] / p["off_obs_per_cpu_s"]["median"]])
            if p.get("on_obs_per_cpu_s") and p.get("off_obs_per_cpu_s") else None, nd=3)
        add("P1M", "  cmsd CPU microseconds per observation, off", p.get("off_cmsd_us_per_obs"),
            nd=3)
        add("P1M", "  cmsd CPU microseconds per observation, on", p.get("on_cmsd_us_per_obs"),
            nd=3)
    if "P2" in S:
        p = S["P2"]
        lvl = p["params"]["devices"]
        add("P2", "load: %d monitors x 1 msg/s x 10 obs, held in %s runs%s"
            % (lvl, p.get("held_runs", "?"), "" if lvl == 10000 else " (10000 not held)"),
            p["acked_msgs_per_s"], "10000 msg/s", yes(p["held"] and lvl == 10000))
        add("P2", "ACK latency p50 (ms), steady (median 2-s interval)",
            p["steady_median_interval_p50_ms"], nd=1)
        m = p["steady_median_interval_p99_ms"]
        add("P2", "ACK latency p99 (ms), steady (median 2-s interval)", m, "<= 100",
            yes(m is not None and m["median"] <= 100), nd=1)
        add("P2", "ACK latency p99 (ms), steady (worst 2-s interval)",
            p["steady_worst_interval_p99_ms"], nd=1)
        add("P2", "ACK latency p50 / p99 (ms), whole run incl. ramp", p["p99_ms"], nd=1)
        rows[-1]["text"] = "%.1f / %.1f" % (p["p50_ms"]["median"], p["p99_ms"]["median"])
        add("P2", "cms-monitor CPU (share of one core)", p["monitor_cpu_share"], nd=2)
        if p.get("scrape_p50_ms"):
            add("P2", "GET /metrics every 1 s meanwhile: answer p50 (ms), %d scrapes, %d failed"
                % (p.get("scrapes", 0), p.get("scrape_failures", 0)), p["scrape_p50_ms"], nd=2)
            add("P2", "GET /metrics answer, slowest (ms)", p["scrape_max_ms"], nd=1)
    if "P2V" in S:
        p = S["P2V"]
        pp = p["params"]
        add("P2V", "ACK p99 (ms), %d monitors, no live-event streams" % pp["devices"],
            p["p99_ms_without"], nd=1)
        add("P2V", "ACK p99 (ms), same load, %d streams open (%d dropped)"
            % (pp["viewers"], p["streams_dropped"]), p["p99_ms_with"], "unchanged", nd=1)
        add("P2V", "ACK p99 (ms), steady median 2-s interval: without", p["steady_p99_ms_without"],
            nd=1)
        add("P2V", "ACK p99 (ms), steady median 2-s interval: with", p["steady_p99_ms_with"], nd=1)
        add("P2V", "event delivery p50 (ms), publication -> probe", p["delivery_p50_ms"], nd=1)
        m = p["delivery_p99_ms"]
        add("P2V", "event delivery p99 (ms), publication -> probe", m, "<= 1000",
            yes(m is not None and m["median"] <= 1000), nd=1)
        add("P2V", "cmsd cores: without / with streams", p["cmsd_cores_without"], nd=2)
        rows[-1]["text"] = fmt(p["cmsd_cores_without"], nd=2) + " / " + fmt(p["cmsd_cores_with"],
                                                                            nd=2)
        add("P2V", "the viewers' curl processes (cores, on this machine)",
            p["viewers_curl_cores"], nd=2)
        add("P2V", "ACK p99 (ms), %d streams each on one of %d wards (%d dropped)"
            % (pp["viewers"], pp["wards"], p["ward_streams_dropped"]), p["ward_p99_ms_with"],
            "unchanged", nd=1)
        add("P2V", "  steady median 2-s interval p99 (ms), ward streams",
            p["ward_steady_p99_ms_with"], nd=1)
        add("P2V", "  event delivery p99 (ms), ward streams", p["ward_delivery_p99_ms"],
            "<= 1000", nd=1)
        if "relay_p99_ms_with" in p:
            add("P2V", "ACK p99 (ms), the ward streams on a second cmsd (relayed, %d dropped)"
                % p["relay_dropped"], p["relay_p99_ms_with"], "unchanged", nd=1)
            add("P2V", "  event delivery p99 (ms), relayed: publication on A -> probe on B",
                p["relay_delivery_p99_ms"], "<= 1000", nd=1)
            add("P2V", "  cmsd cores (both instances), relayed", p["relay_cmsd_cores_with"],
                nd=2)
        add("P2V", "  cmsd cores, ward streams", p["ward_cmsd_cores_with"], nd=2)
        if "batch_p99_ms_with" in p:
            add("P2V", "ACK p99 (ms), ward streams, events_batch_ms %d (%d dropped)"
                % (p["batch_ms"], p["batch_streams_dropped"]), p["batch_p99_ms_with"],
                "unchanged", nd=1)
            add("P2V", "  steady median 2-s interval p99 (ms), events_batch_ms %d" % p["batch_ms"],
                p["batch_steady_p99_ms_with"], nd=1)
            add("P2V", "  event delivery p99 (ms), events_batch_ms %d" % p["batch_ms"],
                p["batch_delivery_p99_ms"], "<= 1000", nd=1)
            add("P2V", "  cmsd / curl cores, ward streams: batch 50 vs %d" % p["batch_ms"],
                p["batch_cmsd_cores_with"], nd=2)
            rows[-1]["text"] = "%s / %s vs %s / %s" % (
                fmt(p["ward_cmsd_cores_with"], nd=2), fmt(p["ward_curl_cores_with"], nd=2),
                fmt(p["batch_cmsd_cores_with"], nd=2), fmt(p["batch_curl_cores_with"], nd=2))
        if "idle_p99_ms_with" in p:
            add("P2V", "ACK p99 (ms), ward streams, readers SCHED_IDLE (%d dropped)"
                % p["idle_streams_dropped"], p["idle_p99_ms_with"], "unchanged", nd=1)
            add("P2V", "  steady median 2-s interval p99 (ms), readers SCHED_IDLE",
                p["idle_steady_p99_ms_with"], nd=1)
            add("P2V", "  event delivery p99 (ms), readers SCHED_IDLE", p["idle_delivery_p99_ms"],
                "<= 1000", nd=1)
            add("P2V", "  cmsd cores, ward streams, readers SCHED_IDLE", p["idle_cmsd_cores_with"],
                nd=2)
        add("P2V", "machine busy (cores of 2): without / with streams",
            p["machine_busy_without"], nd=2)
        rows[-1]["text"] = (fmt(p["machine_busy_without"], nd=2) + " / "
                            + fmt(p["machine_busy_with"], nd=2))
    if "W" in S:
        p = S["W"]
        q = p["params"]
        add("W", "waveforms: %d monitors x 2 ECG x 500 Hz + 10 obs, 1 msg/s: samples/s"
            % q["devices"], p["samples_per_s"])
        m = p["steady_median_interval_p99_ms"]
        add("W", "ACK latency p99 (ms), steady (median 2-s interval)", m, "<= 250",
            yes(m is not None and m["median"] is not None and m["median"] <= 250), nd=1)
        add("W", "ACK latency p50 / p99 (ms), whole run", p["p99_ms"], "<= 250",
            yes(p["p99_ms"]["median"] <= 250), nd=1)
        rows[-1]["text"] = "%.1f / %.1f" % (p["p50_ms"]["median"], p["p99_ms"]["median"])
        add("W", "MB stored per ECG channel-hour (heap + TOAST; raw 16-bit 3.60)",
            p["bytes_per_channel_hour"], nd=2, scale=1e-6)
        add("W", "  the same with the (device, start) index", p["bytes_per_channel_hour_with_index"],
            nd=2, scale=1e-6)
        add("W", "  ratio stored / raw samples", p["ratio_vs_raw"], nd=2)
        add("W", "samples ACKed but not stored; messages not ACKed AA", stats([p["lost"]]), "0",
            yes(p["lost"] == 0 and p["nacked"] == 0))
        rows[-1]["text"] = "%d; %d" % (p["lost"], p["nacked"])
    if "A" in S:
        p = S["A"]
        q = p["params"]
        add("A", "alarms under P2: %d monitors, %d raising alarms (1 per %d s)"
            % (q["devices"], q["alarm_devices"], q["alarm_every_s"]), p["alarms_aa"])
        add("A", "alarm ACK latency p50 (ms), steady", p["alarm_p50_ms"], nd=1)
        m = p["alarm_p99_ms"]
        add("A", "alarm ACK latency p99 (ms), steady", m, "<= 50",
            yes(m["median"] is not None and m["median"] <= 50), nd=1)
        add("A", "numerics ACK p99 meanwhile (ms, median 2-s interval)",
            p["numerics_steady_median_interval_p99_ms"], nd=1)
        add("A", "  alarm ACK p99 (ms), whole run (with the alarm monitors' connecting)",
            p["alarm_p99_whole_run_ms"], nd=1)
        add("A", "  alarm_lane = off: alarm ACK p50 (ms)", p["lane_off_alarm_p50_ms"], nd=1)
        add("A", "  alarm_lane = off: alarm ACK p99 (ms)", p["lane_off_alarm_p99_ms"], nd=1)
        add("A", "  alarm_lane = off: alarm ACK p99 (ms), whole run",
            p["lane_off_alarm_p99_whole_run_ms"], nd=1)
        add("A", "  alarm_lane = off: numerics ACK p99 (ms, median 2-s interval)",
            p["lane_off_numerics_steady_median_interval_p99_ms"], nd=1)
        add("A", "  alarm p99 on / off (per alternating pair)", p["alarm_p99_on_off_ratio"],
            nd=2)
        add("A", "messages not ACKed AA", stats([p["nacked"]]), "0", yes(p["nacked"] == 0))
    if "P3" in S:
        p = S["P3"]
        add("P3", "cmsd KiB per held mTLS session (%d)" % p["params"]["sessions"],
            p["cmsd_kib_per_session"], "<= 16", yes(p["cmsd_kib_per_session"]["median"] <= 16), nd=1)
        add("P3", "Mosquitto KiB per held mTLS session", p["mosquitto_kib_per_session"], nd=1)
        add("P3", "ratio cmsd / Mosquitto", p["ratio_vs_mosquitto"], "<= 1.0",
            yes(p["ratio_vs_mosquitto"] and p["ratio_vs_mosquitto"]["median"] <= 1.0), nd=2)
    if "P4" in S:
        p = S["P4"]
        w = p["params"]["workers"]
        add("P4", "cmsd full mTLS handshakes/s (workers=%d)" % w, p["cmsd_full_per_s"])
        add("P4", "nginx full mTLS handshakes/s (workers=%d)" % w, p["nginx_full_per_s"])
        add("P4", "ratio full cmsd / nginx", p["full_ratio_vs_nginx"], ">= 1.0",
            yes(p["full_ratio_vs_nginx"]["median"] >= 1.0), nd=2)
        add("P4", "  full per server CPU-second: cmsd(+PG) / nginx",
            stats([p["cmsd_full_per_cpu_s"]["median"] / p["nginx_full_per_cpu_s"]["median"]])
            if p["cmsd_full_per_cpu_s"] and p["nginx_full_per_cpu_s"] else None, nd=2)
        add("P4", "cmsd resumed handshakes/s", p["cmsd_resumed_per_s"])
        add("P4", "nginx resumed handshakes/s", p["nginx_resumed_per_s"])
        add("P4", "cmsd resumed / full", p["cmsd_resumed_over_full"], ">= 3.0",
            yes(p["cmsd_resumed_over_full"]["median"] >= 3.0), nd=2)
        add("P4", "  nginx resumed / full", p.get("nginx_resumed_over_full"), nd=2)
        add("P4", "  resumed / full per server CPU-second: cmsd", p.get("cmsd_resumed_over_full_per_cpu"), nd=2)
        add("P4", "  resumed / full per server CPU-second: nginx", p.get("nginx_resumed_over_full_per_cpu"), nd=2)
        add("P4", "hsbench client CPU (cores)", p["client_cores"], nd=2)
    if "P5" in S:
        p = S["P5"]
        if "cmsd_MiB_per_s" in p:
            add("P5", "cmsd 64 MiB download over mTLS (MiB/s), from its cache",
                p["cmsd_MiB_per_s"])
            add("P5", "cmsd first download (image not cached yet) (MiB/s)",
                stats([p["cmsd_cold_MiB_per_s"]]))
        add("P5", "nginx 64 MiB download over mTLS (MiB/s)", p["nginx_MiB_per_s"])
        if "cmsd_MiB_per_s" in p:
            add("P5", "ratio cmsd / nginx", p["ratio_vs_nginx"], ">= 1.0",
                yes(p["ratio_vs_nginx"]["median"] >= 1.0), nd=2)
            grow = p["cmsd_peak_rss_kib"] - p["cmsd_rss_before_kib"]
            add("P5", "cmsd RSS before / peak during the downloads (KiB)", stats([grow]),
                "flat", yes(grow < 8 * 1024))
            rows[-1]["text"] = "%d / %d (+%d)" % (p["cmsd_rss_before_kib"], p["cmsd_peak_rss_kib"], grow)
        add("P5", "nginx peak RSS (KiB, all processes)", stats([p["nginx_peak_rss_kib"]]))
        if "cmsd" in p:
            add("P5", "cmsd: " + p["cmsd"], None, ">= 1.0x nginx, RSS flat", "pending")
    if "P6" in S:
        p = S["P6"]
        q = p["params"]
        add("P6", "live mTLS monitors on %d cmsd (1 msg/10 s), held in %s runs"
            % (q["servers"], p["held_runs"]), p["devices_acked"], "%d" % q["sessions"],
            yes(p["held"]))
        add("P6", "messages ACKed/s, steady (mean; offered %d)" % (q["sessions"] // 10),
            p["acked_msgs_per_s"])
        add("P6", "sessions refused", p["refused"], "0", yes(p["refused"]["max"] == 0))
        add("P6", "ACK latency p50 (ms), steady (median 2-s interval)",
            p["steady_median_interval_p50_ms"], nd=1)
        m = p["steady_median_interval_p99_ms"]
        add("P6", "ACK latency p99 (ms), steady (median 2-s interval)", m, "<= 250",
            yes(m is not None and m["median"] <= 250), nd=1)
        add("P6", "ACK latency p99 (ms), steady (worst 2-s interval)",
            p["steady_worst_interval_p99_ms"], nd=1)
        add("P6", "ACK latency p50 / p99 (ms), whole run incl. ramp", p["p99_ms"], nd=1)
        rows[-1]["text"] = "%.1f / %.1f" % (p["p50_ms"]["median"], p["p99_ms"]["median"])
        add("P6", "cmsd KiB per live session (all processes)", p["cmsd_kib_per_session"], nd=2)
        add("P6", "Mosquitto KiB per held session (%d, one process)" % q["mosquitto_sessions"],
            p["mosquitto_kib_per_session"], nd=2)
        r = p["ratio_vs_mosquitto"]
        add("P6", "ratio cmsd / Mosquitto", r, "<= 1.0", yes(r and r["median"] <= 1.0), nd=2)
    return rows


def print_table(res):
    rows = table_rows(res)
    m = res["machine"]
    print()
    print("make bench: %s, %d CPU (%s), %d MiB RAM; %s; median (min-max) of %d run(s)%s"
          % (res["started"], m["nproc"], m["cpu_model"], m["ram_mib"],
             res["versions"].get("cmsd_git"), res["runs"], ", QUICK" if res["quick"] else ""))
    print("load average at start %s, at end %s (other users of the machine add noise)"
          % (" ".join(m["loadavg_at_start"]), " ".join(res["loadavg_at_end"])))
    print("%-4s %-58s %-28s %-14s %s" % ("", "metric", "median (min-max)", "target", "met"))
    for r in rows:
        print("%-4s %-58s %-28s %-14s %s" % (r["scn"], r["metric"][:58],
                                             r.get("text") or fmt(r["stats"], nd=r["nd"], scale=r["scale"]),
                                             r["target"], r["met"]))
    print("\nresults: %s, %s (%.0f s)" % (BENCH / "results.json", BENCH / "results.csv",
                                          res["elapsed_s"]))


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        # The cluster stays up only when asked (--keep-pg reuses it next time).
        if "--keep-pg" not in sys.argv and os.environ.get("BENCH_PG_KEEP_RUNNING") != "1":
            Pg().pgsh("stop", PGDIR, PG_PORT, check=False)
    sys.exit(rc)
