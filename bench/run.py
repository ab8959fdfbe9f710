#!/usr/bin/env python3
"""`make bench`: the product's numbers beside bare tiny_http, measured in the same run.

Product: microservice-rust in production mode with default settings (17 threads) serving
the example app. Baseline: examples/bare-tiny-http.rs, 17 threads calling recv(). Load:
wrk on loopback, each run bounded in time and preceded by the same warm-up for both.
Product and baseline alternate, ROUNDS times,
and the medians are reported. Writes bench/RESULTS.md and bench/chart.png, then runs the
slowloris measurement (bench/slowloris.py) into bench/SLOWLORIS.md; `run.py slowloris`
runs that alone.

Environment: ROUNDS (default 5), DURATION (seconds per wrk run, default 5),
CONNECTIONS (default "1,16,64,256,1024").
"""

import json
import os
import platform
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
BINARY = os.path.join(RELEASE, "microservice-rust")
BASELINE = os.path.join(RELEASE, "examples", "bare-tiny-http")
EXAMPLE_LIB = os.path.join(RELEASE, "libexample_rum_counter.so")
FIXTURE_LIB = os.path.join(RELEASE, "libfixture_app.so")

ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = int(os.environ.get("DURATION", "5"))
CONNECTIONS = [int(c) for c in os.environ.get("CONNECTIONS", "1,16,64,256,1024").split(",")]


def step(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare():
    missing = [package for tool, package in (("wrk", "wrk"), ("ss", "iproute2"))
               if not shutil.which(tool)]
    if missing:
        step(f"installing {' '.join(missing)} (apt)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    step("building release binaries")
    for args in (["-p", "microservice-rust", "-p", "example-rum-counter", "-p", "fixture-app"],
                 ["-p", "microservice-rust", "--example", "bare-tiny-http"]):
        subprocess.run(["cargo", "build", "--release", "--quiet", *args], cwd=ROOT, check=True)
    # 1024 connections need more than 1024 fds on both sides.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


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
    """A server process; `kind` is "product" or "baseline"."""

    def __init__(self, kind, config=None, app=EXAMPLE_LIB):
        self.kind = kind
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="msr-bench-")
        if kind == "product":
            path = os.path.join(self.dir, "config.json")
            with open(path, "w") as f:
                json.dump(config or {"mode": "production"}, f)
            command = [BINARY, "--host", "127.0.0.1", "--port", str(self.port),
                       "--app", app, "--config", path]
        else:
            command = [BASELINE, f"127.0.0.1:{self.port}"]
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self.log = []
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self):
        for line in self.process.stderr:
            self.log.append(line)

    def ready(self):
        wait_answer(self.port)
        return time.monotonic() - self.started

    def pids(self):
        """The process and its children (the workers)."""
        pids = [self.process.pid]
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return pids

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
    thread, so this leaves both servers with a thread for every connection wrk will open.
    Without it a burst of new connections can leave some unread (see `cold_bursts`)."""
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


def wrk(port, connections):
    """One bounded wrk run; returns requests/s, p50 and p99 in milliseconds, errors, and
    the connections left unanswered halfway through the run."""
    threads = min(2, connections)
    run = subprocess.Popen(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{DURATION}s", "--latency",
         "--timeout", "5s", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, text=True)
    time.sleep(DURATION / 2)
    left = unanswered(port)
    out = run.communicate(timeout=DURATION + 30)[0]
    result = {"rps": 0.0, "p50": None, "p99": None, "errors": 0, "unanswered": left}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(words[1])
        elif len(words) == 2 and words[0] in ("50%", "99%"):
            result["p" + words[0][:-1]] = milliseconds(words[1])
        elif line.strip().startswith("Socket errors:"):
            result["errors"] += sum(int(w.strip(",")) for w in words if w.strip(",").isdigit())
        elif line.strip().startswith("Non-2xx"):
            result["errors"] += int(words[-1])
    return result


def milliseconds(text):
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def summarize(runs):
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50": statistics.median(r["p50"] for r in runs),
        "p99": statistics.median(r["p99"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "runs": [round(r["rps"]) for r in runs],
        "p99_runs": [round(r["p99"], 3) for r in runs],
        "unanswered": [r["unanswered"] for r in runs],
    }


def report(label, kind, result):
    step(f"{label}, {kind:8}: {result['rps']:9.0f} req/s, p50 {result['p50']:.3f} ms, "
         f"p99 {result['p99']:.3f} ms, unanswered {result['unanswered']}, "
         f"errors {result['errors']}")


def measure_throughput():
    """Alternates product and baseline at each connection count, each run after the same
    warm-up; medians per figure."""
    samples = {(kind, c): [] for kind in ("product", "baseline") for c in CONNECTIONS}
    memory = {"product": [], "baseline": []}
    servers = {"product": Server("product"), "baseline": Server("baseline")}
    try:
        for server in servers.values():
            server.ready()
        time.sleep(0.5)
        idle = {kind: s.rss_kib() for kind, s in servers.items()}
        # Connection counts in ascending order, all rounds of one before the next: after
        # a burst of connections tiny_http's idle threads wind down for up to a minute, and
        # a run at few connections should not pay for the burst before it.
        for c in CONNECTIONS:
            for round_ in range(1, ROUNDS + 1):
                for kind in ("product", "baseline"):
                    server = servers[kind]
                    peak = [0]
                    done = threading.Event()

                    def sample(server=server, peak=peak, done=done):
                        while not done.wait(0.25):
                            peak[0] = max(peak[0], server.rss_kib())

                    warm_up(server.port, c)
                    sampler = threading.Thread(target=sample)
                    sampler.start()
                    result = wrk(server.port, c)
                    done.set()
                    sampler.join()
                    if c == 64:
                        memory[kind].append(peak[0])
                    samples[(kind, c)].append(result)
                    settle(servers.values())
                    report(f"round {round_}/{ROUNDS}, {c:4} connections", kind, result)
    finally:
        for server in servers.values():
            server.stop()
    medians = {key: summarize(runs) for key, runs in samples.items()}
    loaded = {kind: statistics.median(values) for kind, values in memory.items()}
    return medians, idle, loaded


def cold_bursts(connections=64):
    """wrk's connections arriving at once at freshly started servers, with no warm-up:
    the case in which tiny_http's pool leaves connections unread (src/acceptor.rs)."""
    samples = {"product": [], "baseline": []}
    for round_ in range(1, ROUNDS + 1):
        for kind in samples:
            server = Server(kind)
            try:
                server.ready()
                result = wrk(server.port, connections)
            finally:
                server.stop()
            samples[kind].append(result)
            report(f"cold burst {round_}/{ROUNDS}, {connections} connections", kind, result)
    return {kind: summarize(runs) for kind, runs in samples.items()}


def measure_start():
    times = {"product": [], "baseline": []}
    for _ in range(5):
        for kind in times:
            server = Server(kind)
            times[kind].append(server.ready())
            server.stop()
    step(f"start to first 200: product {statistics.median(times['product']) * 1000:.1f} ms, "
         f"baseline {statistics.median(times['baseline']) * 1000:.1f} ms")
    return {kind: statistics.median(values) for kind, values in times.items()}


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
    """Default watchdog (interval 5 s, timeout 2 s, 3 failures): all 17 threads hang."""
    server = Server("product", config={"mode": "production", "request_timeout_s": 0})
    try:
        server.ready()
        for _ in range(17):
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


def ratio(product, baseline):
    return product / baseline if baseline else float("nan")


def write_results(medians, cold, idle, loaded, start, reload, watchdog, batches):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "unknown")
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True,
                                 text=True).stdout.split("\n")[0]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Product: microservice-rust, production mode, default settings (17 threads), the",
        "example app's `GET /`. Baseline: bare tiny_http, 17 threads calling `recv()`",
        f"(`examples/bare-tiny-http.rs`). Medians of {ROUNDS} alternating runs of",
        f"`wrk --latency -d{DURATION}s` each, on loopback; connection counts in ascending",
        "order, all rounds of one before the next. Before each run, the same warm-up for",
        "both: as many connections as the run will open, one after another, each answered",
        "once, then closed (tiny_http starts a connection thread only when none is idle).",
        "\"Unanswered\" counts the server's connections that, halfway through a run, had",
        "received a request and never sent a byte (`ss`); wrk's percentiles cover answered",
        "requests only, so they mean something only where that count is 0.",
        "",
        "| figure | product | baseline | ratio |",
        "|---|---|---|---|",
    ]
    for c in CONNECTIONS:
        p, b = medians[("product", c)], medians[("baseline", c)]
        lines += [
            f"| `GET /` throughput, {c} connections (req/s) | {p['rps']:,.0f} | "
            f"{b['rps']:,.0f} | {ratio(p['rps'], b['rps']):.2f} |",
            f"| `GET /` p50 / p99 latency, {c} connections (ms) | "
            f"{p['p50']:.3f} / {p['p99']:.3f} | {b['p50']:.3f} / {b['p99']:.3f} | "
            f"{ratio(p['p50'], b['p50']):.2f} / {ratio(p['p99'], b['p99']):.2f} |",
            f"| connections unanswered halfway, {c} connections (most in a run) | "
            f"{max(p['unanswered'])} | {max(b['unanswered'])} | – |",
        ]
    p, b = cold["product"], cold["baseline"]
    lines += [
        f"| cold burst: 64 connections at a fresh server, no warm-up: connections "
        f"unanswered halfway (median; most) | {statistics.median(p['unanswered']):.0f}; "
        f"{max(p['unanswered'])} | {statistics.median(b['unanswered']):.0f}; "
        f"{max(b['unanswered'])} | – |",
        f"| cold burst: throughput (req/s) | {p['rps']:,.0f} | {b['rps']:,.0f} | "
        f"{ratio(p['rps'], b['rps']):.2f} |",
        f"| resident memory, idle (MiB; product: supervisor + worker) | {idle['product'] / 1024:.1f} | "
        f"{idle['baseline'] / 1024:.1f} | {ratio(idle['product'], idle['baseline']):.2f} |",
        f"| resident memory, peak under 64 connections (MiB) | {loaded['product'] / 1024:.1f} | "
        f"{loaded['baseline'] / 1024:.1f} | {ratio(loaded['product'], loaded['baseline']):.2f} |",
        f"| start to first 200 (ms) | {start['product'] * 1000:.1f} | "
        f"{start['baseline'] * 1000:.1f} | {ratio(start['product'], start['baseline']):.2f} |",
        f"| dev reload: library replaced to new code answering (ms) | {reload * 1000:.0f} | – | – |",
        f"| watchdog (defaults): all threads hung to a new worker answering (s) | {watchdog:.2f} | – | – |",
        f"| 11 parallel `/delay/1`, 4 threads, wall time (s) | {batches:.2f} | – | – |",
        "",
        "Errors (wrk socket errors and non-2xx answers, all runs): " + ", ".join(
            f"{kind} {sum(medians[(kind, c)]['errors'] for c in CONNECTIONS) + cold[kind]['errors']}"
            for kind in ("product", "baseline")) + ".",
        "",
        "Each run in order, product | baseline: throughput (req/s); p99 (ms); connections",
        "unanswered halfway.",
        "",
    ]
    rows = [(f"{c} connections", medians[("product", c)], medians[("baseline", c)])
            for c in CONNECTIONS]
    rows.append(("cold burst, 64 connections", cold["product"], cold["baseline"]))
    for label, p, b in rows:
        lines.append(f"- {label}: {p['runs']} | {b['runs']}; {p['p99_runs']} | "
                     f"{b['p99_runs']}; {p['unanswered']} | {b['unanswered']}")
    lines += [
        "",
        "Machine: " + f"{os.cpu_count()} cores ({cpu}), {platform.system()} "
        f"{platform.release()}, {wrk_version}. wrk, both servers and everything else on",
        "the machine share these cores, so absolute figures move from run to run; the ratio",
        "of two servers measured in turn in the same run is the figure to read.",
        "",
        "![throughput and p99 latency against connections](chart.png)",
        "",
    ]
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "w") as f:
        f.write("\n".join(lines))


def write_chart(medians):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "matplotlib"], check=True)
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for kind, label in (("product", "microservice-rust (17 threads)"),
                        ("baseline", "bare tiny_http (17 threads)")):
        top.plot(CONNECTIONS, [medians[(kind, c)]["rps"] for c in CONNECTIONS],
                 marker="o", label=label)
        bottom.plot(CONNECTIONS, [medians[(kind, c)]["p99"] for c in CONNECTIONS],
                    marker="o", label=label)
    top.set_ylabel("GET / throughput (req/s)")
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_yscale("log")
    bottom.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    bottom.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    bottom.set_xlabel("connections")
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(CONNECTIONS)
    bottom.set_xticklabels([str(c) for c in CONNECTIONS])
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
        axis.legend()
    top.set_title(f"medians of {ROUNDS} runs of wrk -d{DURATION}s, loopback, {os.cpu_count()} cores")
    figure.tight_layout()
    figure.savefig(os.path.join(ROOT, "bench", "chart.png"), dpi=100)


def measure_slowloris():
    """10,000 connections trickling their heads beside fresh requests, with one worker and
    with two; writes bench/SLOWLORIS.md."""
    import slowloris
    results = {}
    for workers in (1, 2):
        step(f"slowloris: {slowloris.CONNECTIONS} trickling connections, {workers} worker(s)")
        server = Server("product", {"mode": "production", "workers": workers})
        server.ready()
        worker = server.pids()[1]
        results[workers] = slowloris.measure(server.port, worker)
        server.stop()
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    lines = [
        "# Slowloris",
        "",
        f"Written by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"({os.cpu_count()} cores, fd limit {fd_limit} per process). Product in production",
        "mode, default settings (`keep_alive_timeout_s` 5), the example app. Attack",
        f"(bench/slowloris.py): {slowloris.CONNECTIONS} connections, each sending a request",
        f"line and then a header line every {slowloris.DRIP:g} s, never ending its head; a",
        "connection the server closes is opened again at once. Once all are open, a fresh",
        f"connection with `GET /` every 20 ms for {slowloris.STEADY:g} s; the worker's figures",
        "are the highest of one-second samples (the first worker, with two).",
        "",
        "| figure | 1 worker | 2 workers |",
        "|---|---|---|",
    ]
    one, two = results[1], results[2]
    def row(label, pick):
        return f"| {label} | {pick(one)} | {pick(two)} |"
    lines += [
        row("trickling connections open (at the start; fewest later)",
            lambda r: f"{r['ready']['ready']:,}; {r['attack']['least_open']:,}"),
        row("fresh requests: answered / failed",
            lambda r: f"{r['probe']['requests'] - r['probe']['failures']:,} / {r['probe']['failures']}"),
        row("fresh requests: p50 / p99 / max (ms)",
            lambda r: f"{r['probe']['p50_ms']} / {r['probe']['p99_ms']} / {r['probe']['max_ms']}"),
        row("trickling connections closed by the server, by answer",
            lambda r: ", ".join(f"{k}: {v:,}" for k, v in sorted(r['attack']['answers'].items()))),
        row("a trickling connection lived (s, median / max)",
            lambda r: f"{r['attack']['lifetime_s']['median']} / {r['attack']['lifetime_s']['max']}"),
        row("an idle connection lived (s)", lambda r: r["idle_lifetime_s"]),
        row("worker: threads (peak)", lambda r: f"{r['worker_peak'].get('Threads', 0):,}"),
        row("worker: resident memory (peak, MiB)",
            lambda r: f"{r['worker_peak'].get('VmRSS', 0) / 1024:.0f}"),
        row("worker: open fds (peak)", lambda r: f"{r['worker_peak'].get('fds', 0):,}"),
        "",
        "Answers: 408 at the head deadline, 503 when shed near the fd limit, `none` when the",
        "connection ended without one.",
        "",
    ]
    with open(os.path.join(ROOT, "bench", "SLOWLORIS.md"), "w") as f:
        f.write("\n".join(lines))
    return results


def main():
    prepare()
    if sys.argv[1:] == ["slowloris"]:
        measure_slowloris()
        print(open(os.path.join(ROOT, "bench", "SLOWLORIS.md")).read())
        return
    step("throughput and latency, product and baseline in turn")
    medians, idle, loaded = measure_throughput()
    step("cold bursts: 64 connections at freshly started servers")
    cold = cold_bursts()
    step(f"resident memory: idle product {idle['product']} KiB, baseline {idle['baseline']} KiB")
    start = measure_start()
    reload = measure_reload()
    watchdog = measure_watchdog()
    batches = measure_batches()
    write_results(medians, cold, idle, loaded, start, reload, watchdog, batches)
    write_chart(medians)
    measure_slowloris()
    step("wrote bench/RESULTS.md, bench/chart.png and bench/SLOWLORIS.md")
    print(open(os.path.join(ROOT, "bench", "RESULTS.md")).read())


if __name__ == "__main__":
    main()
