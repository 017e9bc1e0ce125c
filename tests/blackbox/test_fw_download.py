"""Image downloads: HEAD, Range/206 (first-last, open, suffix), 416 past the
end, If-Range with another tag (whole image), a stalled reader cut after
write_timeout_ms and a slow one after fw_download_timeout_s (both logged and
audited as fw_download_aborted), and a 64 MiB image streamed with flat
memory (cmsd's RSS) at a measured throughput."""

import hashlib
import os
import socket
import ssl
import time

import pytest

import helpers as h
from fw_helpers import *  # noqa: F401,F403
from fw_helpers import (stop_checked, approve, curl_device, device_ctx, device_request, fw_dir, get_manifest,
                        https_port, import_release, make_image, manifest_parts, new_device,
                        offer, sign_release, start_fw_cmsd, unique_model, wait_audit)


def test_head_and_ranges(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db, size=700001)
    path, data = o.body["target"]["download"], o.rel.data
    etag = '"sha256-%s"' % o.rel.sha256
    st, hd, body = device_request(fw_cmsd, pki, o.serial, "HEAD", path)
    assert st == 200 and body == b"" and int(hd["content-length"]) == len(data)
    assert hd["etag"] == etag and hd["accept-ranges"] == "bytes"
    st, hd, body = device_request(fw_cmsd, pki, o.serial, "GET", path,
                                  headers={"Range": "bytes=10-262200"})
    assert st == 206 and body == data[10:262201]
    assert hd["content-range"] == "bytes 10-262200/%d" % len(data)
    st, hd, body = device_request(fw_cmsd, pki, o.serial, "GET", path,
                                  headers={"Range": "bytes=-1000"})
    assert st == 206 and body == data[-1000:]
    st, hd, body = device_request(fw_cmsd, pki, o.serial, "GET", path,
                                  headers={"Range": "bytes=%d-" % len(data)})
    assert st == 416 and hd["content-range"] == "bytes */%d" % len(data)
    st, hd, body = device_request(fw_cmsd, pki, o.serial, "GET", path,
                                  headers={"Range": "bytes=5-9", "If-Range": '"sha256-00"'})
    assert st == 200 and body == data, "another validator: the whole image"
    st, hd, body = device_request(fw_cmsd, pki, o.serial, "GET", path,
                                  headers={"Range": "bytes=5-9", "If-Range": etag})
    assert st == 206 and body == data[5:10]
    # Several requests on one keep-alive connection, as a resuming device does.
    import http.client
    conn = http.client.HTTPSConnection("localhost", https_port(fw_cmsd), timeout=30,
                                       context=device_ctx(pki, o.serial))
    got = b""
    for first in range(0, len(data), 300000):
        conn.request("GET", path, headers={"Range": "bytes=%d-%d" % (first, first + 299999)})
        r = conn.getresponse()
        assert r.status == 206
        got += r.read()
    conn.close()
    assert got == data


def open_download(c, pki, serial, path, rcvbuf=4096):
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.connect(("127.0.0.1", https_port(c)))
    s = device_ctx(pki, serial).wrap_socket(raw, server_hostname="localhost")
    s.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path).encode())
    return s


def drain(s, timeout=30):
    s.settimeout(timeout)
    n = 0
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            n += len(b)
    except (ssl.SSLError, OSError):
        pass
    return n


def test_stalled_download_times_out(pki, db, fw_devices):
    c = start_fw_cmsd(pki, db, "cmsd-fw-stall", write_timeout_ms=1500)
    try:
        o = offer(c, pki, db, size=12 * 1024 * 1024)
        a0 = db.max_audit_id()
        since = c.log_size()
        s = open_download(c, pki, o.serial, o.body["target"]["download"])
        t0 = time.monotonic()
        # cut by the net layer's write_timeout_ms or the firmware's own stall check
        c.wait_log(r"event=fw_download_aborted.*(stalled|write_timeout_ms)", since, timeout=30)
        assert time.monotonic() - t0 < 20
        rows = wait_audit(db, a0, "fw_download_aborted", lambda r: r["device"] == o.serial)
        assert '"expected": %d' % len(o.rel.data) in rows[-1]["detail"]
        got = drain(s)
        s.close()
        assert got < len(o.rel.data), "a stalled reader does not get the whole image"
    finally:
        stop_checked(c)


def test_slow_download_cut_after_fw_download_timeout(pki, db, fw_devices):
    c = start_fw_cmsd(pki, db, "cmsd-fw-slow", fw_download_timeout_s=2)
    try:
        o = offer(c, pki, db, size=8 * 1024 * 1024)
        a0 = db.max_audit_id()
        since = c.log_size()
        s = open_download(c, pki, o.serial, o.body["target"]["download"])
        s.settimeout(10)
        got, t0 = 0, time.monotonic()
        try:
            while time.monotonic() - t0 < 6:
                b = s.recv(16384)  # ~160 KB/s: 8 MiB would take ~50 s
                if not b:
                    break
                got += len(b)
                time.sleep(0.1)
        except (ssl.SSLError, OSError):
            pass
        s.close()
        assert got < len(o.rel.data)
        line = c.wait_log(r"event=fw_download_aborted.*fw_download_timeout_s", since)
        assert "after" in line
        rows = wait_audit(db, a0, "fw_download_aborted", lambda r: r["device"] == o.serial)
        assert "fw_download_timeout_s" in rows[-1]["detail"]
    finally:
        stop_checked(c)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_64mib_download_flat_memory(fw_cmsd, pki, db):
    size = 64 * 1024 * 1024
    t0 = time.monotonic()
    o = offer(fw_cmsd, pki, db, size=size)  # sign, import (upload + verify + store), approve
    t_import = time.monotonic() - t0
    path = o.body["target"]["download"]
    # First download builds and verifies the cache from the database.
    out = fw_dir() / "big.bin"
    t0 = time.monotonic()
    code, _ = curl_device(fw_cmsd, pki, o.serial, path, out)
    t_first = time.monotonic() - t0
    assert code == 200 and os.path.getsize(out) == size
    base = rss_kb(fw_cmsd.pid)
    peak = base
    # Second download (cache verified): sample cmsd's RSS while it streams.
    import threading
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kb(fw_cmsd.pid))
            time.sleep(0.01)
    t = threading.Thread(target=sample)
    t.start()
    t0 = time.monotonic()
    code, _ = curl_device(fw_cmsd, pki, o.serial, path, out)
    t_second = time.monotonic() - t0
    done.set()
    t.join()
    assert code == 200
    with open(out, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == o.rel.sha256
    grow = peak - base
    print("\n64 MiB image: signed, imported and approved in %.2f s" % t_import)
    print("64 MiB download: first (from the database) %.2f s = %.0f MiB/s, cached %.2f s = "
          "%.0f MiB/s; cmsd RSS %d MiB, +%d KiB during the download"
          % (t_first, 64 / t_first, t_second, 64 / t_second, base // 1024, grow))
    if "asan" in str(h.BUILD):
        return  # ASan's quarantine keeps freed TLS buffers resident: RSS says nothing here
    assert grow < 16 * 1024, "cmsd's memory grew by %d KiB while streaming 64 MiB" % grow


def test_two_instances_serve_the_same_bytes(fw_cmsd, pki, db):
    """Images live in PostgreSQL: a second cmsd (own cache directory) serves the
    same verified bytes, and the device's manifest counter keeps growing across
    both instances."""
    o = offer(fw_cmsd, pki, db, size=1500000)
    c2 = start_fw_cmsd(pki, db, "cmsd-fw-second")
    try:
        st, _, body = device_request(c2, pki, o.serial, "GET", o.body["target"]["download"])
        assert st == 200 and hashlib.sha256(body).hexdigest() == o.rel.sha256
        st, _, doc = get_manifest(c2, pki, o.serial, "1.0.0")
        assert st == 200
        assert manifest_parts(doc)[2]["manifest_counter"] == o.body["manifest_counter"] + 1
        st, _, doc = get_manifest(fw_cmsd, pki, o.serial, "1.0.0")
        assert manifest_parts(doc)[2]["manifest_counter"] == o.body["manifest_counter"] + 2
    finally:
        stop_checked(c2)


def test_download_of_a_cache_file_not_in_memory(fw_cmsd, pki, db):
    """cmsd reads a cached image on its loop only while the page cache holds the
    block (preadv2 RWF_NOWAIT), else on the thread pool: evicted from memory,
    the file is served the same, whole and in ranges."""
    o = offer(fw_cmsd, pki, db, size=3 * 262144 + 12345)
    path, data = o.body["target"]["download"], o.rel.data
    st, _, body = device_request(fw_cmsd, pki, o.serial, "GET", path)  # makes the cache file
    assert st == 200 and body == data
    cache = fw_dir() / ("cache-" + fw_cmsd.name) / o.rel.sha256
    with open(cache, "rb") as f:
        os.fsync(f.fileno())  # dirty pages stay in memory
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            os.preadv(f.fileno(), [bytearray(4096)], 262144, os.RWF_NOWAIT)
            pytest.skip("this file system keeps the file in memory (tmpfs?)")
        except BlockingIOError:
            pass  # evicted: cmsd must take the thread pool
    st, _, body = device_request(fw_cmsd, pki, o.serial, "GET", path)
    assert st == 200 and body == data
    with open(cache, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    st, hd, body = device_request(fw_cmsd, pki, o.serial, "GET", path,
                                  headers={"Range": "bytes=262000-600000"})
    assert st == 206 and body == data[262000:600001]
