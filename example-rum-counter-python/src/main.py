"""The example app in Python: the rum counter of Armada's Flask image, served unchanged by
microservice-rust's Python host (the same routes and configs as example-rum-counter/).

* GET /                      OK
* POST /drink/<user>/<count> counts `count` rums for `user`; past the config's rums_limit
                             the drink is refused with 403 and a warning in the log, and
                             /metrics counts rums_drunk_total{user="..."}
* GET /report                every user's count as JSON
* GET /delay/<n>             sleeps n seconds (fractions allowed), answers rnd=<number>;
                             stops early when the client left (the deadline ends the sleep
                             on its own)
* GET /stream/<n>            n Server-Sent Events 100 ms apart, each sent as it is made
* GET /leak/<mb>             leaks mb MiB on purpose: try it with max_worker_memory_mb
"""

import json
import logging
import random
import threading
import time

from flask import Flask, Response, jsonify

import microservice_rust

app = Flask(__name__)
log = logging.getLogger("rum-counter")

RUMS_LIMIT = microservice_rust.config.get("rums_limit", 2)
MAX_DELAY_S = 3600.0
MAX_EVENTS = 10_000
MAX_LEAK_MB = 1024
DELAY_SLICE_S = 0.02

drunk = {}
drunk_lock = threading.Lock()
leaked = []
rums = microservice_rust.counter("rums_drunk_total", "Rums drunk, by user.", ["user"])


def text(body, status=200):
    return Response(body, status=status, mimetype="text/plain")


@app.get("/")
def index():
    return text("OK")


@app.post("/drink/<user>/<count>")
def drink(user, count):
    if not count.isdigit():
        return text(f"count must be a whole number, got {count!r}\n", 400)
    count = int(count)
    with drunk_lock:
        so_far = drunk.get(user, 0)
        if so_far + count > RUMS_LIMIT:
            log.warning(
                "refused %d rum(s) to %s: %d drunk, the limit is %d",
                count, user, so_far, RUMS_LIMIT,
            )
            answer = {"error": f"{user} has had enough", "drunk": so_far, "rums_limit": RUMS_LIMIT}
            return jsonify(answer), 403
        drunk[user] = so_far + count
    rums.inc(by=count, labels=[user])
    log.debug("%s drank %d rum(s), %d in all", user, count, so_far + count)
    return jsonify(user=user, drunk=so_far + count)


@app.get("/report")
def report():
    with drunk_lock:
        users = dict(sorted(drunk.items()))
    return jsonify(rums_limit=RUMS_LIMIT, total=sum(users.values()), users=users)


@app.get("/delay/<seconds>")
def delay(seconds):
    try:
        seconds = float(seconds)
    except ValueError:
        seconds = -1
    if not 0 <= seconds <= MAX_DELAY_S:
        return text(f"delay must be a number of seconds from 0 to {MAX_DELAY_S:g}\n", 400)
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        if microservice_rust.cancelled():
            return text("cancelled\n", 503)
        time.sleep(min(left, DELAY_SLICE_S))
    return text(f"slept {seconds:g}s rnd={random.getrandbits(63)}\n")


@app.get("/stream/<count>")
def stream(count):
    if not count.isdigit() or int(count) > MAX_EVENTS:
        return text(f"stream takes a whole number of events from 0 to {MAX_EVENTS}\n", 400)
    count = int(count)

    def events():
        for n in range(1, count + 1):
            time.sleep(0.1)
            data = json.dumps({"event": n, "of": count}, separators=(",", ":"))
            yield f"event: tick\nid: {n}\ndata: {data}\n\n"

    return Response(events(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


@app.get("/leak/<mb>")
def leak(mb):
    if not mb.isdigit() or int(mb) > MAX_LEAK_MB:
        return text(f"leak must be a whole number of MiB from 0 to {MAX_LEAK_MB}\n", 400)
    leaked.append(bytearray(b"\1" * (int(mb) << 20)))
    return text(f"leaked {mb} MiB\n")
