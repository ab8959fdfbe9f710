#!/usr/bin/env python3
"""Slowloris: many connections that trickle their request heads, and fresh requests beside
them. Part of `make bench` (bench/run.py calls `measure`); also runs alone:

    python3 bench/slowloris.py PORT            # attack a running server and probe it

The attack and the probe run as processes of their own (this file with `attack` or
`probe`), so neither waits for the other's interpreter lock, and each prints JSON.

Attack: CONNECTIONS connections (default 10,000) each send a request line and then one
header line every DRIP seconds (default 1), never ending the head; one the server closes
is opened again at once, so the pressure stays. Probe: a fresh connection with
`GET /` every 20 ms, each answer timed.
"""

import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time

CONNECTIONS = int(os.environ.get("SLOWLORIS_CONNECTIONS", "10000"))
DRIP = float(os.environ.get("SLOWLORIS_DRIP", "1.0"))
STEADY = float(os.environ.get("SLOWLORIS_SECONDS", "30"))


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in ((131072, 131072), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, wanted)
            return
        except (ValueError, OSError):
            pass


def attack(port, connections, seconds):
    """Keeps `connections` trickling heads open for `seconds` after the ramp-up."""
    raise_fd_limit()
    selector = selectors.DefaultSelector()
    open_at = {}
    next_drip = {}
    lifetimes, answers, refused = [], {}, 0

    def open_one():
        nonlocal refused
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: slow\r\n")
        except OSError:
            refused += 1
            s.close()
            return
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
        now = time.monotonic()
        open_at[s] = now
        next_drip[s] = now + DRIP * (len(open_at) % 100) / 100

    def closed(s, data):
        lifetimes.append(time.monotonic() - open_at.pop(s))
        next_drip.pop(s, None)
        selector.unregister(s)
        s.close()
        status = data[9:12].decode(errors="replace") if data.startswith(b"HTTP/") else "none"
        answers[status] = answers.get(status, 0) + 1

    ramp_started = time.monotonic()
    for _ in range(connections):
        open_one()
    ramp = time.monotonic() - ramp_started
    print(json.dumps({"ready": len(open_at), "ramp_s": round(ramp, 2)}), flush=True)
    least_open, deadline = len(open_at), time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.01):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            closed(s, data)
            open_one()
        now = time.monotonic()
        for s in [s for s, due in next_drip.items() if due <= now]:
            try:
                s.send(b"X-Slow: 1\r\n")
                next_drip[s] = now + DRIP
            except OSError:
                closed(s, b"")
                open_one()
        least_open = min(least_open, len(open_at))
    print(json.dumps({
        "open_at_end": len(open_at),
        "least_open": least_open,
        "closed_by_server": len(lifetimes),
        "answers": answers,
        "connect_failures": refused,
        "lifetime_s": {
            "median": round(statistics.median(lifetimes), 2) if lifetimes else None,
            "max": round(max(lifetimes), 2) if lifetimes else None,
        },
    }), flush=True)


def probe(port, seconds):
    """A fresh connection with `GET /` every 20 ms; prints the latencies and failures."""
    latencies, failures = [], []
    deadline = time.monotonic() + seconds
    request = b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request)
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                failures.append(data[:40].decode(errors="replace"))
            else:
                latencies.append((time.monotonic() - started) * 1000)
        except OSError as e:
            failures.append(str(e))
        time.sleep(max(0.0, 0.02 - (time.monotonic() - started)))
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)
    print(json.dumps({
        "requests": len(latencies) + len(failures),
        "failures": len(failures),
        "failure_examples": failures[:3],
        "p50_ms": pick(0.50) if latencies else None,
        "p99_ms": pick(0.99) if latencies else None,
        "max_ms": round(latencies[-1], 2) if latencies else None,
    }), flush=True)


def idle_lifetime(port):
    """How long a connection that sends nothing stays open."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        started = time.monotonic()
        try:
            s.recv(1)
        except OSError:
            pass
        return round(time.monotonic() - started, 2)


def process_figures(pid):
    """Threads, resident memory (KiB) and open fds of one process."""
    figures = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Threads", "VmRSS"):
                    figures[key] = int(value.split()[0])
        figures["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return figures


def measure(port, worker_pid, connections=CONNECTIONS, seconds=STEADY):
    """Runs the attack and, once every connection is open, the probe; samples the worker
    every second. Returns everything as a dict."""
    me = os.path.abspath(__file__)
    attacker = subprocess.Popen([sys.executable, me, "attack", str(port), str(connections),
                                 str(seconds + 2)], stdout=subprocess.PIPE, text=True)
    ready = json.loads(attacker.stdout.readline())
    prober = subprocess.Popen([sys.executable, me, "probe", str(port), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    peak = {}
    idle = None
    started = time.monotonic()
    while prober.poll() is None:
        for key, value in process_figures(worker_pid).items():
            peak[key] = max(peak.get(key, 0), value)
        if idle is None and time.monotonic() - started > 1:
            idle = idle_lifetime(port)
        time.sleep(1)
    probed = json.loads(prober.stdout.read())
    attacked = json.loads(attacker.stdout.readline())
    attacker.wait()
    return {"ready": ready, "attack": attacked, "probe": probed, "worker_peak": peak,
            "idle_lifetime_s": idle}


def main():
    if sys.argv[1] == "attack":
        attack(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    elif sys.argv[1] == "probe":
        probe(int(sys.argv[2]), float(sys.argv[3]))
    else:
        raise_fd_limit()
        port = int(sys.argv[1])
        pid = int(sys.argv[2]) if len(sys.argv) > 2 else os.getpid()
        print(json.dumps(measure(port, pid), indent=2))


if __name__ == "__main__":
    main()
