"""The web console in a real browser: Debian's chromium driven by playwright-core
(npm, installed under the build tree; no browser download) with operator client
certificates (Playwright's clientCertificates). tests/browser/console.mjs does the
browser's part; this test starts PostgreSQL and cmsd (console_dir = console/), imports
a release for the approval step, and checks what the script saw and what the audit
log holds:

  - the console loads as operator1 (identity from the certificate, live stream open);
  - a bed tile updates when cms-monitor sends;
  - an alarm appears in its priority colour and clears (cms-monitor --alarms);
  - the importer's own approval is refused, operator2 approves from the page;
  - a rollout created from the page (with its CSRF token) is paused and resumed from the
    rollouts page (the pause sent first with a stale token: refused and audited, then sent
    again with the token the page fetched), then pauses by itself when its device reports
    a failure (injected);
  - no Content-Security-Policy violation, no script error;
  - screenshots under the test's directory (build/.../console-browser/).

Skipped, with the reason, only when chromium or node is not installed (CI installs both).
"""

import json
import os
import shutil
import subprocess

import pytest

import helpers as h
from fw_helpers import *  # noqa: F401,F403 (fixtures)
from fw_helpers import (audit_since, import_release, sign_release, start_fw_cmsd,
                        stop_checked, unique_model)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NODE = shutil.which("node")
NODE_DIR = h.BUILD / "node"
SCRIPT = h.ROOT / "tests" / "browser" / "console.mjs"
OUT = h.RUN / "console-browser"
VITALS, ALARMS, TARGET = "CON-0001", "CON-0002", "CON-0003"


def playwright():
    """playwright-core under build/node (npm install once; the registry is needed only then)."""
    mod = NODE_DIR / "node_modules" / "playwright-core"
    if not mod.exists():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        h.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR),
               "playwright-core@1"], timeout=600)
    return NODE_DIR / "node_modules"


@pytest.fixture(scope="module")
def console_cmsd(pki, db):
    pki.mint("CON-", 1, 3)
    for serial in (VITALS, ALARMS):
        if not db.query("SELECT 1 FROM cms.devices WHERE serial = %s", (serial,)):
            h.device_add(db, serial, status="active", model="Example Monitor")
    c = start_fw_cmsd(pki, db, "cmsd-console-browser", console_dir=str(h.ROOT / "console"))
    yield c
    stop_checked(c)


def monitor(c, pki, serial, *extra):
    cert, key = pki.device(serial)
    port = c.cfg["mllp_listen"].rsplit(":", 1)[1]
    return [str(h.BUILD / "cms-monitor"), "--host", "127.0.0.1", "--port", port,
            "--ca", str(pki.root_ca), "--cert", str(cert), "--key", str(key), "--quiet",
            "--location", "ICU^^BED-%s" % serial[-2:]] + list(extra)


@pytest.mark.skipif(not os.path.exists(CHROMIUM) or not NODE,
                    reason="chromium or node not installed (tools/deps.sh installs them)")
def test_console_in_chromium(console_cmsd, pki, db):
    c = console_cmsd
    node_modules = playwright()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    model = unique_model()
    dev = TARGET  # the approval's device, of the release's model (not one of fw_helpers' FWD-)
    h.device_add(db, dev, status="active", model=model)  # a fresh database each session
    rel = sign_release(model, "3.1.0", 7, size=50000)
    rid = import_release(c, pki, rel, "operator1")["id"]
    a0 = db.max_audit_id()
    ops = {}
    for name in ("operator1", "operator2"):
        ops[name] = {"cert": str(pki.path("operators/%s.crt" % name)),
                     "key": str(pki.path("operators/%s.key" % name))}
    conf = {
        "url": "https://localhost:%s" % c.cfg["https_listen"].rsplit(":", 1)[1],
        "chromium": CHROMIUM, "node_modules": str(node_modules), "out_dir": str(OUT),
        "operators": ops,
        "vitals_device": VITALS, "alarm_device": ALARMS,
        "monitor_vitals": monitor(c, pki, VITALS, "--count", "3", "--rate", "2"),
        "monitor_alarms": monitor(c, pki, ALARMS, "--alarms", "0.5", "--rate", "1",
                                  "--duration", "35"),
        "release_id": rid, "approve_device": dev, "release_sha256": rel.sha256,
        "device": dict(zip(("cert", "key"), map(str, pki.device(dev)))),
        "ca": str(pki.root_ca),
    }
    cfile = OUT / "config.json"
    cfile.write_text(json.dumps(conf))
    p = subprocess.run([NODE, str(SCRIPT), str(cfile)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=400)
    (OUT / "node-stderr.txt").write_text(p.stderr)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, "no result from the browser script (rc=%d):\n%s" % (p.returncode, p.stderr)
    res = json.loads(lines[-1])
    assert res.get("ok") and p.returncode == 0, "browser script failed: %s\n%s" % (
        res.get("error"), p.stderr[-4000:])
    steps = {s["name"]: s for s in res["steps"]}
    assert "operator1" in steps["loaded"]["who"]
    assert steps["tile_updated"]["ms"] < 20000
    shown = steps["alarm_shown"]
    assert "prio-P" in shown["class"] and "alarm-P" in shown["tile"], shown
    assert "alarm_cleared" in steps
    assert "two_person_rule" in steps["self_approval_refused"]["message"], steps
    assert "done" in steps["approved"]["message"]
    assert steps["rollout_paused"]["token_renewed"], steps["rollout_paused"]
    assert steps["rollout_auto_paused"]["reason"].startswith("auto"), steps
    assert "intact" in steps["audit"]["chain"]
    assert res["csp_violations"] == [], res["csp_violations"]
    assert res["page_errors"] == [], res["page_errors"]
    for n in ("01-ward", "02-tile-updated", "03-alarm", "04-alarm-cleared", "06-approved",
              "07-rollout-paused"):
        assert (OUT / (n + ".png")).stat().st_size > 1000, n

    # The audit log: both logins, the refusal of the self-approval, the approval by
    # operator2, the rollout's pause, all from the browser.
    rows = audit_since(db, a0)
    by = lambda ev: [r for r in rows if r["event"] == ev]  # noqa: E731
    logins = {r["actor"] for r in by("console_login")}
    assert {"operator:operator1", "operator:operator2"} <= logins, logins
    assert [r for r in by("fw_approve_refused") if r["actor"] == "operator:operator1"]
    assert [r for r in rows if r["event"].startswith("fw_approv") and r["event"] != "fw_approve_refused"
            and r["actor"] == "operator:operator2"], [r["event"] for r in rows]
    paused = [json.loads(r["detail"])["reason"] for r in rows if r["event"] == "rollout_paused"]
    assert "manual" in paused and "auto" in paused, paused
    # the stale token's refusal is audited, then the same pause went through with the new one
    stale = [r for r in by("csrf_refused") if r["actor"] == "operator:operator2"]
    assert [json.loads(r["detail"])["reason"] for r in stale] == ["invalid X-CSRF-Token"], stale
    first_pause = min(r["id"] for r in by("rollout_paused"))
    assert stale[0]["id"] < first_pause
