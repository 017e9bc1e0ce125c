#!/usr/bin/python3
"""holder.py - hold N mutual-TLS sessions open against one server (`make bench` P3).

    holder.py --port P --pki DIR --devices N --proto mllp|mqtt [--first 1] [--concurrency 200]

Each session uses its own device certificate (DIR/devices/MON-%04d.crt, key beside it)
and, once the TLS handshake is done, behaves like an idle client of that protocol:

  mllp  sends one small PCD-01 ORU^R01 (one observation) and waits for its ACK (MSA|AA):
        the session has then been through the device check and the ingest path, as a
        real monitor's would;
  mqtt  sends an MQTT 3.1.1 CONNECT (client id = serial, keepalive 0 = never expires,
        clean session) and waits for CONNACK (return code 0).

When every session is up (or failed), prints one JSON line on stdout
({"open": n, "failed": f, "seconds": s, "errors": {...}}) and then holds the sessions
until stdin reaches EOF or SIGTERM. The client verifies the server (ca.pem, name
localhost). RLIMIT_NOFILE is raised to its hard limit.
"""

import argparse
import asyncio
import collections
import json
import os
import resource
import signal
import ssl
import sys
import time

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def pcd01(serial, n):
    ts = time.strftime("%Y%m%d%H%M%S+0000", time.gmtime())
    ctl = "%s-H%06d" % (serial, n)
    segs = [
        "MSH|^~\\&|%s^%s^L|Bench|CMS|CMS|%s||ORU^R01^ORU_R01|%s|P|2.6|||NE|AL" % (
            serial, serial, ts, ctl),
        "PID|||MRN-%s^^^GENERAL HOSPITAL^MR" % serial,
        "OBR|1|%s^%s|%s^%s|182777000^monitoring of patient^SCT|||%s" % (
            ctl, serial, ctl, serial, ts),
        "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.5.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC"
        "|||||R|||%s" % ts,
    ]
    return VT + ("\r".join(segs) + "\r").encode() + FS + CR


def mqtt_connect(client_id):
    cid = client_id.encode()
    var = b"\x00\x04MQTT" + bytes([4, 0x02]) + (0).to_bytes(2, "big")  # clean session, ka 0
    payload = len(cid).to_bytes(2, "big") + cid
    body = var + payload
    n, rem = len(body), b""
    while True:
        d = n % 128
        n //= 128
        rem += bytes([d | (0x80 if n else 0)])
        if not n:
            break
    return b"\x10" + rem + body


async def open_one(args, i, sem, held, errors):
    serial = "%s%04d" % (args.prefix, i)
    crt = os.path.join(args.pki, "devices", serial + ".crt")
    key = os.path.join(args.pki, "devices", serial + ".key")
    async with sem:
        try:
            ctx = ssl.create_default_context(cafile=os.path.join(args.pki, "ca.pem"))
            ctx.load_cert_chain(crt, key)
            r, w = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, ssl=ctx,
                                        server_hostname="localhost"), args.timeout)
            if args.proto == "mllp" and args.no_message:
                pass  # TLS session only (the device check runs in the background)
            elif args.proto == "mllp":
                w.write(pcd01(serial, 1))
                await w.drain()
                ack = await asyncio.wait_for(r.readuntil(FS + CR), args.timeout)
                if b"MSA|AA|" not in ack:
                    raise RuntimeError("no AA: " + ack[:80].decode(errors="replace"))
            else:
                w.write(mqtt_connect(serial))
                await w.drain()
                ca = await asyncio.wait_for(r.readexactly(4), args.timeout)
                if ca[0] != 0x20 or ca[3] != 0:
                    raise RuntimeError("CONNACK refused: %r" % ca)
            held.append((r, w))
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors[type(e).__name__ + ": " + str(e)[:60]] += 1


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pki", required=True)
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--prefix", default="MON-")
    ap.add_argument("--proto", choices=("mllp", "mqtt"), required=True)
    ap.add_argument("--no-message", action="store_true",
                    help="mllp: hold the TLS session without sending a message")
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    held, errors = [], collections.Counter()
    sem = asyncio.Semaphore(args.concurrency)
    t0 = time.monotonic()
    await asyncio.gather(*(open_one(args, i, sem, held, errors)
                           for i in range(args.first, args.first + args.devices)))
    el = time.monotonic() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"open": len(held), "failed": sum(errors.values()), "seconds": round(el, 2),
                      "client_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                      "errors": dict(errors.most_common(5))}), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(0, 4096) else None)
    await stop.wait()
    for _, w in held:
        w.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
