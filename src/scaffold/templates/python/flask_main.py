"""@NAME@: a microservice-rust app in Python, with Flask.

* GET /               a greeting: the config's `greeting` key; ?name= says to whom
* GET /json           {"requests": N}
* GET /slow?seconds=S answers after S seconds (default 2): try it against the production
                      config's request_timeout_s (the sleep ends at the deadline)
* /healthz            asks health() below
"""

import itertools
import json
import time

from flask import Flask, request

import microservice_rust

app = Flask(__name__)
GREETING = microservice_rust.config.get("greeting") or "Hello"
REQUESTS = itertools.count(1)
MAX_SLOW_S = 60.0


@app.get("/")
def hello():
    next(REQUESTS)
    name = request.args.get("name", "world")
    return f"{GREETING}, {name}!\n", 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.get("/json")
def counted():
    body = json.dumps({"requests": next(REQUESTS)}) + "\n"
    return app.response_class(body, mimetype="application/json")


@app.get("/slow")
def slow():
    next(REQUESTS)
    seconds = min(max(request.args.get("seconds", 2.0, type=float), 0.0), MAX_SLOW_S)
    time.sleep(seconds)
    return f"slept {seconds} s\n", 200, {"Content-Type": "text/plain; charset=utf-8"}


def health():
    """Asked by /healthz (and the watchdog): False or an exception answers 503."""
    return True
