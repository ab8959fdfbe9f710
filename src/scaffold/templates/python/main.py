"""@NAME@: a microservice-rust app in Python (plain WSGI, PEP 3333).

* GET /               a greeting: the config's `greeting` key; ?name= says to whom
* GET /json           {"requests": N}
* GET /slow?seconds=S answers after S seconds (default 2): try it against the production
                      config's request_timeout_s (the sleep ends at the deadline)
* /healthz            asks health() below
"""

import itertools
import json
import time
from urllib.parse import parse_qs

import microservice_rust

GREETING = microservice_rust.config.get("greeting") or "Hello"
REQUESTS = itertools.count(1)
MAX_SLOW_S = 60.0


def app(environ, start_response):
    served = next(REQUESTS)
    method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path not in ("/", "/json", "/slow"):
        return answer(start_response, "404 Not Found", "not found\n")
    if method != "GET":
        return answer(start_response, "405 Method Not Allowed", "method not allowed\n")
    if path == "/":
        name = query.get("name", ["world"])[0]
        return answer(start_response, "200 OK", f"{GREETING}, {name}!\n")
    if path == "/json":
        body = json.dumps({"requests": served}) + "\n"
        return answer(start_response, "200 OK", body, "application/json")
    try:
        seconds = min(max(float(query.get("seconds", ["2"])[0]), 0.0), MAX_SLOW_S)
    except ValueError:
        seconds = 2.0
    time.sleep(seconds)
    return answer(start_response, "200 OK", f"slept {seconds} s\n")


def answer(start_response, status, text, kind="text/plain; charset=utf-8"):
    body = text.encode()
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


def health():
    """Asked by /healthz (and the watchdog): False or an exception answers 503."""
    return True
