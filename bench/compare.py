#!/usr/bin/env python3
"""`make bench-compare BEFORE=REV`: what this build costs beside an earlier one, serving
the example's `GET /` at 64 connections, measured so that the machine's noise cancels.

Why not two `make bench` runs: on a shared VM a core's speed moves by up to ±20% from one
5-second run to the next, so the medians of a few alternating runs cannot tell a 3%
change. Here the two builds run at the same time on the same core: both servers pinned to
SERVER_CPUS, each loaded by its own wrk (64 connections), both wrks pinned to CLIENT_CPUS.
Whatever slows the core slows both alike, so the ratio of their figures within a round is
steady even when the figures are not.

Per round and build: requests/s, server CPU µs per request (utime + stime of all its
processes ÷ requests wrk completed) and the `io` threads' CPU µs per request (the worker's
I/O side, which bounds the throughput at 64 connections with the default `io_threads: 1`).
Prints a line per round and writes bench/COMPARE.md (or OUTPUT): every round, then the
median, lowest and highest of the ratios now ÷ before.

Beside the two builds, in the same rounds and on the same core, run the baselines of
`make bench` (BASELINES): bare hyper on tokio's default runtime ("best") and bare hyper
in the product's shape ("hyper"); the report gives now ÷ each of them too. On one core
"best" cannot use the machine's other cores: the ratio to it reads as the cost of a
request on a core, which CPU per request states directly.

Reading the throughput ratio: the servers on one core share it, so each one's req/s is
its share of the core ÷ its CPU per request, and the scheduler's split of the core moves
with how each one's threads sleep and wake. CPU per request is the cost itself.

Environment:
  BEFORE        the earlier build: a git revision of this repository, built (release)
                from `git archive` in target/bench-before/REV/ (kept for the next run)
  BEFORE_BINARY the earlier build's microservice-rust binary, instead of BEFORE
  BEFORE_LIB    with BEFORE_BINARY: the example library built with it (its ABI)
  ROUNDS        rounds (default 10)
  DURATION      seconds per wrk run (default 5)
  SERVER_CPUS   the CPUs both servers share (default 0)
  CLIENT_CPUS   the CPUs both wrks share (default 1)
  OUTPUT        where the report goes (default bench/COMPARE.md)
  BASELINES     the baselines run beside the builds, a comma list of best,hyper (default
                both; empty: none)
The build measured as now is target/release's, built by this script.
"""

import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the bench's servers, wrk and warm-up)

ROUNDS = int(os.environ.get("ROUNDS", "10"))
SERVER_CPUS = os.environ.get("SERVER_CPUS", "0")
CLIENT_CPUS = os.environ.get("CLIENT_CPUS", "1")
CONNECTIONS = 64
OUTPUT = os.environ.get("OUTPUT") or os.path.join(run.ROOT, "bench", "COMPARE.md")
FIGURES = (("rps", "req/s"), ("cpu_us", "CPU µs/req"), ("io_us", "io threads' CPU µs/req"))
BASELINES = [b.strip() for b in os.environ.get("BASELINES", "best,hyper").split(",") if b.strip()]


def git(*args):
    return subprocess.run(["git", *args], cwd=run.ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def build(source, target):
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "microservice-rust",
                    "-p", "example-rum-counter"], cwd=source, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target})
    release = os.path.join(target, "release")
    return (os.path.join(release, "microservice-rust"),
            os.path.join(release, "libexample_rum_counter.so"))


def before_build():
    """(label, binary, library) of the earlier build."""
    binary, library = os.environ.get("BEFORE_BINARY"), os.environ.get("BEFORE_LIB")
    if binary or library:
        if not (binary and library):
            sys.exit("BEFORE_BINARY and BEFORE_LIB go together: the example library must "
                     "be the one built with that binary")
        return binary, binary, library
    revision = os.environ.get("BEFORE")
    if not revision:
        sys.exit("bench-compare: set BEFORE to a git revision (make bench-compare "
                 "BEFORE=v1), or BEFORE_BINARY and BEFORE_LIB")
    try:
        commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    except subprocess.CalledProcessError:
        sys.exit(f"BEFORE: {revision!r} is not a commit of this repository")
    short = commit[:12]
    home = os.path.join(run.TARGET, "bench-before")
    source = os.path.join(home, short)
    if not os.path.isdir(source):
        run.step(f"extracting {short} into {source}")
        os.makedirs(source + ".part", exist_ok=True)
        archive = subprocess.Popen(["git", "archive", commit], cwd=run.ROOT,
                                   stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", source + ".part"], stdin=archive.stdout,
                       check=True)
        if archive.wait() != 0:
            sys.exit(f"git archive {short} failed")
        os.rename(source + ".part", source)
    run.step(f"building {short} (release)")
    return (f"{revision} ({short})", *build(source, os.path.join(home, "target")))


def measure(server, results, name):
    threads_before = server.thread_cpu_seconds()
    result = run.wrk(server, CONNECTIONS, cpus=CLIENT_CPUS)
    threads_after = server.thread_cpu_seconds()
    if result["requests"]:
        io = threads_after.get("io", 0.0) - threads_before.get("io", 0.0)
        result["io_us"] = io * 1e6 / result["requests"] if "io" in threads_after else None
    results[name] = result


def one_round(builds, first):
    """Both builds at once; `first` starts first (the order alternates by round)."""
    order = sorted(builds, key=lambda name: name != first) + BASELINES
    servers = {}
    try:
        for name in order:
            if name in BASELINES:
                servers[name] = run.Server(name, cpus=SERVER_CPUS)
                continue
            binary, library = builds[name]
            servers[name] = run.Server("product", app=library, binary=binary,
                                       cpus=SERVER_CPUS)
        for name in order:
            servers[name].ready()
            run.warm_up(servers[name].port, CONNECTIONS)
        results = {}
        loads = [threading.Thread(target=measure, args=(servers[name], results, name))
                 for name in order]
        for load in loads:
            load.start()
        for load in loads:
            load.join()
        return results
    finally:
        for server in servers.values():
            server.stop()


def ratio(now, before, figure):
    a, b = now.get(figure), before.get(figure)
    return a / b if a and b else None


def cell(value, spec):
    return "–" if value is None else format(value, spec)


def main():
    if len(sys.argv) > 1:
        print(__doc__.strip())
        sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
    label, before_binary, before_lib = before_build()
    run.step("building this tree (release)")
    now_binary, now_lib = build(run.ROOT, run.TARGET)
    status = git("status", "--porcelain", "--untracked-files=no")
    now_label = git("rev-parse", "--short=12", "HEAD") + (" with changes" if status else "")
    run.install_tools()
    builds = {"before": (before_binary, before_lib), "now": (now_binary, now_lib)}
    run.step(f"{ROUNDS} rounds of {run.DURATION} s: before = {label}, now = {now_label}; "
             f"servers on CPU {SERVER_CPUS}, wrk on CPU {CLIENT_CPUS}")
    rounds = []
    for number in range(ROUNDS):
        results = one_round(builds, first=("before", "now")[number % 2])
        rounds.append(results)
        errors = sum(r["errors"] for r in results.values())
        run.step(f"round {number + 1}/{ROUNDS}: " + "; ".join(
            f"{name} {r['rps']:.0f} req/s, CPU {cell(r['cpu_us'], '.2f')} µs, "
            f"io {cell(r.get('io_us'), '.2f')} µs" for name, r in results.items())
            + f"; errors {errors}")
    write(rounds, label, now_label)
    print(open(OUTPUT).read())


def write(rounds, label, now_label):
    lines = [
        "# now ÷ before, the two builds at once on one core",
        "",
        f"Written by `make bench-compare` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f" (bench/compare.py says how): before = {label}, now = {now_label}. Both serve the "
        f"example's `GET /` in production mode with default settings; {ROUNDS} rounds of "
        f"`wrk -c{CONNECTIONS} -d{run.DURATION}s` each, all at the same time, servers on "
        f"CPU {SERVER_CPUS} and wrk on CPU {CLIENT_CPUS}; beside them "
        + (", ".join(run.NAMES[b] for b in BASELINES) or "no baseline") + ".",
        "",
        "| round | " + " | ".join(f"before {title} | now {title} | now ÷ before"
                                   for _, title in FIGURES) + " |",
        "|---:|" + "---:|" * (3 * len(FIGURES)),
    ]
    ratios = {figure: [] for figure, _ in FIGURES}
    for number, results in enumerate(rounds, 1):
        cells = []
        for figure, _ in FIGURES:
            spec = ".0f" if figure == "rps" else ".2f"
            r = ratio(results["now"], results["before"], figure)
            if r is not None:
                ratios[figure].append(r)
            cells += [cell(results["before"].get(figure), spec),
                      cell(results["now"].get(figure), spec), cell(r, ".3f")]
        lines.append(f"| {number} | " + " | ".join(cells) + " |")
    errors = sum(r["errors"] for results in rounds for r in results.values())
    lines += ["", "| now ÷ before | median | lowest | highest |", "|---|---:|---:|---:|"]
    for figure, title in FIGURES:
        values = ratios[figure]
        lines.append(f"| {title} | " + " | ".join(
            cell(f(values) if values else None, ".3f")
            for f in (statistics.median, min, max)) + " |")
    for base in BASELINES:
        lines += ["", f"| now ÷ {run.NAMES[base]}, on the same core | median | lowest | highest |",
                  "|---|---:|---:|---:|"]
        for figure, title in FIGURES[:2]:
            values = [r for r in (ratio(results["now"], results[base], figure)
                                  for results in rounds) if r is not None]
            lines.append(f"| {title} | " + " | ".join(
                cell(f(values) if values else None, ".3f")
                for f in (statistics.median, min, max)) + " |")
    lines += ["", f"Errors (socket errors and non-2xx answers, every server): {errors}.", ""]
    with open(OUTPUT, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
