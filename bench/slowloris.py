#!/usr/bin/env python3
"""Slowloris: many connections that trickle their request heads (or bodies), and fresh
requests beside them. Part of `make bench` (bench/run.py calls `measure`); also runs alone:

    python3 bench/slowloris.py PORT [PID]     # attack a running server, probe it, and
                                              # sample process PID (default: none)

The attack and the probe run as processes of their own (this file with `attack` or
`probe`), so neither waits for the other's interpreter lock, and each prints JSON.

Attack: SLOWLORIS_CONNECTIONS connections (default 10,000) each send a request line and
then one header line every SLOWLORIS_DRIP seconds (default 1), never ending the head. In
the `bodies` variant each sends a whole head of a POST declaring a body of 1,000,000 bytes,
then one byte of the body every SLOWLORIS_DRIP seconds (as `slowhttptest -B`).
Whenever fewer are open than that, whether the server answered and closed a connection,
closed it without an answer, or refused it, new ones are opened at once (until one fails
to connect: the next try is 10 ms later), so the pressure stays; the answers are counted
by status.
Probe: once all are open, a fresh connection with `GET /` every 20 ms for
SLOWLORIS_SECONDS (default 30), each answer timed. The worker is sampled every second
from the attack's first connection to its last.
"""

import heapq
import itertools
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import threading
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


class Attack:
    """The trickling connections: which are open, when each drips next, what ended them."""

    def __init__(self, port, bodies=False):
        self.port = port
        self.opening, self.dripping = (
            (b"POST / HTTP/1.1\r\nHost: slow\r\nContent-Length: 1000000\r\n\r\n", b"x")
            if bodies else (b"GET / HTTP/1.1\r\nHost: slow\r\n", b"X-Slow: 1\r\n"))
        self.selector = selectors.DefaultSelector()
        self.opened_at = {}
        # (due, sequence, socket): the next drip of each open connection, earliest first.
        self.drips = []
        self.sequence = itertools.count()
        self.lifetimes = []
        self.answers = {}
        self.connect_failures = 0

    def open_one(self):
        """Opens one trickling connection; False if it could not connect."""
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", self.port))
            s.sendall(self.opening)
        except OSError:
            self.connect_failures += 1
            s.close()
            return False
        s.setblocking(False)
        self.selector.register(s, selectors.EVENT_READ)
        now = time.monotonic()
        self.opened_at[s] = now
        # Spread the first drips over one period, so that they do not all come at once.
        due = now + DRIP * (len(self.opened_at) % 100) / 100
        heapq.heappush(self.drips, (due, next(self.sequence), s))
        return True

    def close(self, s, data):
        """Ends a connection the server answered (`data`) or closed."""
        self.lifetimes.append(time.monotonic() - self.opened_at.pop(s))
        self.selector.unregister(s)
        s.close()
        status = data[9:12].decode(errors="replace") if data.startswith(b"HTTP/") else "none"
        self.answers[status] = self.answers.get(status, 0) + 1

    def read_answers(self, timeout):
        for key, _ in self.selector.select(timeout=timeout):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            self.close(s, data)

    def drip(self):
        now = time.monotonic()
        while self.drips and self.drips[0][0] <= now:
            _, _, s = heapq.heappop(self.drips)
            if s not in self.opened_at:
                continue
            try:
                s.send(self.dripping)
            except BlockingIOError:
                pass
            except OSError:
                self.close(s, b"")
                continue
            heapq.heappush(self.drips, (now + DRIP, next(self.sequence), s))

    def top_up(self, wanted):
        """Opens connections until `wanted` are open or one fails to connect."""
        while len(self.opened_at) < wanted and self.open_one():
            pass

    def tick(self, wanted):
        """Up to 10 ms waiting for answers, then the drips that are due, then new
        connections for those that ended."""
        self.read_answers(timeout=0.01)
        self.drip()
        self.top_up(wanted)


def attack(port, connections, seconds, bodies=False):
    """Keeps `connections` trickling heads (or bodies) open for `seconds` after the
    ramp-up."""
    raise_fd_limit()
    trickling = Attack(port, bodies)
    ramp_started = time.monotonic()
    # Up to a minute for every connection to be open at once.
    while len(trickling.opened_at) < connections and time.monotonic() - ramp_started < 60:
        trickling.tick(connections)
    ramp = time.monotonic() - ramp_started
    print(json.dumps({"ready": len(trickling.opened_at), "ramp_s": round(ramp, 2)}),
          flush=True)
    least_open, deadline = len(trickling.opened_at), time.monotonic() + seconds
    while time.monotonic() < deadline:
        trickling.tick(connections)
        least_open = min(least_open, len(trickling.opened_at))
    lifetimes = trickling.lifetimes
    print(json.dumps({
        "open_at_end": len(trickling.opened_at),
        "least_open": least_open,
        "closed_by_server": len(lifetimes),
        "answers": trickling.answers,
        "connect_failures": trickling.connect_failures,
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
                failures.append(data[:40].decode(errors="replace") or "closed, no answer")
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


def upload(port, clients, size, seconds):
    """`clients` threads, each uploading a body of `size` bytes with `POST /` on a fresh
    connection and reading the answer, again and again for `seconds` (the first round all
    at once); prints the answers by status and how many uploads got none."""
    raise_fd_limit()
    body = bytes(size)
    head = (f"POST / HTTP/1.1\r\nHost: upload\r\nConnection: close\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    answers, lock = {}, threading.Lock()
    deadline = time.monotonic() + seconds

    def one():
        data = b""
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            try:
                s.sendall(head)
                s.sendall(body)
            except OSError:
                pass  # refused before the whole body went: the answer may still be there
            try:
                while len(data) < 12:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
        return data[9:12].decode(errors="replace") if data.startswith(b"HTTP/") else "none"

    def client():
        while True:
            try:
                status = one()
            except OSError:
                status = "could not connect"
            with lock:
                answers[status] = answers.get(status, 0) + 1
            if time.monotonic() >= deadline:
                return

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"answers": answers, "uploads": sum(answers.values())}), flush=True)


class Sampler:
    """Samples the processes `workers` returns (the PIDs of the moment) every `every`
    seconds until stopped: `peak` holds the highest of each figure, of the busiest
    process, and `seen` every PID sampled."""

    def __init__(self, workers, every):
        self.peak, self.seen = {}, set()
        self.over = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(workers, every))
        self.thread.start()

    def run(self, workers, every):
        while True:
            for pid in workers():
                self.seen.add(pid)
                for key, value in process_figures(pid).items():
                    self.peak[key] = max(self.peak.get(key, 0), value)
            if self.over.wait(every):
                return

    def stop(self):
        self.over.set()
        self.thread.join()


def measure_uploads(port, workers, clients, size, seconds):
    """Uploads (see `upload`) beside the probe for `seconds`, the worker sampled four
    times a second meanwhile (its memory moves fast)."""
    me = os.path.abspath(__file__)
    sampler = Sampler(workers, 0.25)
    try:
        uploader = subprocess.Popen([sys.executable, me, "upload", str(port), str(clients),
                                     str(size), str(seconds)], stdout=subprocess.PIPE,
                                    text=True)
        prober = subprocess.Popen([sys.executable, me, "probe", str(port), str(seconds)],
                                  stdout=subprocess.PIPE, text=True)
        probed = report(prober)
        uploaded = report(uploader)
        prober.wait()
        uploader.wait()
    finally:
        sampler.stop()
    return {"uploads": uploaded, "probe": probed, "worker_peak": sampler.peak,
            "worker_pids": sorted(sampler.seen)}


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


def report(process):
    """The one JSON line a child process prints; fails clearly when it died first."""
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"{' '.join(process.args[2:4])}: ended without a report "
                           f"(exit code {process.wait()})")
    return json.loads(line)


def measure(port, workers, connections=CONNECTIONS, seconds=STEADY, bodies=False):
    """Runs the attack and, once every connection is open, the probe. `workers` returns
    the worker PIDs of the moment: each is sampled every second for the whole attack, and
    the peaks are those of the busiest. Returns everything as a dict."""
    me = os.path.abspath(__file__)
    idle = {}

    def measure_idle():
        time.sleep(1)
        try:
            idle["s"] = idle_lifetime(port)
        except OSError:
            idle["s"] = None

    sampler = Sampler(workers, 1)
    attacker = subprocess.Popen([sys.executable, me, "attack", str(port), str(connections),
                                 str(seconds + 2)] + (["bodies"] if bodies else []),
                                stdout=subprocess.PIPE, text=True)
    try:
        ready = report(attacker)
        prober = subprocess.Popen([sys.executable, me, "probe", str(port), str(seconds)],
                                  stdout=subprocess.PIPE, text=True)
        idler = threading.Thread(target=measure_idle, daemon=True)
        idler.start()
        probed = report(prober)
        prober.wait()
        attacked = report(attacker)
        attacker.wait()
        idler.join(timeout=70)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
        sampler.stop()
    return {"ready": ready, "attack": attacked, "probe": probed,
            "worker_peak": sampler.peak, "worker_pids": sorted(sampler.seen),
            "idle_lifetime_s": idle.get("s")}


def main():
    if sys.argv[1] == "attack":
        attack(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]),
               sys.argv[5:] == ["bodies"])
    elif sys.argv[1] == "upload":
        upload(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif sys.argv[1] == "probe":
        probe(int(sys.argv[2]), float(sys.argv[3]))
    else:
        raise_fd_limit()
        port = int(sys.argv[1])
        pids = [int(sys.argv[2])] if len(sys.argv) > 2 else []
        print(json.dumps(measure(port, lambda: pids), indent=2))


if __name__ == "__main__":
    main()
