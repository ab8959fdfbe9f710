#!/usr/bin/env python3
"""`make bench`: the product's figures beside two baselines, measured in the same run.

Modes:
  (none)      everything (make bench, minutes): throughput and latency, cold bursts,
              memory and start time for each server, 64 connections at the product and
              at bare hyper pinned to 1 CPU and to all (io_threads by CPUs), then for the
              product alone dev reload, the watchdog and batches; writes
              bench/RESULTS.md (with the targets,
              met or not) and bench/chart.png, then runs the slowloris mode into
              bench/SLOWLORIS.md (when SERVERS includes product); prints RESULTS.md
  slowloris   the slowloris measurements alone (make bench-slowloris), at the product
              with one worker: 10,000 trickling heads (and at bare hyper at its best),
              then 20 and 2,000 trickling bodies, then 500 clients uploading 10 MiB
              bodies (and at bare hyper at its best), each beside fresh requests
              (failures, p50/p99/max latency, the peak threads, memory and fds,
              restarts); writes and prints bench/SLOWLORIS.md
Both first install wrk and ss if missing (apt) and build the release binaries measured.

Servers, each started from its release build and measured in turn:
  product     microservice-rust in production mode with default settings, serving the
              example app's `GET /`
  best        bench/baselines bare-hyper on tokio's default runtime (a worker thread per
              CPU this process may use, as `#[tokio::main]` makes it), 200 `OK`: bare
              hyper at its best on the machine, the baseline of the targets
  hyper       bench/baselines bare-hyper with the product's shape: IO_THREADS runtime
              threads (the product's resolved `io_threads`)
  tiny_http   bench/baselines bare-tiny-http: 17 threads calling tiny_http's recv() (not
              measured unless SERVERS names it)

Load: wrk on loopback, each run bounded in time and preceded by the same warm-up for
every server. The servers alternate, ROUNDS times, and the medians are reported: req/s,
p50/p99 latency, server CPU time per request (utime + stime of all the server's
processes, for the product the supervisor and its workers, read from /proc/PID/stat
just before and just after each wrk run, divided by the requests wrk completed),
connections left unanswered, cold bursts, resident memory, start to first 200; for the
product alone also dev reload, the watchdog and batches.

Prints: a timestamped line per step and per wrk run (req/s, p50 and p99 latency in ms,
server CPU µs per request, connections unanswered, errors), then RESULTS.md: the medians
for the product and the baselines side by side, with the ratios product ÷ each.

Environment:
  ROUNDS          runs per server and connection count (default 5)
  DURATION        seconds per wrk run (default 5)
  CONNECTIONS     wrk connection counts (default "1,16,64,256,1024")
  SERVERS         which servers, a comma list of product,best,hyper,tiny_http (default
                  product,best,hyper); the product-only figures and slowloris need
                  product
  PRODUCT_BINARY  the microservice-rust binary to measure (default target/release's,
                  built by this script); set it to compare another build
  EXAMPLE_LIB     the app library the product serves (default target/release's example)
  FIXTURE_LIB     the second library of the dev-reload measurement (default
                  target/release's fixture app)
  IO_THREADS      bare hyper's runtime threads (default: the product's io_threads, else 2)
  CARGO_TARGET_DIR  where the release builds are (default target/)
  SLOWLORIS_CONNECTIONS   trickling heads (default 10000)
  SLOWLORIS_SECONDS       how long the fresh requests beside them run (default 30)
  SLOWLORIS_DRIP          seconds between two trickled lines or bytes (default 1)
  SLOWLORIS_BODY_SECONDS  how long the trickling bodies' fresh requests run (default 15)
  UPLOAD_CLIENTS          clients uploading 10 MiB bodies at once (default 500)
  UPLOAD_SECONDS          how long they keep uploading (default 15)
A binary or library given by PRODUCT_BINARY, EXAMPLE_LIB or FIXTURE_LIB is not built.
"""

import argparse
import functools
import glob
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import measure
from measure import median


def parse_args(argv=None):
    """The command line: nothing (everything) or `slowloris`. --help prints this file's
    docstring and exits 0; anything else prints the usage to stderr and exits 2."""
    description, _, environment = __doc__.strip().partition("\nEnvironment:\n")
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=description, allow_abbrev=False,
        epilog="Environment:\n" + environment,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("slowloris",), metavar="slowloris",
                        help="the slowloris measurements alone; without it, everything")
    return parser.parse_args(argv)


# The command line before the environment is read: --help and a wrong argument answer
# even when a variable below is malformed, and nothing starts.
ARGS = parse_args() if __name__ == "__main__" else None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.abspath(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"))
RELEASE = os.path.join(TARGET, "release")
PRODUCT_BINARY = os.environ.get("PRODUCT_BINARY") or os.path.join(RELEASE, "microservice-rust")
EXAMPLE_LIB = os.environ.get("EXAMPLE_LIB") or os.path.join(RELEASE, "libexample_rum_counter.so")
FIXTURE_LIB = os.environ.get("FIXTURE_LIB") or os.path.join(RELEASE, "libfixture_app.so")
BASELINES = {"best": os.path.join(RELEASE, "bare-hyper"),
             "hyper": os.path.join(RELEASE, "bare-hyper"),
             "tiny_http": os.path.join(RELEASE, "bare-tiny-http")}

KINDS = ("product", "best", "hyper", "tiny_http")
DEFAULT_KINDS = ("product", "best", "hyper")
NAMES = {"product": "product", "best": "bare hyper, tokio's defaults",
         "hyper": "bare hyper, the product's shape", "tiny_http": "bare tiny_http"}
ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = int(os.environ.get("DURATION", "5"))
CONNECTIONS = [int(c) for c in os.environ.get("CONNECTIONS", "1,16,64,256,1024").split(",")]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The bench's config for the product: production mode, every other setting its default.
PRODUCTION = {"mode": "production"}


def selected_servers():
    wanted = [s.strip() for s in os.environ.get("SERVERS", ",".join(DEFAULT_KINDS)).split(",")
              if s.strip()]
    unknown = [s for s in wanted if s not in KINDS]
    if unknown or not wanted:
        sys.exit(f"SERVERS: expected a comma list of {', '.join(KINDS)}; got "
                 f"{os.environ.get('SERVERS')!r}")
    return [kind for kind in KINDS if kind in wanted]


SERVERS = selected_servers()


def step(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# What every measurement needs: a command and the Debian package that has it.
TOOLS = (("wrk", "wrk"), ("ss", "iproute2"))


def install_tools(tools=TOOLS):
    """Installs the packages of `tools` (command, package) whose command is missing
    (apt); by default wrk and ss."""
    missing = sorted({package for tool, package in tools if not shutil.which(tool)})
    if missing:
        step(f"installing {' '.join(missing)} (apt)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def prepare(product):
    """Installs wrk and ss if missing, builds what is measured, raises the fd limit."""
    install_tools()
    packages = []
    if any(kind in SERVERS for kind in BASELINES):
        packages += ["-p", "bench-baselines"]
    if product:
        for variable, package in (("PRODUCT_BINARY", "microservice-rust"),
                                  ("EXAMPLE_LIB", "example-rum-counter"),
                                  ("FIXTURE_LIB", "fixture-app")):
            if not os.environ.get(variable):
                packages += ["-p", package]
    if packages:
        step(f"building release binaries: {' '.join(packages[1::2])}")
        subprocess.run(["cargo", "build", "--release", "--quiet", *packages], cwd=ROOT,
                       check=True)
    # 1024 connections need more than 1024 fds on both sides.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


@functools.lru_cache(maxsize=None)
def product_config():
    """The product's resolved config for the bench's settings (`check-config`'s
    `config`), or {} when it cannot be read."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(PRODUCTION, f)
        f.flush()
        try:
            out = subprocess.run([PRODUCT_BINARY, "check-config", "--config", f.name],
                                 capture_output=True, text=True, timeout=30).stdout
            return json.loads(out).get("config") or {}
        except (OSError, ValueError, AttributeError, subprocess.TimeoutExpired):
            return {}


def product_threads():
    """The product's `threads` (17 when its config does not say) and `io_threads` (None
    when its config has no such setting, as before the product ran on tokio)."""
    config = product_config()
    threads, io_threads = config.get("threads"), config.get("io_threads")
    return (threads if isinstance(threads, int) else 17,
            io_threads if isinstance(io_threads, int) and io_threads > 0 else None)


def hyper_io_threads():
    """Bare hyper gets the product's io threads, so that both have the same runtime."""
    return int(os.environ.get("IO_THREADS") or product_threads()[1] or 2)


def product_label():
    """The product's threads, as the tables and the chart name them."""
    threads, io_threads = product_threads()
    return f"{threads} threads" + (f", {io_threads} io threads" if io_threads else "")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path="/", timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_answer(port, limit=30, expect=None):
    """Polls GET / every millisecond; returns when it answers (with `expect`, if given)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            status, body = get(port, timeout=2)
            if status == 200 and (expect is None or body == expect):
                return
        except OSError:
            pass
        time.sleep(0.001)
    raise RuntimeError(f"port {port} did not answer {expect!r} within {limit}s")


class Server:
    """A server process: `kind` is one of KINDS. For the product, `binary` is the build to
    run (default PRODUCT_BINARY); `cpus` pins the server to those CPUs (taskset's list);
    `wrap` is a command the server runs under (a profiler's)."""

    def __init__(self, kind, config=None, app=EXAMPLE_LIB, binary=None, cpus=None, wrap=()):
        self.kind = kind
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="msr-bench-")
        env = None
        if kind == "product":
            path = os.path.join(self.dir, "config.json")
            with open(path, "w") as f:
                json.dump(config or PRODUCTION, f)
            command = [binary or PRODUCT_BINARY, "--host", "127.0.0.1", "--port", str(self.port),
                       "--app", app, "--config", path]
        else:
            command = [BASELINES[kind], f"127.0.0.1:{self.port}"]
            env = {key: value for key, value in os.environ.items() if key != "IO_THREADS"}
            if kind == "hyper":
                env["IO_THREADS"] = str(hyper_io_threads())
        command = [*wrap, *command]
        if cpus:
            command = ["taskset", "-c", cpus, *command]
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, env=env)
        self.log = []
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self):
        for line in self.process.stderr:
            self.log.append(line)

    def ready(self):
        wait_answer(self.port)
        return time.monotonic() - self.started

    def pids(self):
        """The process and its descendants (the product's workers)."""
        pids, queue = [], [self.process.pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    queue += [int(p) for p in f.read().split()]
            except OSError:
                pass
        return pids

    def workers(self):
        """The product's worker processes (the supervisor's children)."""
        return self.pids()[1:]

    def status_sum(self, field):
        """A /proc/PID/status field summed over the process and its workers."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(l.split()[1]) for l in f if l.startswith(field + ":"))
            except (OSError, StopIteration):
                pass
        return total

    def rss_kib(self):
        return self.status_sum("VmRSS")

    def cpu_seconds(self):
        """User + system CPU time of the process and its workers, all their threads
        included."""
        return measure.cpu_seconds(self.pids())

    def thread_cpu_seconds(self):
        """User + system CPU time of the process and its workers by thread name (the
        worker's `io` and `pool` threads, …), threads still alive only."""
        seconds = {}
        for pid in self.pids():
            for path in glob.glob(f"/proc/{pid}/task/*/stat"):
                try:
                    with open(path) as f:
                        text = f.read()
                except OSError:
                    continue
                name = text[text.find("(") + 1:text.rfind(")")]
                fields = text.rpartition(")")[2].split()
                ticks = int(fields[11]) + int(fields[12])
                seconds[name] = seconds.get(name, 0.0) + ticks / CLOCK_TICKS
        return seconds

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def settle(servers, limit=8.0):
    """Waits until no server's thread count has changed for 0.5 s: after many connections,
    tiny_http's idle connection threads exit about 5 s later, and the next run should not
    pay for that."""
    deadline = time.monotonic() + limit
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        counts = [server.status_sum("Threads") for server in servers]
        if counts != last:
            last, since = counts, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            return
        time.sleep(0.1)


def warm_up(port, connections):
    """Opens `connections` connections one after another, each answered once, then closes
    them all: tiny_http starts a thread per connection only when its pool has no idle
    thread, so this leaves it with a thread for every connection wrk will open. Every
    server gets the same. Without it a burst of new connections can leave some unread
    (see `cold_bursts`)."""
    streams = []
    try:
        for _ in range(connections):
            stream = socket.create_connection(("127.0.0.1", port), timeout=5)
            streams.append(stream)
            stream.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = stream.recv(4096)
                if not chunk:
                    break
                answer += chunk
    finally:
        for stream in streams:
            stream.close()


def unanswered(port):
    """Server-side connections on `port` that have received a request and never sent a
    byte (ss's tcp_info: no bytes_sent)."""
    out = subprocess.run(["ss", "-tniH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    count = 0
    for line in out.splitlines():
        # tcp_info lines are the indented ones.
        if line[:1].isspace() and "bytes_received" in line and "bytes_sent" not in line:
            count += 1
    return count


def wrk(server, connections, cpus=None):
    """One bounded wrk run (pinned to `cpus`, taskset's list, when given); returns
    requests/s, p50 and p99 in milliseconds, the server's CPU microseconds per completed
    request, errors, and the connections left unanswered halfway through the run."""
    threads = min(2, connections)
    cpu_before = server.cpu_seconds()
    run = subprocess.Popen(
        (["taskset", "-c", cpus] if cpus else [])
        + ["wrk", f"-t{threads}", f"-c{connections}", f"-d{DURATION}s", "--latency",
           "--timeout", "5s", f"http://127.0.0.1:{server.port}/"],
        stdout=subprocess.PIPE, text=True)
    time.sleep(DURATION / 2)
    left = unanswered(server.port)
    out = run.communicate(timeout=DURATION + 30)[0]
    cpu = server.cpu_seconds() - cpu_before
    result = measure.parse(out, cpu)
    result["errors"] = result.pop("socket_errors") + result.pop("non_2xx")
    result["unanswered"] = left
    return result


def rounded(value, digits):
    return None if value is None else round(value, digits)


def summarize(runs):
    return {
        **measure.medians(runs),
        "errors": sum(r["errors"] for r in runs),
        "p99_runs": [rounded(r["p99"], 3) for r in runs],
        "unanswered": [r["unanswered"] for r in runs],
    }


def show(value, spec):
    return "–" if value is None else format(value, spec)


def report(label, kind, result):
    step(f"{label}, {NAMES[kind]:14}: {show(result['rps'], '9.0f')} req/s, "
         f"p50 {show(result['p50'], '.3f')} ms, p99 {show(result['p99'], '.3f')} ms, "
         f"CPU {show(result['cpu_us'], '.1f')} µs/req, "
         f"unanswered {result['unanswered']}, errors {result['errors']}")


def loaded_connections():
    """The connection count whose runs give the peak memory figure: 64, or the largest
    measured when 64 is not."""
    return 64 if 64 in CONNECTIONS else max(CONNECTIONS)


def measure_throughput():
    """Alternates the servers at each connection count, each run after the same warm-up;
    medians per figure."""
    samples = {(kind, c): [] for kind in SERVERS for c in CONNECTIONS}
    memory = {kind: [] for kind in SERVERS}
    servers = {kind: Server(kind) for kind in SERVERS}
    try:
        for server in servers.values():
            server.ready()
        time.sleep(0.5)
        idle = {kind: s.rss_kib() for kind, s in servers.items()}
        idle_once = {kind: measure.distinct_kib(s.pids()) for kind, s in servers.items()}
        # Connection counts in ascending order, all rounds of one before the next: after
        # a burst of connections tiny_http's idle threads wind down for up to a minute, and
        # a run at few connections should not pay for the burst before it.
        for c in CONNECTIONS:
            for round_ in range(1, ROUNDS + 1):
                for kind in SERVERS:
                    server = servers[kind]
                    peak = [0]
                    done = threading.Event()

                    def sample(server=server, peak=peak, done=done):
                        while not done.wait(0.25):
                            peak[0] = max(peak[0], server.rss_kib())

                    warm_up(server.port, c)
                    sampler = threading.Thread(target=sample)
                    sampler.start()
                    result = wrk(server, c)
                    done.set()
                    sampler.join()
                    if c == loaded_connections():
                        memory[kind].append(peak[0])
                    samples[(kind, c)].append(result)
                    settle(servers.values())
                    report(f"round {round_}/{ROUNDS}, {c:4} connections", kind, result)
    finally:
        for server in servers.values():
            server.stop()
    medians = {key: summarize(runs) for key, runs in samples.items()}
    loaded = {kind: median(values) for kind, values in memory.items()}
    return medians, (idle, idle_once), loaded


def cold_bursts(connections=64):
    """wrk's connections arriving at once at freshly started servers, with no warm-up:
    the case in which tiny_http's pool leaves connections unread."""
    samples = {kind: [] for kind in SERVERS}
    for round_ in range(1, ROUNDS + 1):
        for kind in SERVERS:
            server = Server(kind)
            try:
                server.ready()
                result = wrk(server, connections)
            finally:
                server.stop()
            samples[kind].append(result)
            report(f"cold burst {round_}/{ROUNDS}, {connections} connections", kind, result)
    return {kind: summarize(runs) for kind, runs in samples.items()}


def measure_start():
    times = {kind: [] for kind in SERVERS}
    for _ in range(5):
        for kind in SERVERS:
            server = Server(kind)
            try:
                times[kind].append(server.ready())
            finally:
                server.stop()
    start = {kind: statistics.median(values) for kind, values in times.items()}
    step("start to first 200: " + ", ".join(
        f"{NAMES[kind]} {start[kind] * 1000:.1f} ms" for kind in SERVERS))
    return start


def measure_cores():
    """64 connections at the product with its default io_threads and at bare hyper at its
    best, each pinned (taskset) to 1 CPU, then to all; also the product with one I/O
    thread per CPU on all: what the default rule (one for every two CPUs) gives against
    the other choice."""
    every = sorted(os.sched_getaffinity(0))
    sets = [every[:1]] if len(every) == 1 else [every[:1], every]
    variants = []
    for cpus in sets:
        listed = ",".join(map(str, cpus))
        variants += [(len(cpus), "product", None, listed), (len(cpus), "best", None, listed)]
    if len(every) > 1:
        variants.append((len(every), "product", {**PRODUCTION, "io_threads": len(every)},
                         ",".join(map(str, every))))
    runs, io_threads = {}, {}
    for round_ in range(1, ROUNDS + 1):
        for count, kind, config, cpus in variants:
            server = Server(kind, config=config, cpus=cpus)
            try:
                server.ready()
                warm_up(server.port, 64)
                result = wrk(server, 64)
            finally:
                server.stop()
            key = (count, kind, config is not None)
            runs.setdefault(key, []).append(result)
            # What the worker chose, from its start line ("… N I/O thread(s) …").
            for line in server.log:
                found = re.search(r"(\d+) I/O thread\(s\)", line)
                if found:
                    io_threads.setdefault(key, set()).add(int(found.group(1)))
            report(f"cores: round {round_}/{ROUNDS}, CPUs {cpus}"
                   + (f", io_threads {count}" if config else ""), kind, result)
    return {key: {**summarize(values), "io_threads": sorted(io_threads.get(key, ()))}
            for key, values in runs.items()}


def cores_section(cores):
    """RESULTS.md's lines on io_threads against the CPUs the server may use."""
    if not cores:
        return []
    lines = [
        "## I/O threads by CPUs",
        "",
        "`io_threads` defaults to one for every two CPUs the process may use, rounded up.",
        "Each server pinned with `taskset` to the CPUs given (wrk is not pinned), 64",
        f"connections, medians of {ROUNDS} runs:",
        "",
        "| CPUs | product: io_threads | product req/s | product p99 (ms) | product CPU µs/req "
        "| bare hyper at its best: req/s | p99 (ms) | CPU µs/req | product ÷ bare hyper "
        "(req/s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (count, kind, forced), m in sorted(cores.items()):
        if kind != "product":
            continue
        best = cores.get((count, "best", False))
        chosen = (", ".join(map(str, m["io_threads"])) or "?") + (
            " (set)" if forced else " (default)")
        lines.append(
            f"| {count} | {chosen} | {m['rps']:,.0f} | {m['p99']:.2f} | {m['cpu_us']:.1f} | "
            f"{best['rps']:,.0f} | {best['p99']:.2f} | {best['cpu_us']:.1f} | "
            f"{m['rps'] / best['rps']:.2f} |")
    return lines + [""]


def measure_reload():
    """Dev mode: the app library replaced (renamed over, as a build does) to new code."""
    directory = tempfile.mkdtemp(prefix="msr-bench-reload-")
    app = os.path.join(directory, "libapp.so")
    shutil.copy(EXAMPLE_LIB, app)
    server = Server("product", config={"mode": "dev"}, app=app)
    took = []
    try:
        server.ready()
        for i in range(6):
            source, answer = (FIXTURE_LIB, "fixture") if i % 2 == 0 else (EXAMPLE_LIB, "OK")
            time.sleep(0.3)
            shutil.copy(source, app + ".tmp")
            os.rename(app + ".tmp", app)
            started = time.monotonic()
            wait_answer(server.port, expect=answer)
            took.append(time.monotonic() - started)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    step(f"dev reload: new code answering after {statistics.median(took) * 1000:.0f} ms "
         f"(median of {len(took)})")
    return statistics.median(took)


def measure_watchdog():
    """Default watchdog (interval 5 s, timeout 2 s, 3 failures): all threads hang."""
    server = Server("product", config={"mode": "production", "request_timeout_s": 0})
    try:
        server.ready()
        for _ in range(product_threads()[0]):
            threading.Thread(target=lambda: _quietly(get, server.port, "/delay/1000", 120),
                             daemon=True).start()
        time.sleep(0.2)
        started = time.monotonic()
        while True:
            if any("took over from" in line for line in server.log):
                try:
                    if get(server.port, timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
            if time.monotonic() - started > 30:
                raise RuntimeError("no replacement within 30 s")
            time.sleep(0.01)
        took = time.monotonic() - started
    finally:
        server.stop()
    step(f"watchdog: a new worker answering {took:.2f} s after all threads hung "
         f"(bound 5 + 3 x 2 + 1 = 12 s)")
    return took


def _quietly(function, *args):
    try:
        function(*args)
    except OSError:
        pass


def measure_batches():
    server = Server("product", config={"mode": "production", "threads": 4})
    try:
        server.ready()
        threads = [threading.Thread(target=get, args=(server.port, "/delay/1", 10))
                   for _ in range(11)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - started
    finally:
        server.stop()
    step(f"11 parallel /delay/1 with 4 threads: {took:.2f} s")
    return took


def ratio_kinds():
    """The baselines the product is divided by in the tables."""
    return [kind for kind in ("best", "hyper", "tiny_http")
            if "product" in SERVERS and kind in SERVERS]


def table_row(label, figures, spec, ratios=True):
    """One row: `figures` maps a server to a tuple of numbers (shown joined by " / "),
    followed by product ÷ each baseline, figure by figure."""
    def cell(values, spec):
        if values is None or any(v is None for v in values):
            return "–"
        return " / ".join(format(v, spec) for v in values)

    cells = [cell(figures.get(kind), spec) for kind in SERVERS]
    for base in ratio_kinds():
        p, b = figures.get("product"), figures.get(base)
        if ratios and p is not None and b is not None and None not in p + b:
            cells.append(cell(tuple(x / y if y else float("nan") for x, y in zip(p, b)),
                              ".2f"))
        else:
            cells.append("–")
    return f"| {label} | " + " | ".join(cells) + " |"


def product_only_row(label, text):
    return f"| {label} | " + " | ".join(
        [text if kind == "product" else "–" for kind in SERVERS] + ["–"] * len(ratio_kinds())
    ) + " |"


def targets(medians, idle, start, idle_once):
    """The targets, from the 64- and 1-connection medians; each a line "met" or "not met"
    with the figures behind it."""
    def figure(kind, c, key):
        return medians.get((kind, c), {}).get(key)

    # (target, unit, format, at least (else at most), the product's figure, the bound:
    # a factor times a baseline's figure, or a fixed figure with no baseline)
    checks = [
        ("at 64 connections, throughput ≥ 0.85 × bare hyper's at its best", "req/s", ",.0f",
         True, figure("product", 64, "rps"), 0.85, figure("best", 64, "rps")),
        ("at 64 connections, CPU per request ≤ 1.4 × bare hyper's at its best", "µs", ".1f",
         False, figure("product", 64, "cpu_us"), 1.4, figure("best", 64, "cpu_us")),
        ("at 64 connections, p99 ≤ bare hyper's at its best", "ms", ".3f", False,
         figure("product", 64, "p99"), 1.0, figure("best", 64, "p99")),
        ("at 1 connection, p50 ≤ 1.25 × bare hyper's at its best", "ms", ".3f", False,
         figure("product", 1, "p50"), 1.25, figure("best", 1, "p50")),
        ("at 1 connection, CPU per request ≤ 2 × bare hyper's at its best", "µs", ".1f",
         False, figure("product", 1, "cpu_us"), 2.0, figure("best", 1, "cpu_us")),
        ("idle resident memory (supervisor + worker) ≤ 8 MiB", "MiB", ".1f", False,
         idle["product"] / 1024 if "product" in idle else None, 8.0, "fixed"),
        ("start to first 200 ≤ 10 ms", "ms", ".1f", False,
         start["product"] * 1000 if "product" in start else None, 10.0, "fixed"),
    ]
    lines = []
    once = idle_once.get("product")
    for name, unit, spec, at_least, value, factor, baseline in checks:
        fixed = baseline == "fixed"
        if value is None or baseline is None:
            lines.append(f"- not measured: {name}")
            continue
        bound = factor if fixed else factor * baseline
        met = value >= bound if at_least else value <= bound
        against = (f"{bound:{spec}} {unit}" if fixed or factor == 1.0 else
                   f"{factor:g} × {baseline:{spec}} = {bound:{spec}} {unit}")
        lines.append(f"- {'met' if met else 'not met'}: {name}: {value:{spec}} {unit} "
                     f"against {against}" + (
                         f" (each page counted once: {once / 1024:.1f} MiB)"
                         if name.startswith("idle") and once else ""))
    return lines


def write_results(medians, cold, idle, loaded, start, product_figures, cores):
    idle, idle_once = idle
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "unknown")
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True,
                                 text=True).stdout.split("\n")[0]
    heads = [NAMES[kind] for kind in SERVERS] + [f"product ÷ {NAMES[kind]}"
                                                 for kind in ratio_kinds()]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Product: microservice-rust, production mode, default settings ({product_label()}),",
        "the example app's `GET /`. Bare hyper (`bench/baselines`, `bare-hyper`, answering",
        f"`OK`): at its best, on tokio's default runtime ({os.cpu_count()} worker threads",
        f"here), and in the product's shape, a runtime of {hyper_io_threads()} thread(s).",
        "Bare tiny_http, when measured: 17 threads calling `recv()` (`bare-tiny-http`).",
        f"Medians of {ROUNDS} runs of `wrk --latency -d{DURATION}s` each, the servers in",
        "turn, on loopback; connection counts in ascending order, all",
        "rounds of one before the next. Before each run, the same warm-up for every server:",
        "as many connections as the run will open, one after another, each answered once,",
        "then closed (tiny_http starts a connection thread only when none is idle).",
        "\"Unanswered\" counts the server's connections that, halfway through a run, had",
        "received a request and never sent a byte (`ss`); wrk's percentiles cover answered",
        "requests only, so they mean something only where that count is 0. \"CPU per",
        "request\": user + system time of all the server's processes and threads (for the",
        "product the supervisor and its worker), from `/proc/PID/stat` just before and just",
        "after the run, divided by the requests wrk completed in it.",
        "",
        "| figure | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(heads),
    ]
    for c in CONNECTIONS:
        m = {kind: medians[(kind, c)] for kind in SERVERS}
        lines += [
            table_row(f"`GET /` throughput, {c} connections (req/s)",
                      {k: (v["rps"],) for k, v in m.items()}, ",.0f"),
            table_row(f"`GET /` p50 / p99 latency, {c} connections (ms)",
                      {k: (v["p50"], v["p99"]) for k, v in m.items()}, ".3f"),
            table_row(f"server CPU per request, {c} connections (µs)",
                      {k: (v["cpu_us"],) for k, v in m.items()}, ".1f"),
            table_row(f"connections unanswered halfway, {c} connections (most in a run)",
                      {k: (max(v["unanswered"]),) for k, v in m.items()}, "d", ratios=False),
        ]
    lines += [
        "| cold burst: 64 connections at a fresh server, no warm-up: connections unanswered "
        "halfway (median; most) | " + " | ".join(
            [f"{statistics.median(cold[k]['unanswered']):.0f}; {max(cold[k]['unanswered'])}"
             for k in SERVERS] + ["–"] * len(ratio_kinds())) + " |",
        table_row("cold burst: throughput (req/s)",
                  {k: (v["rps"],) for k, v in cold.items()}, ",.0f"),
        table_row("cold burst: server CPU per request (µs)",
                  {k: (v["cpu_us"],) for k, v in cold.items()}, ".1f"),
        table_row("resident memory, idle (MiB; product: supervisor + worker)",
                  {k: (v / 1024,) for k, v in idle.items()}, ".1f"),
        table_row("resident memory, idle, each page counted once (MiB; the code both "
                  "processes map counted once)",
                  {k: (v / 1024,) for k, v in idle_once.items() if v}, ".1f"),
        table_row(f"resident memory, peak under {loaded_connections()} connections (MiB)",
                  {k: (v / 1024,) for k, v in loaded.items() if v is not None}, ".1f"),
        table_row("start to first 200 (ms)", {k: (v * 1000,) for k, v in start.items()}, ".1f"),
    ]
    if product_figures:
        reload, watchdog, batches = product_figures
        lines += [
            product_only_row("dev reload: library replaced to new code answering (ms)",
                             f"{reload * 1000:.0f}"),
            product_only_row("watchdog (defaults): all threads hung to a new worker "
                             "answering (s)", f"{watchdog:.2f}"),
            product_only_row("11 parallel `/delay/1`, 4 threads, wall time (s)",
                             f"{batches:.2f}"),
        ]
    lines += [
        "",
        "Errors (wrk socket errors and non-2xx answers, all runs): " + ", ".join(
            f"{NAMES[kind]} "
            f"{sum(medians[(kind, c)]['errors'] for c in CONNECTIONS) + cold[kind]['errors']}"
            for kind in SERVERS) + ".",
        "",
        "## Targets",
        "",
        "From the medians above (64 and 1 connections), the product against bare hyper at",
        "its best on this machine, measured in the same run:",
        "",
        *targets(medians, idle, start, idle_once),
        "",
        *cores_section(cores),
        "## Each run",
        "",
        "In order, " + " | ".join(NAMES[kind] for kind in SERVERS) + ": throughput (req/s);",
        "p99 (ms); server CPU per request (µs); connections unanswered halfway.",
        "",
    ]
    rows = [(f"{c} connections", {kind: medians[(kind, c)] for kind in SERVERS})
            for c in CONNECTIONS]
    rows.append(("cold burst, 64 connections", cold))
    for label, m in rows:
        lines.append(f"- {label}: " + "; ".join(
            " | ".join(str(m[kind][key]) for kind in SERVERS)
            for key in ("runs", "p99_runs", "cpu_runs", "unanswered")))
    lines += [
        "",
        "Machine: " + f"{os.cpu_count()} cores ({cpu}), {platform.system()} "
        f"{platform.release()}, {wrk_version}. wrk, the servers and everything else on",
        "the machine share these cores, so absolute figures move from run to run; the ratio",
        "of two servers measured in turn in the same run is the figure to read.",
        "",
        "![throughput, p99 latency and CPU per request against connections](chart.png)",
        "",
    ]
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "w") as f:
        f.write("\n".join(lines))


def write_chart(medians):
    try:
        import matplotlib
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "matplotlib"], check=True)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    labels = {"product": f"microservice-rust ({product_label()})",
              "best": f"bare hyper, tokio's defaults ({os.cpu_count()} threads)",
              "hyper": f"bare hyper ({hyper_io_threads()} io threads)",
              "tiny_http": "bare tiny_http (17 threads)"}
    figure, axes = plt.subplots(3, 1, figsize=(7, 9.5), sharex=True)
    panels = (("rps", "GET / throughput (req/s)"), ("p99", "p99 latency (ms)"),
              ("cpu_us", "server CPU per request (µs)"))
    for axis, (key, title) in zip(axes, panels):
        for kind in SERVERS:
            axis.plot(CONNECTIONS, [medians[(kind, c)][key] for c in CONNECTIONS],
                      marker="o", label=labels[kind])
        axis.set_ylabel(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[1].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[2].set_ylim(bottom=0)
    axes[-1].set_xlabel("connections")
    axes[-1].set_xscale("log", base=2)
    axes[-1].set_xticks(CONNECTIONS)
    axes[-1].set_xticklabels([str(c) for c in CONNECTIONS])
    axes[0].set_title(f"medians of {ROUNDS} runs of wrk -d{DURATION}s, loopback, "
                      f"{os.cpu_count()} cores")
    figure.tight_layout()
    figure.savefig(os.path.join(ROOT, "bench", "chart.png"), dpi=100)


def measure_slowloris():
    """SLOWLORIS_CONNECTIONS connections trickling their heads beside fresh requests, at
    the product with one worker; writes bench/SLOWLORIS.md."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import slowloris
    threads, io_threads = product_threads()
    assumed = " (assumed: the config has no io_threads)" if io_threads is None else ""
    io_threads = io_threads or len(os.sched_getaffinity(0))
    step(f"slowloris: {slowloris.CONNECTIONS} trickling connections, 1 worker")
    server = Server("product", {**PRODUCTION, "workers": 1})
    try:
        server.ready()
        result = slowloris.measure(server.port, server.workers)
    finally:
        server.stop()
    step(f"slowloris: {slowloris.CONNECTIONS} trickling connections, {NAMES['best']}")
    base = Server("best")
    try:
        base.ready()
        baseline = slowloris.measure(base.port, lambda: [base.process.pid])
    finally:
        base.stop()
    starts = sum("started worker" in line for line in server.log)
    restarted = starts > 1 or len(result["worker_pids"]) > 1
    peak, probe, attack = result["worker_peak"], result["probe"], result["attack"]
    answered = probe["requests"] - probe["failures"]
    thread_bound = threads + io_threads + 8
    step(f"slowloris: fresh requests answered {answered}, failed {probe['failures']}, "
         f"p99 {probe['p99_ms']} ms; worker peak {peak.get('Threads', 0)} threads, "
         f"{peak.get('VmRSS', 0) / 1024:.0f} MiB, {peak.get('fds', 0)} fds; "
         f"restarted: {'yes' if restarted else 'no'}")

    def verdict(met):
        return "met" if met else "not met"

    p99 = probe["p99_ms"]
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    lines = [
        "# Slowloris",
        "",
        f"Written by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"({os.cpu_count()} cores, fd limit {fd_limit} per process). Product in production",
        f"mode, default settings ({product_label()}) but one worker,",
        f"the example app. Attack (bench/slowloris.py): {slowloris.CONNECTIONS:,} connections,",
        f"each sending a request line and then a header line every {slowloris.DRIP:g} s, never",
        "ending its head; a connection the server closes, answered or not, is opened again at",
        "once. Once all are open, a fresh connection with `GET /` every 20 ms for",
        f"{slowloris.STEADY:g} s. The worker's figures are the highest of samples taken every",
        "second for the whole attack, from its first connection to its last.",
        "",
        f"| figure | product, 1 worker | {NAMES['best']} |",
        "|---|---|---|",
        *heads_rows(result, baseline),
        f"| worker restarted during the run | {'yes' if restarted else 'no'} "
        f"(`started worker` lines: {starts}; worker PIDs seen: {len(result['worker_pids'])}) "
        "| – |",
        "",
        "Answers: the status a trickling connection got before the server closed it; `none`",
        "when it was closed without one (hyper closes a head not complete within",
        "keep_alive_timeout_s without answering).",
        "",
        "## Targets",
        "",
        f"- {verdict(probe['failures'] == 0)}: no fresh request fails: "
        f"{probe['failures']} failed",
        f"- {verdict(p99 is not None and p99 < 20)}: fresh requests' p99 < 20 ms: {p99} ms",
        f"- {verdict(not restarted)}: no worker restart: "
        f"{'restarted' if restarted else 'not restarted'}",
        f"- {verdict(peak.get('Threads', 0) <= thread_bound)}: worker threads ≤ threads + "
        f"io_threads + 8 = {threads} + {io_threads} + 8 = {thread_bound}: "
        f"{peak.get('Threads', 0):,}{assumed}",
        f"- {verdict(peak.get('VmRSS', 0) <= 128 * 1024)}: worker resident memory ≤ 128 MiB: "
        f"{peak.get('VmRSS', 0) / 1024:.0f} MiB",
        "",
    ]
    lines += trickling_bodies(threads, io_threads, slowloris, verdict)
    lines += uploads(slowloris, verdict)
    with open(os.path.join(ROOT, "bench", "SLOWLORIS.md"), "w") as f:
        f.write("\n".join(lines))
    return result


def answered_of(result):
    """Fresh requests answered / failed, as the tables give them."""
    probe = result["probe"]
    return f"{probe['requests'] - probe['failures']:,} / {probe['failures']}"


def heads_rows(*results):
    """SLOWLORIS.md's rows for the trickling heads, a column per server's result."""
    def row(label, pick):
        return f"| {label} | " + " | ".join(pick(r) for r in results) + " |"

    return [
        row("trickling connections open (at the start; fewest later)",
            lambda r: f"{r['ready']['ready']:,}; {r['attack']['least_open']:,}"),
        row("fresh requests: answered / failed", answered_of),
        row("fresh requests: p50 / p99 / max (ms)", lambda r: f"{r['probe']['p50_ms']} / "
            f"{r['probe']['p99_ms']} / {r['probe']['max_ms']}"),
        row("trickling connections closed by the server, by answer", lambda r: ", ".join(
            f"{k}: {v:,}" for k, v in sorted(r["attack"]["answers"].items())) or "none"),
        row("trickling connections that could not connect",
            lambda r: f"{r['attack']['connect_failures']:,}"),
        row("a trickling connection lived (s, median / max)",
            lambda r: f"{r['attack']['lifetime_s']['median']} / "
            f"{r['attack']['lifetime_s']['max']}"),
        row("an idle connection lived (s)", lambda r: f"{r['idle_lifetime_s']}"),
        row("serving process: threads (peak)",
            lambda r: f"{r['worker_peak'].get('Threads', 0):,}"),
        row("serving process: resident memory (peak, MiB)",
            lambda r: f"{r['worker_peak'].get('VmRSS', 0) / 1024:.0f}"),
        row("serving process: open fds (peak)", lambda r: f"{r['worker_peak'].get('fds', 0):,}"),
    ]


UPLOAD_CLIENTS = int(os.environ.get("UPLOAD_CLIENTS", "500"))
UPLOAD_BYTES = 10 * 1024 * 1024
UPLOAD_SECONDS = float(os.environ.get("UPLOAD_SECONDS", "15"))
# The product's budget for bodies in the uploads case: the default of a container given
# 4 GiB (a quarter), set explicitly so that the case is the same on every machine.
UPLOAD_BUDGET = 1 << 30
# What the worker may hold beyond the bodies' budget: its idle memory, hyper's buffers of
# 500 connections (64 KiB each at most) and what the allocator keeps.
UPLOAD_MARGIN_MIB = 128


def uploads(slowloris, verdict):
    """UPLOAD_CLIENTS clients uploading 10 MiB bodies at once and again, beside fresh
    requests, at the product (one worker, max_body_memory_bytes 1 GiB) and at bare hyper
    at its best; the lines of SLOWLORIS.md that say how it went."""
    results = {}
    for kind in ("product", "best"):
        step(f"uploads: {UPLOAD_CLIENTS} clients × 10 MiB, {NAMES[kind]}")
        config = {**PRODUCTION, "workers": 1, "max_body_memory_bytes": UPLOAD_BUDGET}
        server = Server(kind, config if kind == "product" else None)
        try:
            server.ready()
            pids = server.workers if kind == "product" else (lambda: [server.process.pid])
            result = slowloris.measure_uploads(server.port, pids, UPLOAD_CLIENTS,
                                               UPLOAD_BYTES, UPLOAD_SECONDS)
        finally:
            server.stop()
        if kind == "product":
            starts = sum("started worker" in line for line in server.log)
            result["restarted"] = starts > 1 or len(result["worker_pids"]) > 1
        results[kind] = result
        step(f"uploads, {NAMES[kind]}: {result['uploads']['answers']}, fresh requests p99 "
             f"{result['probe']['p99_ms']} ms, peak {result['worker_peak'].get('VmRSS', 0) // 1024} MiB")

    def row(label, pick):
        return f"| {label} | {pick(results['product'])} | {pick(results['best'])} |"

    product = results["product"]
    peak_mib = product["worker_peak"].get("VmRSS", 0) / 1024
    bound = UPLOAD_BUDGET / (1 << 20) + UPLOAD_MARGIN_MIB
    answers = product["uploads"]["answers"]
    unclear = sum(n for status, n in answers.items() if status not in ("405", "503"))
    probe = product["probe"]
    lines = [
        "## Uploads",
        "",
        f"{UPLOAD_CLIENTS} clients each uploading a body of 10 MiB at once (`POST /`,",
        "`Content-Length` given, the body sent whole without waiting for an answer), each",
        f"doing it again as soon as it is answered, for {UPLOAD_SECONDS:g} s, beside a fresh",
        "`GET /` every 20 ms. The product: one worker, `max_body_memory_bytes` 1 GiB (the",
        "default in a container given 4 GiB), the example app (which answers a `POST /` with",
        "405). Bare hyper at its best reads every body whole, with no bound.",
        "",
        f"| figure | product, 1 worker | {NAMES['best']} |",
        "|---|---|---|",
        row("uploads answered, by status", lambda r: ", ".join(
            f"{k}: {v:,}" for k, v in sorted(r["uploads"]["answers"].items()))),
        row("fresh requests: answered / failed", answered_of),
        row("fresh requests: p50 / p99 / max (ms)", lambda r: f"{r['probe']['p50_ms']} / "
            f"{r['probe']['p99_ms']} / {r['probe']['max_ms']}"),
        row("serving process: resident memory (peak, MiB)",
            lambda r: f"{r['worker_peak'].get('VmRSS', 0) / 1024:.0f}"),
        row("serving process: threads (peak)",
            lambda r: f"{r['worker_peak'].get('Threads', 0):,}"),
        "",
        "503: refused at once with `Retry-After: 1`, the worker's budget for bodies full;",
        "405: read whole and answered by the app; `none`: no answer (a crash or a reset).",
        "",
        "### Targets",
        "",
        f"- {verdict(peak_mib <= bound)}: the worker's memory ≤ the budget + "
        f"{UPLOAD_MARGIN_MIB} MiB = {bound:.0f} MiB: {peak_mib:.0f} MiB",
        f"- {verdict(unclear == 0)}: every upload answered or refused with a status: "
        f"{unclear} otherwise",
        f"- {verdict(not product['restarted'])}: no worker restart (0 crashes): "
        f"{'restarted' if product['restarted'] else 'not restarted'}",
        f"- {verdict(probe['failures'] == 0 and probe['p99_ms'] is not None and probe['p99_ms'] < 50)}"
        f": fresh requests all answered, p99 < 50 ms: {probe['failures']} failed, p99 "
        f"{probe['p99_ms']} ms",
        "",
    ]
    return lines


def trickling_bodies(threads, io_threads, slowloris, verdict):
    """20, then 2,000 clients trickling a request body beside fresh requests, each at a
    fresh product with one worker; the lines of SLOWLORIS.md that say how it went."""
    seconds = float(os.environ.get("SLOWLORIS_BODY_SECONDS", "15"))
    results = {}
    for clients in (20, 2000):
        step(f"trickling bodies: {clients} clients, 1 worker")
        server = Server("product", {**PRODUCTION, "workers": 1})
        try:
            server.ready()
            result = slowloris.measure(server.port, server.workers, clients, seconds,
                                       bodies=True)
        finally:
            server.stop()
        starts = sum("started worker" in line for line in server.log)
        result["restarted"] = starts > 1 or len(result["worker_pids"]) > 1
        results[clients] = result
        probe = result["probe"]
        step(f"trickling bodies, {clients} clients: fresh requests failed "
             f"{probe['failures']}, p99 {probe['p99_ms']} ms")

    def row(label, pick):
        return f"| {label} | {pick(results[20])} | {pick(results[2000])} |"

    lines = [
        "## Trickling bodies",
        "",
        "Each client sends the whole head of a POST declaring a body of 1,000,000 bytes, then",
        f"one byte of the body every {slowloris.DRIP:g} s (as `slowhttptest -B`), beside a fresh",
        f"`GET /` every 20 ms for {seconds:g} s; a fresh product with one worker for each count.",
        "The worker reads bodies on its I/O thread, so none of its 17 pool threads waits for",
        "them.",
        "",
        "| figure | 20 clients | 2,000 clients |",
        "|---|---|---|",
        row("fresh requests: answered / failed", answered_of),
        row("fresh requests: p50 / p99 / max (ms)", lambda r: f"{r['probe']['p50_ms']} / "
            f"{r['probe']['p99_ms']} / {r['probe']['max_ms']}"),
        row("worker: threads (peak)", lambda r: f"{r['worker_peak'].get('Threads', 0):,}"),
        row("worker: resident memory (peak, MiB)",
            lambda r: f"{r['worker_peak'].get('VmRSS', 0) / 1024:.0f}"),
        row("worker restarted during the run", lambda r: "yes" if r["restarted"] else "no"),
        "",
        "### Targets",
        "",
    ]
    for clients, result in results.items():
        probe, p99 = result["probe"], result["probe"]["p99_ms"]
        lines += [
            f"- {verdict(probe['failures'] == 0)}: {clients:,} clients: no fresh request "
            f"fails: {probe['failures']} failed",
            f"- {verdict(p99 is not None and p99 < 20)}: {clients:,} clients: fresh requests' "
            f"p99 < 20 ms: {p99} ms",
            f"- {verdict(not result['restarted'])}: {clients:,} clients: no worker restart: "
            f"{'restarted' if result['restarted'] else 'not restarted'}",
        ]
    lines.append("")
    return lines


def main():
    if ARGS.mode == "slowloris":
        if "product" not in SERVERS:
            sys.exit("slowloris measures the product: SERVERS must include product")
        prepare(product=True)
        measure_slowloris()
        print(open(os.path.join(ROOT, "bench", "SLOWLORIS.md")).read())
        return
    prepare(product="product" in SERVERS)
    step("throughput and latency: " + ", ".join(NAMES[kind] for kind in SERVERS) + " in turn")
    medians, idle, loaded = measure_throughput()
    step("cold bursts: 64 connections at freshly started servers")
    cold = cold_bursts()
    step("resident memory, idle: " + ", ".join(
        f"{NAMES[kind]} {idle[0][kind]} KiB" for kind in SERVERS))
    start = measure_start()
    product_figures = None
    if "product" in SERVERS:
        product_figures = (measure_reload(), measure_watchdog(), measure_batches())
    cores = measure_cores() if {"product", "best"} <= set(SERVERS) else None
    write_results(medians, cold, idle, loaded, start, product_figures, cores)
    write_chart(medians)
    if "product" in SERVERS:
        measure_slowloris()
        step("wrote bench/RESULTS.md, bench/chart.png and bench/SLOWLORIS.md")
    else:
        step("wrote bench/RESULTS.md and bench/chart.png (no slowloris without product)")
    print(open(os.path.join(ROOT, "bench", "RESULTS.md")).read())


if __name__ == "__main__":
    main()
