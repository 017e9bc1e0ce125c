"""Many streams on one worker: a batch is written EVENTS_FLUSH_SUBS (32) streams per loop
turn, the rest on the following turns (include/events.h). With 200 streams on a single
worker, events published while a batch is being written, and streams closing in the middle:

  - every stream still open gets every event exactly once, in id order (the streams written
    before an event came get it in the next batch);
  - the monitor's messages are all acknowledged AA meanwhile;
  - the closed streams are counted out (cmsd_sse_clients: the open ones).
"""

import json
import time

import pytest

import admin_helpers as ah
import helpers as h
from test_console_events import DEVICE, Sse, message, metric

pytest_plugins = ["admin_helpers"]

STREAMS = 200  # > 6 turns of 32
CLOSED = 20  # closed after the first messages, while batches are being written
MESSAGES = 20


@pytest.fixture
def mcmsd(pki, db):
    cfg = ah.api_config(pki, db)
    cfg["workers"] = "1"  # every stream and the monitor on one loop
    cfg["max_connections"] = "400"  # the streams, the monitor and curl
    cfg["events_batch_ms"] = "0"  # a batch per commit: publications overlap the writing
    c = h.Cmsd("cmsd-events-many", cfg)
    c.start()
    yield c
    ah.stop_checked(c)


def test_every_stream_gets_every_event_once_when_written_in_turns(mcmsd, pki):
    c = mcmsd
    port = int(c.cfg["mllp_listen"].rsplit(":", 1)[1])
    streams = [Sse(c, pki) for _ in range(STREAMS)]
    deadline = time.monotonic() + 20
    for s in streams:  # every stream answered (200 and its head) before the load
        while s.head is None:
            assert s.next_event(0.05) is None and not s.closed
            assert time.monotonic() < deadline, "a stream got no answer"
    assert metric(c, pki, "cmsd_sse_clients") == STREAMS

    # Sent back to back without waiting for the ACKs: commits follow each other while
    # batches are still being written.
    sent = []
    with h.device_client(pki, port, DEVICE) as m:
        for i in range(3):
            assert m.request(message(i, 60 + i)).code == "AA"
            sent.append(str(60 + i))
        for s in streams[40:40 + CLOSED]:  # the middle of the list, mid-stream
            s.close()
        for i in range(3, MESSAGES):
            m.send(message(i, 60 + i))
            sent.append(str(60 + i))
        for i in range(3, MESSAGES):
            assert m.recv_ack().code == "AA"
    open_streams = streams[:40] + streams[40 + CLOSED:]

    for k, s in enumerate(open_streams):
        got = []
        while len(got) < MESSAGES:
            ev = s.next_event(10.0)
            assert ev is not None, "stream %d: %d of %d events" % (k, len(got), MESSAGES)
            if ev["event"] == "vitals":
                got.append(ev)
        ids = [int(ev["id"]) for ev in got]
        assert ids == sorted(set(ids)), "stream %d: ids %s" % (k, ids)
        values = [json.loads(ev["data"])["observations"][-1]["value"] for ev in got]
        assert values == sent, "stream %d" % k
        assert s.next_event(0.05) is None  # nothing twice
    # The closed ones were written to since (a write to a closed socket fails): counted out.
    h.wait_until(lambda: metric(c, pki, "cmsd_sse_clients") == STREAMS - CLOSED, 10,
                 interval=0.1, what="the closed streams counted out")
    for s in open_streams:
        s.close()
