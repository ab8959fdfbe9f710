#!/usr/bin/env python3
"""`make bench-profile`: where a request's instructions go, thread by thread, in the
product and in bare hyper at its best, counted by callgrind.

Each server runs under `valgrind --tool=callgrind --separate-threads=yes` (the product's
worker too), serves wrk's CONNECTIONS connections `GET /` for WARM seconds, has its counts
zeroed (`callgrind_control -z`), serves them DURATION seconds more and has its counts
dumped (`callgrind_control -d`). A thread's instructions ÷ the requests wrk completed in
those DURATION seconds are its instructions per request. The product runs in production
mode with default settings but without the watchdog: under valgrind a process runs about
50 times slower, one thread at a time, and the watchdog's probes would time out.

What the counts are: the instructions each thread ran in user space, which the rest of
the machine's load moves far less than it moves time. They are not time: the kernel's
share (the socket calls, waking threads; 58% of the product's I/O thread's time at 64
connections) is not in them, nor are cache misses, and a thread that spins while it waits
counts its spinning (under valgrind the threads take turns, so the pool's spinning is not
the same as on the machine).

Writes bench/PROFILE.md (or OUTPUT): instructions per request for each kind of thread
(the worker's `io` and `pool` threads, the supervisor, the rest; bare hyper's threads
together); the functions with the most instructions of their own per request in each; and
the product's I/O thread against the whole of bare hyper, function by function. Installs
valgrind, wrk and ss with apt when missing; builds the release binaries measured.

Environment:
  DURATION      seconds of wrk counted (default 10)
  WARM          seconds of wrk before the counts are zeroed (default 3)
  CONNECTIONS   wrk's connections (default 64)
  TOP           functions listed per kind of thread (default 20)
  OUTPUT        where the report goes (default bench/PROFILE.md)
"""

import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import measure
import run

DURATION = int(os.environ.get("DURATION", "10"))
WARM = int(os.environ.get("WARM", "3"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
TOP = int(os.environ.get("TOP", "20"))
OUTPUT = os.environ.get("OUTPUT") or os.path.join(run.ROOT, "bench", "PROFILE.md")
CONFIG = {**run.PRODUCTION, "watchdog": {"enabled": False}}
# A thread is known by a function it runs: the pool's loop, the runtime's worker loop.
KINDS_OF_THREAD = (("pool", "worker::pool::Threads::serve"),
                   ("io", "scheduler::multi_thread::worker::run"))


def wrk(port, seconds):
    """Requests wrk completed in `seconds`."""
    out = subprocess.run(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "30s",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         check=True).stdout
    requests = measure.parse(out, 0.0)["requests"]
    if not requests:
        raise RuntimeError(f"wrk completed no request:\n{out}")
    return requests


def self_costs(path):
    """A callgrind output file's instructions by function, each function's own (the
    instructions of the functions it calls are theirs), and the functions named in it."""
    names, costs, current, after_call = {}, collections.Counter(), None, False

    def name(token):
        match = re.match(r"\((\d+)\)(?: (.*))?$", token)
        if not match:
            return token
        number, text = match.groups()
        if text:
            names[number] = text
        return names.get(number, token)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                current, after_call = name(line[3:]), False
            elif line.startswith("cfn="):
                name(line[4:])
            elif line.startswith("calls="):
                after_call = True  # the next cost line is the call's, not this function's
            elif line[:1].isdigit() or line[:1] in "+-*":
                fields = line.split()
                if len(fields) >= 2:
                    if not after_call:
                        costs[current] += int(fields[1])
                    after_call = False
    return costs, set(names.values())


def short(function):
    """A function's name without its crate's path, generics' paths shortened."""
    function = re.sub(r"\s*\[.*\]$", "", function)
    function = re.sub(r"[^\s<(]*index\.crates\.io-[0-9a-f]+/", "", function)
    return function if len(function) <= 110 else function[:107] + "…"


def profile(kind):
    """Per thread kind of `kind`'s server: its self costs summed, instructions per
    request; and the threads counted of each kind."""
    out = tempfile.mkdtemp(prefix="msr-profile-")
    wrap = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--separate-threads=yes",
            f"--callgrind-out-file={out}/callgrind.%p"]
    run.step(f"{run.NAMES[kind]} under callgrind: {WARM} s warm, {DURATION} s counted")
    server = run.Server(kind, CONFIG if kind == "product" else None, wrap=wrap)
    try:
        server.ready()
        wrk(server.port, WARM)
        pids = [str(p) for p in server.pids()]
        subprocess.run(["callgrind_control", "-z", *pids], check=True, capture_output=True)
        requests = wrk(server.port, DURATION)
        subprocess.run(["callgrind_control", "-d", *pids], check=True, capture_output=True)
        supervisor = str(server.process.pid)
    finally:
        server.stop()
    kinds, threads = collections.defaultdict(collections.Counter), collections.Counter()
    for path in sorted(glob.glob(f"{out}/callgrind.*.1-*")):
        costs, functions = self_costs(path)
        if not sum(costs.values()):
            continue
        pid = os.path.basename(path).split(".")[1]
        if kind != "product":
            which = "all"
        elif pid == supervisor:
            which = "supervisor"
        else:
            which = next((label for label, marker in KINDS_OF_THREAD
                          if any(marker in f for f in functions)), "other")
        kinds[which].update(costs)
        threads[which] += 1
    shutil.rmtree(out, ignore_errors=True)
    if not kinds:
        raise RuntimeError(f"callgrind wrote no counts for {kind}")
    per_request = {k: {f: c / requests for f, c in v.items()} for k, v in kinds.items()}
    run.step(f"{run.NAMES[kind]}: {requests:,} requests; instructions per request: "
             + ", ".join(f"{k} {sum(v.values()):,.0f}" for k, v in per_request.items()))
    return per_request, threads, requests


def table(costs, limit):
    rows = ["| instructions per request | function |", "|---:|---|"]
    for function, count in sorted(costs.items(), key=lambda kv: -kv[1])[:limit]:
        rows.append(f"| {count:,.0f} | `{short(function)}` |")
    return rows


def report(product, best):
    (kinds, threads, requests), (best_kinds, best_threads, best_requests) = product, best
    best_all = collections.Counter()
    for costs in best_kinds.values():
        best_all.update(costs)
    total = sum(sum(v.values()) for v in kinds.values())
    lines = [
        "# Where a request's instructions go",
        "",
        f"Written by `make bench-profile` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f" (bench/profile.py says how): callgrind's count of the instructions each thread "
        f"ran in user space while wrk's {CONNECTIONS} connections asked `GET /` for "
        f"{DURATION} s, ÷ the requests completed ({requests:,} at the product, "
        f"{best_requests:,} at bare hyper at its best, both ~50 times slower under "
        "valgrind). The kernel's work is not in these counts.",
        "",
        "| threads | count | instructions per request |",
        "|---|---:|---:|",
    ]
    largest_first = sorted(kinds, key=lambda k: -sum(kinds[k].values()))
    for which in largest_first:
        lines.append(f"| product: {which} | {threads[which]} | "
                     f"{sum(kinds[which].values()):,.0f} |")
    lines.append(f"| product: all | {sum(threads.values())} | {total:,.0f} |")
    for which in sorted(best_kinds):
        lines.append(f"| bare hyper at its best: {which} | {best_threads[which]} | "
                     f"{sum(best_kinds[which].values()):,.0f} |")
    lines += ["", f"Product ÷ bare hyper at its best: {total / sum(best_all.values()):.2f}.",
              ""]
    for which in largest_first:
        if sum(kinds[which].values()) < total / 100:
            continue  # the supervisor, the log writer: a few instructions a request
        lines += [f"## The product's {which} threads", ""] + table(kinds[which], TOP) + [""]
    lines += ["## bare hyper at its best, all threads", ""] + table(best_all, TOP) + [""]
    io = kinds.get("io", {})
    names = set(io) | set(best_all)
    differences = sorted(names, key=lambda f: -(io.get(f, 0) - best_all.get(f, 0)))
    lines += [
        "## The product's I/O thread against the whole of bare hyper",
        "",
        "The functions whose instructions per request the I/O thread exceeds bare hyper's "
        f"most by ({sum(io.values()):,.0f} against {sum(best_all.values()):,.0f} in all). "
        "The two are different programs, built alike: a function inlined in one and not in "
        "the other moves its instructions to its caller's line.",
        "",
        "| I/O thread | bare hyper | more | function |",
        "|---:|---:|---:|---|",
    ]
    for function in differences[:TOP]:
        mine, theirs = io.get(function, 0), best_all.get(function, 0)
        lines.append(f"| {mine:,.0f} | {theirs:,.0f} | {mine - theirs:,.0f} | "
                     f"`{short(function)}` |")
    return "\n".join(lines) + "\n"


def main():
    if sys.argv[1:] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    if sys.argv[1:]:
        sys.exit("usage: python3 bench/profile.py [--help] (settings in the environment)")
    run.install_tools(run.TOOLS + (("valgrind", "valgrind"), ("callgrind_control", "valgrind")))
    run.prepare(product=True)
    product = profile("product")
    best = profile("best")
    text = report(product, best)
    with open(OUTPUT, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
