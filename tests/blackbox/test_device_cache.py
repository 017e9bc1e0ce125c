"""cmsd keeps a device's "active" registry check in memory (device_cache_ttl_s,
sql/010): a reconnecting monitor needs no query. Whatever changes the
registry, even SQL typed by hand that no cmsd code path sees, must take effect
on the very next connection: the triggers of sql/010 NOTIFY every cmsd."""

import time

import pytest

import helpers as h

# A change reaches cmsd as a NOTIFY at COMMIT, within milliseconds. The tests
# give it this long, far below device_cache_ttl_s (60 s): a verdict that was
# not dropped would still be answered from memory.
NOTIFY_GRACE_S = 0.3
from conftest import EUI64, EUI64_DEVICE


def send_ok(connect, port, serial, **kw):
    cid = h.unique("DC")
    with connect(port, serial) as c:
        ack = c.request(h.pcd01(serial, cid, patient=h.unique("PT"), **kw))
    return ack, cid


def refused_or_rejected(pki, port, serial, **kw):
    """True when serial's next connection is refused (TLS or closed before an
    answer) or its message gets anything but AA."""
    ctx = h.client_context(pki, *pki.device(serial))
    cid = h.unique("DC")
    try:
        with h.MllpClient(port, ctx) as c:
            ack = c.request(h.pcd01(serial, cid, patient=h.unique("PT"), **kw))
            return ack.code != "AA"
    except (OSError, h.Closed):
        return True


def test_status_change_by_hand_takes_effect_on_next_connection(cmsd, pki, db, connect):
    serial = "MON-0002"
    for _ in range(3):  # checked once by the database, then answered from memory
        ack, _ = send_ok(connect, cmsd.port, serial)
        assert ack.code == "AA", ack
    try:
        db.execute("UPDATE cms.devices SET status = 'decommissioned' WHERE serial = %s", (serial,))
        time.sleep(NOTIFY_GRACE_S)
        assert refused_or_rejected(pki, cmsd.port, serial), \
            "decommissioned device admitted from a kept verdict"
    finally:
        db.execute("UPDATE cms.devices SET status = 'active' WHERE serial = %s", (serial,))
    # re-activated: admitted at once (refusals are never kept)
    ack, ack_cid = send_ok(connect, cmsd.port, serial)
    assert ack.code == "AA", ack
    assert db.message_count(serial, ack_cid) == 1


def test_identifier_removed_by_hand_takes_effect(cmsd, pki, db, connect):
    msh3 = "AcmeInc^%s^EUI-64" % EUI64
    for _ in range(2):
        ack, _ = send_ok(connect, cmsd.port, EUI64_DEVICE, msh3=msh3)
        assert ack.code == "AA", ack
    kind = db.scalar("SELECT kind FROM cms.device_identifiers WHERE identifier = %s", (EUI64,))
    db.execute("DELETE FROM cms.device_identifiers WHERE identifier = %s", (EUI64,))
    time.sleep(NOTIFY_GRACE_S)
    try:
        # MSH-3 now names an identifier the device no longer has: refused (AR)
        assert refused_or_rejected(pki, cmsd.port, EUI64_DEVICE, msh3=msh3), \
            "an identifier removed from the registry was still accepted"
    finally:
        db.execute("INSERT INTO cms.device_identifiers (device_id, identifier, kind) "
                   "SELECT id, %s, %s FROM cms.devices WHERE serial = %s",
                   (EUI64, kind, EUI64_DEVICE))
    ack, _ = send_ok(connect, cmsd.port, EUI64_DEVICE, msh3=msh3)
    assert ack.code == "AA", ack


def test_certificate_registered_by_hand_takes_effect(cmsd, pki, db, connect):
    """MON-0001 has no certificate on record, so any device-CA certificate with
    its CN is allowed. Recording another certificate for it (as EST would)
    makes the one it uses 'cert unknown' at once."""
    serial = "MON-0001"
    if db.scalar("SELECT count(*) FROM cms.device_certs c JOIN cms.devices d ON d.id = "
                 "c.device_id WHERE d.serial = %s", (serial,)):
        pytest.skip("MON-0001 has certificates on record in this run")
    ack, _ = send_ok(connect, cmsd.port, serial)
    assert ack.code == "AA", ack
    fp = "ab" * 32
    db.execute(
        "INSERT INTO cms.device_certs (device_id, serial_hex, fingerprint_sha256, subject_cn, "
        "not_before, not_after, issued_via, der) SELECT id, 'abcdef0123', %s, serial, now(), "
        "now() + interval '1 day', 'enroll', '\\x00' FROM cms.devices WHERE serial = %s",
        (fp, serial))
    time.sleep(NOTIFY_GRACE_S)
    try:
        assert refused_or_rejected(pki, cmsd.port, serial), \
            "certificate no longer on record admitted from a kept verdict"
    finally:
        db.execute("DELETE FROM cms.device_certs WHERE fingerprint_sha256 = %s", (fp,))
    ack, _ = send_ok(connect, cmsd.port, serial)  # refusals are never kept: admitted at once
    assert ack.code == "AA", ack
