"""The Flask app of `make bench-python` (bench/python.py): the same app under every server.

  GET /             `OK`, text/plain
  GET /json         a small JSON object
  GET /sleep/<s>    time.sleep(s), then `slept` (a handler blocked in C: the GIL is free)
  GET /spin/<s>     pure Python for s seconds, then `spun` (a handler holding the GIL)

`application` is the WSGI callable (mod_wsgi's name); `app` is the same object (Flask's).
"""

import time

from flask import Flask, Response, jsonify

app = Flask(__name__)
application = app


@app.get("/")
def index():
    return Response("OK", mimetype="text/plain")


@app.get("/json")
def json():
    return jsonify(message="Hello, World!", ok=True, count=3)


# Werkzeug's float converter takes `30.0` but not `30`: the int rule beside it takes `30`.
@app.get("/sleep/<float:seconds>")
@app.get("/sleep/<int:seconds>")
def sleep(seconds):
    time.sleep(seconds)
    return Response("slept", mimetype="text/plain")


@app.get("/spin/<float:seconds>")
@app.get("/spin/<int:seconds>")
def spin(seconds):
    deadline = time.perf_counter() + seconds
    turns = 0
    while time.perf_counter() < deadline:
        turns += 1
    return Response(f"spun {turns}", mimetype="text/plain")
