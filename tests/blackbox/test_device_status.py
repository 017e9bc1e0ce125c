"""The registry decides: a device with a valid certificate but status other
than active is refused, and the status is checked on every connection,
resumed TLS sessions included (they skip certificate verification)."""

import time
import pytest

import helpers as h
from conftest import PENDING, REVOKED, TO_REVOKE


@pytest.mark.parametrize("serial,status", [(PENDING, "pending"), (REVOKED, "revoked")])
def test_inactive_device_refused(cmsd, pki, db, serial, status):
    since = cmsd.test_log_start
    local, how = h.expect_refused(pki, cmsd.port, pki.device(serial),
                                  h.pcd01(serial, h.unique("INACT"), patient=h.unique("PT")))
    assert local is not None, how
    h.assert_refusal_logged(cmsd, local, r"(?i)%s.*(%s|not active|inactive)|(%s|not active|"
                                       r"inactive).*%s" % (serial, status, status, serial), since)
    assert db.scalar("SELECT count(*) FROM cms.messages m JOIN cms.devices d ON d.id = m.device_id "
                     "WHERE d.serial = %s", (serial,)) == 0
    h.good_client_still_served(cmsd, pki)


def test_status_checked_on_resumed_session(cmsd, pki, db):
    cert, key = pki.device(TO_REVOKE)
    ctx = h.client_context(pki, cert, key)
    cid = h.unique("RES")
    with h.MllpClient(cmsd.port, ctx) as c:
        ack = c.request(h.pcd01(TO_REVOKE, cid, patient=h.unique("PT")))
        assert ack.code == "AA", ack
        session = c.sock.session  # TLS 1.3 ticket arrived with the server's data
    assert session is not None and session.has_ticket, "cmsd issued no session ticket"

    # Still active: a resumed session works.
    with h.MllpClient(cmsd.port, ctx, session=session) as c:
        assert c.sock.session_reused, "cmsd did not resume the TLS session"
        ack = c.request(h.pcd01(TO_REVOKE, h.unique("RES"), patient=h.unique("PT")))
        assert ack.code == "AA", ack
        session = c.sock.session

    db.execute("UPDATE cms.devices SET status = 'revoked' WHERE serial = %s", (TO_REVOKE,))
    time.sleep(0.3)  # its NOTIFY drops the kept verdict (ms; device_cache_ttl_s is 60 s)
    since = cmsd.log_size()
    c = h.MllpClient(cmsd.port, ctx, session=session, handshake=False)
    with c:
        try:
            c.sock.do_handshake()
        except OSError:
            pass  # refused during the handshake: fine
        else:
            assert c.sock.session_reused, "cmsd did not resume the TLS session"
            cid2 = h.unique("RES")
            try:
                c.send(h.pcd01(TO_REVOKE, cid2, patient=h.unique("PT")))
                f = c.recv_frame(20)
                pytest.fail("revoked device on a resumed session got an answer: %r" % f)
            except h.Closed:
                pass
            assert db.message_count(TO_REVOKE, cid2) == 0
    h.assert_refusal_logged(cmsd, c.local_port, r"(?i)revoked|not active|inactive", since)
    h.good_client_still_served(cmsd, pki)


def test_last_seen_recorded(cmsd, db, connect):
    with connect(cmsd.port, "MON-0002") as c:
        ack = c.request(h.pcd01("MON-0002", h.unique("SEEN"), patient=h.unique("PT")))
        assert ack.code == "AA", ack
        local = c.local_port
    # "last seen" is written in batches, about once a second (sql/006)
    deadline = time.monotonic() + 10
    while True:
        seen, peer, age = db.query("SELECT last_seen_at, last_peer, now() - last_seen_at "
                                   "FROM cms.devices WHERE serial = 'MON-0002'")[0]
        if (peer and peer.endswith(":%d" % local)) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert seen is not None and age.total_seconds() < 60, (seen, age)
    assert peer and peer.endswith(":%d" % local), "last_peer %r, expected our port %d" % (
        peer, local)
