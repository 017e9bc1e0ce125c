"""An image altered where it is stored is never served: chunks changed in
PostgreSQL (before or after a copy was cached) are refused with 500
image_integrity, logged and audited (fw_image_tampered); a cache file changed
on disk is noticed, audited (fw_cache_tampered), rebuilt from the database and
the device gets the genuine bytes."""

import hashlib
import os
import socket
import ssl
import time

import helpers as h
from fw_helpers import *  # noqa: F401,F403
from fw_helpers import device_ctx, device_request, https_port, offer, wait_audit


def flip_chunk(db, sha, seq=0, pos=100):
    db.execute("UPDATE cms.fw_image_chunks SET data = overlay(data placing "
               "decode(lpad(to_hex(get_byte(data, %s) # 255), 2, '0'), 'hex') from %s for 1) "
               "WHERE sha256 = decode(%s, 'hex') AND seq = %s", (pos, pos + 1, sha, seq))


def test_database_chunk_altered_before_first_download(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db, size=1500000)
    sha = o.rel.sha256
    flip_chunk(db, sha, seq=1)
    a0 = db.max_audit_id()
    since = fw_cmsd.log_size()
    st, _, body = device_request(fw_cmsd, pki, o.serial, "GET", o.body["target"]["download"])
    assert st == 500 and b"image_integrity" in body, (st, body[:200])
    rows = wait_audit(db, a0, "fw_image_tampered")
    assert sha in rows[-1]["detail"]
    fw_cmsd.wait_log(r"level=error event=fw_image_tampered", since)


def test_database_chunk_altered_after_caching(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db, size=600000)
    path = o.body["target"]["download"]
    st, _, body = device_request(fw_cmsd, pki, o.serial, "GET", path)
    assert st == 200 and hashlib.sha256(body).hexdigest() == o.rel.sha256
    flip_chunk(db, o.rel.sha256, seq=0)
    a0 = db.max_audit_id()
    st, _, body = device_request(fw_cmsd, pki, o.serial, "GET", path)
    assert st == 500, "the stored bytes changed: they must be verified again and refused"
    wait_audit(db, a0, "fw_image_tampered")
    # Restored: served again.
    flip_chunk(db, o.rel.sha256, seq=0)
    st, _, body = device_request(fw_cmsd, pki, o.serial, "GET", path)
    assert st == 200 and hashlib.sha256(body).hexdigest() == o.rel.sha256


def test_cache_file_altered(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db, size=900000)
    path = o.body["target"]["download"]
    st, _, body = device_request(fw_cmsd, pki, o.serial, "GET", path)
    assert st == 200
    cache = os.path.join(fw_cmsd.cfg["fw_cache_dir"], o.rel.sha256)
    assert os.path.exists(cache)
    with open(cache, "r+b") as f:  # same size, one byte changed
        f.seek(300000)
        b = f.read(1)
        f.seek(300000)
        f.write(bytes([b[0] ^ 1]))
    a0 = db.max_audit_id()
    st, _, body = device_request(fw_cmsd, pki, o.serial, "GET", path,
                                 headers={"Range": "bytes=299990-300009"})
    assert st == 206 and body == o.rel.data[299990:300010], "genuine bytes, never the altered"
    wait_audit(db, a0, "fw_cache_tampered")
    with open(cache, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == o.rel.sha256, "rebuilt from the database"
    # A cache file replaced by another of a different size.
    with open(cache, "wb") as f:
        f.write(b"evil" * 1000)
    a1 = db.max_audit_id()
    st, _, body = device_request(fw_cmsd, pki, o.serial, "GET", path)
    assert st == 200 and hashlib.sha256(body).hexdigest() == o.rel.sha256
    wait_audit(db, a1, "fw_cache_tampered")


def test_cache_file_changed_during_download(fw_cmsd, pki, db):
    """While serving, each block read is followed by a check that the file is
    still the verified one: a change made mid-download cuts the transfer
    short, so the device gets a truncated body of genuine bytes, never
    altered ones, and the change is audited."""
    size = 16 << 20
    o = offer(fw_cmsd, pki, db, size=size)
    path = o.body["target"]["download"]
    st, _, body = device_request(fw_cmsd, pki, o.serial, "GET", path)  # builds the cache
    assert st == 200 and hashlib.sha256(body).hexdigest() == o.rel.sha256
    cache = os.path.join(fw_cmsd.cfg["fw_cache_dir"], o.rel.sha256)
    a0 = db.max_audit_id()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # a slow, small-windowed reader
    raw.settimeout(30)
    raw.connect(("127.0.0.1", https_port(fw_cmsd)))
    s = device_ctx(pki, o.serial).wrap_socket(raw, server_hostname="localhost")
    s.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path).encode())
    got = b""
    while len(got) < 200000:
        chunk = s.recv(65536)
        assert chunk, "closed early"
        got += chunk
    with open(cache, "r+b") as f:  # near the end, same size: the server has not read it yet
        f.seek(size - 1000)
        b = f.read(1)
        f.seek(size - 1000)
        f.write(bytes([b[0] ^ 1]))
    try:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += chunk
    except (OSError, ssl.SSLError):
        pass  # cut short: fine
    s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    assert len(body) < size, "the whole body was sent although the file changed"
    assert body == o.rel.data[:len(body)], "altered bytes were sent"
    wait_audit(db, a0, "fw_cache_tampered")

