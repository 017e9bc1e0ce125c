"""The service unit in systemd/ is one systemd accepts, and as hardened as
docs/operations.md says: `systemd-analyze verify` reports nothing, `systemd-analyze
security` gives the exposure score the docs state (and never above 2.0, "OK"),
the settings the runbook promises are there, and the sysusers file makes a
dedicated user (checked with `systemd-sysusers --dry-run` in a scratch root)."""

import re
import shutil
import subprocess

import pytest

import helpers as h

UNIT = h.ROOT / "systemd" / "cmsd.service"
SYSUSERS = h.ROOT / "systemd" / "cmsd.sysusers"
OPS = h.ROOT / "docs" / "operations.md"
INSTALLED = "/usr/local/bin/cmsd"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed (tools/deps.sh)")


def unit_settings():
    """Every Key=value of the [Service] section, as lists (keys repeat)."""
    out = {}
    section = None
    for ln in UNIT.read_text().splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        if ln.startswith("["):
            section = ln.strip("[]")
            continue
        k, _, v = ln.partition("=")
        out.setdefault((section, k), []).append(v)
    return out


def test_verify_says_nothing(tmp_path):
    # verify checks that ExecStart's program exists: point it at the one we built,
    # and change nothing else.
    text = UNIT.read_text()
    assert INSTALLED in text
    unit = tmp_path / "cmsd.service"
    unit.write_text(text.replace(INSTALLED, str(h.CMSD)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    # A bad value is only a warning (exit 0): any output at all fails.
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        "systemd-analyze verify:\n%s%s" % (r.stdout, r.stderr)


def test_verify_would_catch_a_typo(tmp_path):
    """The check above can fail: a misspelled value makes verify speak."""
    unit = tmp_path / "cmsd.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(h.CMSD))
                    .replace("NoNewPrivileges=yes", "NoNewPrivileges=perhaps"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert "NoNewPrivileges" in r.stdout + r.stderr or "perhaps" in r.stdout + r.stderr


def security_score():
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for cmsd\.service: ([0-9.]+) (\w+)", r.stdout)
    assert m, "no score in:\n%s%s" % (r.stdout, r.stderr)
    return float(m.group(1)), m.group(2), r.stdout


def test_security_score_is_the_documented_one():
    score, verdict, report = security_score()
    m = re.search(r"systemd-analyze security[^\n]*?\*\*([0-9.]+) (\w+)\*\*", OPS.read_text())
    assert m, "docs/operations.md does not state the score as **N.N WORD**"
    assert (score, verdict) == (float(m.group(1)), m.group(2)), \
        "measured %.1f %s, docs say %s %s:\n%s" % (score, verdict, m.group(1), m.group(2), report)
    assert score <= 2.0 and verdict == "OK", report


def test_promised_settings():
    s = unit_settings()

    def one(key):
        v = s.get(("Service", key))
        assert v, "[Service] %s= missing" % key
        return v[-1]
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("ExecStart").startswith(INSTALLED + " --config ")
    assert one("User") == "cmsd" and one("Group") == "cmsd"
    assert int(one("WatchdogSec")) > 0
    for k in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome",
              "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
              "RestrictNamespaces", "RestrictSUIDSGID", "LockPersonality",
              "MemoryDenyWriteExecute", "RestrictRealtime"):
        assert one(k) == "yes", k
    assert one("ProtectSystem") == "strict"
    assert one("ReadWritePaths") == "/var/lib/cmsd"
    assert one("CapabilityBoundingSet") == ""
    assert sorted(one("RestrictAddressFamilies").split()) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert s[("Service", "SystemCallFilter")][0] == "@system-service"
    # The drain must fit in systemd's patience: TimeoutStopSec above shutdown_timeout_s.
    assert int(one("TimeoutStopSec")) > 30


def test_sysusers_makes_a_dedicated_user(tmp_path):
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers not installed")
    r = subprocess.run(["systemd-sysusers", "--root=%s" % tmp_path, "--dry-run", str(SYSUSERS)],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.search(r"Creating user '?cmsd'?", out), out
    assert re.search(r"Creating group '?cmsd'?", out), out
    line = [ln for ln in SYSUSERS.read_text().splitlines() if ln.startswith("u ")]
    assert line and line[0].split()[1] == "cmsd" and line[0].split()[2] == "-"
