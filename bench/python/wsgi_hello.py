"""The plain WSGI app of `make bench-python` (bench/python.py): a PEP 3333 callable and
nothing else, so that a server's own cost shows without a framework's.

  GET /             `Hello, World!` with Content-Length
  GET /sleep/<s>    time.sleep(s), then `slept`
  GET /spin/<s>     pure Python for s seconds, then `spun`
  anything else     404
"""

import time

HELLO = b"Hello, World!"


def _answer(start_response, status, body):
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _seconds(path, prefix):
    """The float after `prefix` in `path`, or None when it is not one."""
    try:
        seconds = float(path[len(prefix):])
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/":
        return _answer(start_response, "200 OK", HELLO)
    if path.startswith("/sleep/"):
        seconds = _seconds(path, "/sleep/")
        if seconds is not None:
            time.sleep(seconds)
            return _answer(start_response, "200 OK", b"slept")
    elif path.startswith("/spin/"):
        seconds = _seconds(path, "/spin/")
        if seconds is not None:
            deadline = time.perf_counter() + seconds
            turns = 0
            while time.perf_counter() < deadline:
                turns += 1
            return _answer(start_response, "200 OK", f"spun {turns}".encode())
    return _answer(start_response, "404 Not Found", b"not found")
