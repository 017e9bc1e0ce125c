"""events_batch_ms: how long a worker gathers live events before it writes them to its
streams (README, etc/cmsd.conf.example).

  - with 800 ms, an event reaches the stream no sooner than about that long after the hub
    published it (its published_us), and the events of messages acknowledged meanwhile come
    in the same write, right after it;
  - with 0, every commit is written at once: the event arrives well within that time.
"""

import json
import time

import pytest

import admin_helpers as ah
import helpers as h
from test_console_events import DEVICE, Sse, message

pytest_plugins = ["admin_helpers"]


@pytest.fixture(params=[0, 800], ids=["at-once", "800ms"])
def bcmsd(request, pki, db):
    cfg = ah.api_config(pki, db)
    cfg["events_batch_ms"] = str(request.param)
    c = h.Cmsd("cmsd-events-batch-%d" % request.param, cfg)
    c.start()
    yield c, request.param
    ah.stop_checked(c)


def arrival(sse):
    """The next event and the wall-clock time it was parsed (seconds)."""
    ev = sse.next_event(5.0)
    assert ev is not None, "no event within 5 s"
    return ev, time.time()


def test_events_wait_batch_ms_then_go_together(bcmsd, pki):
    c, batch_ms = bcmsd
    port = int(c.cfg["mllp_listen"].rsplit(":", 1)[1])
    sse = Sse(c, pki)
    assert sse.next_event(0.5) is None  # live from now: nothing old
    t0 = time.monotonic()
    with h.device_client(pki, port, DEVICE) as m:
        for i in range(3):
            assert m.request(message(i, 70 + i)).code == "AA"
    acked_within = time.monotonic() - t0
    got = [arrival(sse) for _ in range(3)]
    sse.close()
    values = [json.loads(ev["data"])["observations"][-1]["value"] for ev, _ in got]
    assert values == ["70", "71", "72"], values
    first, t_first = got[0]
    waited = t_first - json.loads(first["data"])["published_us"] / 1e6
    if batch_ms == 0:
        assert waited < 0.6, "written at once, yet %.3f s after publication" % waited
        return
    # The worker's timer starts at the wake-up that follows the publication: the event
    # cannot be written sooner (a margin for the loop's cached clock).
    assert waited >= 0.6, "events_batch_ms = 800, yet written %.3f s after publication" % waited
    if acked_within < 0.4:
        # all three published within the first batch: one write carried them
        assert got[2][1] - t_first < 0.2, [t for _, t in got]
