"""A plain PEP 3333 app for the tests of the Python host (tests/python.rs).

  GET  /env                 the environ's str values and the types of the others, as JSON
  POST /echo                the body read three ways: read(n), readline(), readlines()
  POST /iterate             the body's lines, by iterating over wsgi.input
  GET  /write               start_response's write(), then the iterable
  GET  /stream/N            N chunks 100 ms apart, from a generator (Server-Sent Events)
  GET  /boom                raises before start_response
  GET  /boom-late           raises after its first chunk was sent
  GET  /exc-info            catches an error and starts a new answer with exc_info (500)
  GET  /file                the app's own source through wsgi.file_wrapper
  GET  /sleep/S             time.sleep(S)
  GET  /spin                while True: pass
  GET  /busy/S              pure Python for S seconds
  GET  /until-cancelled     loops until environ['microservice.cancelled']() is true
  GET  /closes              how many times close() was called on this app's iterables
  GET  /neighbour           a function of a module beside this file
  GET  /python              sys.prefix, sys.executable, the C extension modules' answers
  GET  /log                 print, logging, wsgi.errors and microservice_rust.log lines
  GET  /config              microservice_rust.config as JSON
  GET  /count/LABEL         counts in the app's metrics; /metrics shows them
  anything else             404
"""

import json
import logging
import sys
import time

import microservice_rust

import neighbour

COUNTS = microservice_rust.counter("py_hits_total", "Hits, by label.", ["label"])
SIZES = microservice_rust.histogram("py_sizes", "Sizes.", buckets=[1, 10, 100])
LEVEL = microservice_rust.gauge("py_level", "A level.")

CLOSES = {"count": 0, "cancelled_seen": 0}
log = logging.getLogger("wsgi_app")


class Closing:
    """An iterable whose close() is counted, around chunks or a generator."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.chunks)

    def close(self):
        CLOSES["count"] += 1


def text(start_response, body, status="200 OK", kind="text/plain"):
    body = body.encode() if isinstance(body, str) else body
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return Closing([body])


def app(environ, start_response):
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    parts = path.strip("/").split("/")
    if path == "/env":
        shown = {
            k: (v if isinstance(v, str) else type(v).__name__) for k, v in environ.items()
        }
        shown["wsgi.version"] = list(environ["wsgi.version"])
        for flag in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"):
            shown[flag] = environ[flag]
        shown["cancelled_now"] = environ["microservice.cancelled"]()
        shown["request_id_fn"] = microservice_rust.request_id()
        return text(start_response, json.dumps(shown), kind="application/json")
    if path == "/echo" and method == "POST":
        data = environ["wsgi.input"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        first = data.read(min(4, length))
        line = data.readline()
        lines = data.readlines()
        answer = {
            "first": first.decode("latin-1"),
            "line": line.decode("latin-1"),
            "lines": [l.decode("latin-1") for l in lines],
            "rest": data.read(10).decode("latin-1"),
            "content_type": environ.get("CONTENT_TYPE"),
            "content_length": environ.get("CONTENT_LENGTH"),
        }
        return text(start_response, json.dumps(answer), kind="application/json")
    if path == "/iterate" and method == "POST":
        lines = [line.decode("latin-1") for line in environ["wsgi.input"]]
        return text(start_response, json.dumps(lines), kind="application/json")
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return Closing([b"then ", b"iterated"])
    if parts[0] == "stream" and len(parts) == 2:
        count = int(parts[1])

        def events():
            for n in range(count):
                yield f"data: {n} {time.monotonic():.6f}\n\n".encode()
                time.sleep(0.1)

        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return Closing(events())
    if path == "/boom":
        raise ZeroDivisionError("the test app divides by zero")
    if path == "/boom-late":

        def failing():
            yield b"first chunk\n"
            raise RuntimeError("the test app fails half way")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing(failing())
    if path == "/exc-info":
        try:
            raise ValueError("caught by the app")
        except ValueError:
            start_response("200 OK", [("Content-Type", "text/plain")])
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "text/plain")],
                sys.exc_info(),
            )
            return Closing([b"replaced by exc_info"])
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 1024)
    if parts[0] == "sleep" and len(parts) == 2:
        try:
            time.sleep(float(parts[1]))
        except microservice_rust.DeadlineExceeded:
            CLOSES["cancelled_seen"] += 1
            raise
        return text(start_response, "slept")
    if path == "/spin":
        try:
            while True:
                pass
        finally:
            CLOSES["cancelled_seen"] += 1
    if parts[0] == "busy" and len(parts) == 2:
        until = time.monotonic() + float(parts[1])
        while time.monotonic() < until:
            pass
        return text(start_response, "busy")
    if path == "/until-cancelled":
        cancelled = environ["microservice.cancelled"]
        started = time.monotonic()
        while not cancelled() and time.monotonic() - started < 30:
            time.sleep(0.01)
        CLOSES["cancelled_seen"] += 1
        return text(start_response, "cancelled")
    if path == "/closes":
        return text(start_response, json.dumps(CLOSES), kind="application/json")
    if path == "/neighbour":
        return text(start_response, neighbour.greeting())
    if path == "/python":
        import ctypes
        import decimal
        import sqlite3

        answer = {
            "prefix": sys.prefix,
            "executable": sys.executable,
            "ctypes": ctypes.c_int(7).value,
            "decimal": str(decimal.Decimal("1.1") + decimal.Decimal("2.2")),
            "sqlite3": sqlite3.connect(":memory:").execute("select 40 + 2").fetchone()[0],
            "path0": sys.path[0],
        }
        return text(start_response, json.dumps(answer), kind="application/json")
    if path == "/log":
        print("printed by the app")
        print("no line end yet", end="")
        log.warning("a warning through logging")
        log.info("an info through logging")
        environ["wsgi.errors"].write("written to wsgi.errors\n")
        microservice_rust.info("through microservice_rust.info")
        return text(start_response, "logged")
    if path == "/config":
        return text(start_response, json.dumps(microservice_rust.config), kind="application/json")
    if parts[0] == "count" and len(parts) == 2:
        COUNTS.inc(labels=[parts[1]])
        COUNTS.inc(by=2, labels=[parts[1]])
        SIZES.observe(5)
        LEVEL.set(2.5)
        return text(start_response, "counted")
    return text(start_response, "not found\n", status="404 Not Found")
