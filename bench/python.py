#!/usr/bin/env python3
"""`make bench-python`: Python WSGI servers beside microservice-rust's Python host,
serving the same two apps, measured in the same run.

Apps (bench/python/): flask_app.py, a small Flask app (`GET /` answers `OK`, `/json`,
`/sleep/S`, `/spin/S`), and wsgi_hello.py, a bare PEP 3333 callable (`GET /` answers
`Hello, World!`, `/sleep/S`, `/spin/S`). wrk loads `GET /` of each.

Servers, each with its defaults except what binds it to 127.0.0.1:PORT and points it at
the app (`--help` of each server says its defaults; PYTHON.md lists every command):
  gunicorn-sync     gunicorn, sync worker class, 1 worker (its defaults)
  gunicorn-gthread  gunicorn --worker-class gthread --threads 17: as many threads as
                    microservice-rust's pool and Armada's mod_wsgi daemon (threads=17)
  granian           granian --interface wsgi (1 worker, 1 runtime thread; blocking
                    threads up to backpressure / 2 = 512, started as needed)
  uwsgi             uwsgi --http with --master --http-keepalive --need-app --die-on-term
                    --disable-logging (1 worker process, 1 thread, and its HTTP router)
  waitress          waitress-serve (4 threads)
  apache            Apache 2.4 (Debian's event MPM settings) + mod_wsgi in daemon mode,
                    processes=1 threads=17 as Armada's Flask image; no access log
  microservice-rust production mode, every other setting its default (17 threads, 1
                    worker); needs target/release/libmicroservice_rust_python.so, the
                    Python host, and is skipped with a note while that is missing

Steps:
  1. wrk from apt if missing; a virtualenv in target/bench-python-venv made with Debian's
     /usr/bin/python3, bench/python/requirements.txt installed in it (skipped when every
     pin is already satisfied); apache2 and libapache2-mod-wsgi-py3 from apt if missing
     (apache is left out, with apt's reason, when they do not install); the release
     build of microservice-rust and its Python host when older than their sources.
  2. Per app: every server started at once; resident memory of each whole process tree
     idle; then at 1 connection (`wrk -t1 -c1`) and at 64 (`wrk -t2 -c64`), ROUNDS
     rounds in which the servers take turns, the order rotated by one each round so that
     the machine's noise hits all alike; before each run a 1 s wrk warm-up at the same
     connection count. Per run: req/s, p50 and p99 latency, server CPU per request
     (utime + stime of every process of the server's tree, all threads included, from
     /proc/PID/stat just before and after the run, divided by the requests wrk
     completed), wrk's socket errors and non-2xx answers. Medians over the rounds.
     Resident memory again after the load.
  3. Deadline, per server, at the Flask app: the server's own request timeout set to
     1 s where it has one (gunicorn --timeout 1, uwsgi --harakiri 1, mod_wsgi
     request-timeout=1, microservice-rust request_timeout_s: 1; Granian and waitress
     have none). A fresh server gets 4 parallel `GET /sleep/30`; another fresh one 4
     parallel `GET /spin/30`. For each request, what came back (status, or the
     connection's fate) and when (waited for up to 35 s); whether `GET /` is answered
     within 2 s while they run (3 s in) and after they are back; which processes of the
     server's tree (sampled every 0.1 s) were gone or new (a worker killed, replaced).
     uWSGI runs it twice: as measured, and without --http-keepalive (with it, the HTTP
     router never answers a client whose worker harakiri killed).
  4. Writes bench/PYTHON.md (tables per app and connection count with the ratios to
     Granian and to gunicorn sync, memory, deadline, machine, the exact commands) and
     prints a summary. Every server started is stopped (its process group, then any
     process left in its session), on success, failure or Ctrl-C.

The machine's cores are shared by wrk, the servers and everything else: absolute
figures move from run to run; the ratio of two servers measured in turn in one run is
the figure to read.
"""

import argparse
import atexit
import http.client
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import measure

SERVER_KEYS = ("gunicorn-sync", "gunicorn-gthread", "granian", "uwsgi", "waitress",
               "apache", "microservice-rust")
APP_KEYS = ("flask", "wsgi")
# The deadline also runs uWSGI without --http-keepalive: with it, the HTTP router leaves
# the client waiting when harakiri kills the worker; without it, it closes the connection.
DEADLINE_KEYS = SERVER_KEYS[:4] + ("uwsgi-close",) + SERVER_KEYS[4:]


def parse_args(argv=None):
    """The command line. --help prints this file's docstring and exits 0; a wrong
    argument prints the usage to stderr and exits 2; nothing starts before."""
    parser = argparse.ArgumentParser(
        prog="bench/python.py", description=__doc__.strip(), allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive, default=None,
                        help="rounds per app and connection count (default 3)")
    parser.add_argument("--duration", type=positive, default=None,
                        help="seconds per measured wrk run (default 5)")
    parser.add_argument("--servers", type=server_list, default=list(SERVER_KEYS),
                        help="a comma list of " + ", ".join(SERVER_KEYS) + " (default all)")
    parser.add_argument("--apps", type=app_list, default=list(APP_KEYS),
                        help="a comma list of flask, wsgi (default both)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 2 s (unless --rounds or --duration say otherwise)")
    parser.add_argument("--only", choices=("throughput", "deadline"),
                        help="only the wrk runs and memory, or only the deadline scenario")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    return args


def positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return value


def comma_list(text, known, what):
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(known)}; unknown {what}: "
            f"{', '.join(unknown) or '(none given)'}")
    return [k for k in known if k in wanted]


def server_list(text):
    return comma_list(text, SERVER_KEYS, "server")


def app_list(text):
    return comma_list(text, APP_KEYS, "app")


ARGS = parse_args() if __name__ == "__main__" else None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS_DIR = os.path.join(ROOT, "bench", "python")
REQUIREMENTS = os.path.join(APPS_DIR, "requirements.txt")
OUTPUT = os.path.join(ROOT, "bench", "PYTHON.md")
TARGET = os.path.abspath(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"))
RELEASE = os.path.join(TARGET, "release")
PRODUCT_BINARY = os.path.join(RELEASE, "microservice-rust")
PYTHON_HOST = os.path.join(RELEASE, "libmicroservice_rust_python.so")
PYTHON_HOST_PACKAGE = "microservice-rust-python"
VENV = os.path.join(TARGET, "bench-python-venv")
SYSTEM_PYTHON = "/usr/bin/python3"
MOD_WSGI = "/usr/lib/apache2/modules/mod_wsgi.so"

NAMES = {"gunicorn-sync": "gunicorn sync", "gunicorn-gthread": "gunicorn gthread",
         "granian": "Granian", "uwsgi": "uWSGI",
         "uwsgi-close": "uWSGI without --http-keepalive", "waitress": "waitress",
         "apache": "Apache mod_wsgi", "microservice-rust": "microservice-rust"}
# The servers every table is divided by, when they were measured.
BASELINES = ("granian", "gunicorn-sync")
CONNECTIONS = (1, 64)
WARM_UP_SECONDS = 1
# The deadline scenario.
DEADLINE_S = 1
SLOW_SECONDS = 30
SLOW_REQUESTS = 4
WAIT_CAP_S = 35
PROBE_AT_S = 3
PROBE_TIMEOUT_S = 2
# Past this a slow request counts as having run its course (not cut at a deadline).
RAN_ITS_COURSE_S = 25
# Gunicorn's, Armada's mod_wsgi daemon's and microservice-rust's thread counts.
THREADS = 17


class App:
    def __init__(self, key, name, module, expect):
        self.key, self.name, self.module, self.expect = key, name, module, expect
        self.file = os.path.join(APPS_DIR, module + ".py")
        # PEP 3333's and mod_wsgi's name; the Flask app exports it beside `app`.
        self.callable = "application"
        self.target = f"{module}:{self.callable}"


APPS = {"flask": App("flask", "Flask", "flask_app", "OK"),
        "wsgi": App("wsgi", "plain WSGI", "wsgi_hello", "Hello, World!")}


def step(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- Preparing the machine ---------------------------------------------------------------

def apt_install(*packages):
    """apt-get install; returns None, or why it failed (its last lines)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    failure = None
    for update_first in (False, True):
        if update_first:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        try:
            run = subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env,
                                 capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"apt-get install {' '.join(packages)}: {error}"
        if run.returncode == 0:
            return None
        lines = (run.stderr.strip() or run.stdout.strip()).splitlines()
        failure = (f"apt-get install {' '.join(packages)} exited {run.returncode}: "
                   + " / ".join(lines[-2:]))
    return failure


def install_wrk():
    if not shutil.which("wrk"):
        step("installing wrk (apt)")
        failure = apt_install("wrk")
        if failure:
            sys.exit(failure)


def read_pins():
    pins = {}
    for line in open(REQUIREMENTS):
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip()] = version.strip()
    return pins


def venv_python():
    return os.path.join(VENV, "bin", "python")


def venv_versions(names):
    """{name: installed version or None} in the venv."""
    script = ("import importlib.metadata as m, json, sys\n"
              "out = {}\n"
              "for n in json.loads(sys.argv[1]):\n"
              "    try: out[n] = m.version(n)\n"
              "    except m.PackageNotFoundError: out[n] = None\n"
              "print(json.dumps(out))")
    run = subprocess.run([venv_python(), "-c", script, json.dumps(list(names))],
                         capture_output=True, text=True)
    return json.loads(run.stdout) if run.returncode == 0 else {n: None for n in names}


def prepare_venv():
    """target/bench-python-venv from Debian's python3, with requirements.txt in it."""
    if not os.path.exists(venv_python()):
        step(f"making the virtualenv {os.path.relpath(VENV, ROOT)} ({SYSTEM_PYTHON})")
        os.makedirs(TARGET, exist_ok=True)
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", VENV], check=True)
    pins = read_pins()
    installed = venv_versions(pins)
    missing = [f"{n}=={v}" for n, v in pins.items() if installed.get(n) != v]
    if missing:
        step(f"installing into the virtualenv: {' '.join(missing)} (uWSGI builds from "
             "source: a minute)")
        subprocess.run([venv_python(), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", REQUIREMENTS], check=True)
    else:
        step("virtualenv: every pin of requirements.txt already installed")


def prepare_apache():
    """None when apache2 with mod_wsgi can run, else why not."""
    if shutil.which("apache2") and os.path.exists(MOD_WSGI):
        return None
    if os.geteuid() != 0:
        return "apache2 / mod_wsgi not installed, and this is not root to apt-get them"
    step("installing apache2 and libapache2-mod-wsgi-py3 (apt)")
    failure = apt_install("apache2", "libapache2-mod-wsgi-py3")
    if failure:
        return failure
    if not (shutil.which("apache2") and os.path.exists(MOD_WSGI)):
        return f"installed, but apache2 or {MOD_WSGI} is not there"
    return None


def workspace_packages():
    """{package name: manifest directory} of the cargo workspace, or None."""
    try:
        run = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1",
                              "--offline"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        packages = json.loads(run.stdout)["packages"]
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return None
    return {p["name"]: os.path.dirname(p["manifest_path"]) for p in packages}


def newest_source(directories):
    """The newest modification time of the sources under `directories` (target/ and
    .git/ aside) and of the workspace's Cargo.toml and Cargo.lock."""
    newest = 0.0
    for name in ("Cargo.toml", "Cargo.lock"):
        try:
            newest = max(newest, os.stat(os.path.join(ROOT, name)).st_mtime)
        except OSError:
            pass
    for directory in directories:
        for base, dirs, files in os.walk(directory):
            dirs[:] = [d for d in dirs if d not in ("target", ".git", "__pycache__")
                       and os.path.join(base, d) != TARGET]
            for name in files:
                if name.endswith((".rs", ".toml", ".py", ".c", ".h", ".pyi")):
                    try:
                        newest = max(newest, os.stat(os.path.join(base, name)).st_mtime)
                    except OSError:
                        pass
    return newest


def prepare_product():
    """Builds microservice-rust and its Python host (release) when either is missing or
    older than its sources; None when both are there, else why microservice-rust is
    skipped."""
    packages = workspace_packages()
    if packages is None:
        return "`cargo metadata` failed: the workspace could not be read"
    if PYTHON_HOST_PACKAGE in packages:
        directories = [os.path.join(ROOT, "src"), packages[PYTHON_HOST_PACKAGE]]
        newest = newest_source(directories)
        built = [os.stat(p).st_mtime for p in (PRODUCT_BINARY, PYTHON_HOST)
                 if os.path.exists(p)]
        if len(built) < 2 or min(built) < newest:
            step(f"building release: microservice-rust, {PYTHON_HOST_PACKAGE}")
            run = subprocess.run(["cargo", "build", "--release", "--quiet",
                                  "-p", "microservice-rust", "-p", PYTHON_HOST_PACKAGE],
                                 cwd=ROOT, capture_output=True, text=True)
            if run.returncode != 0:
                tail = " / ".join(run.stderr.strip().splitlines()[-3:])
                return f"`cargo build --release` failed: {tail}"
    elif not os.path.exists(PYTHON_HOST):
        return (f"the Python host is not ready: no crate {PYTHON_HOST_PACKAGE} in the "
                f"workspace and no {os.path.relpath(PYTHON_HOST, ROOT)}")
    if not os.path.exists(PYTHON_HOST):
        return f"{os.path.relpath(PYTHON_HOST, ROOT)} is missing (the Python host)"
    if not os.path.exists(PRODUCT_BINARY):
        return f"{os.path.relpath(PRODUCT_BINARY, ROOT)} is missing"
    return None


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


# --- The servers -------------------------------------------------------------------------

def venv_bin(name):
    return os.path.join(VENV, "bin", name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


APACHE_CONFIG = """\
# Generated by bench/python.py: Apache in the foreground on the bench's port, Debian's
# event MPM settings, mod_wsgi in daemon mode as Armada's Flask image ran it.
ServerRoot /etc/apache2
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {dir}/httpd.pid
DefaultRuntimeDir {dir}
ErrorLog {dir}/error.log
LogLevel warn
User www-data
Group www-data
Include /etc/apache2/mods-available/mpm_event.load
Include /etc/apache2/mods-available/mpm_event.conf
Include /etc/apache2/mods-available/authz_core.load
Include /etc/apache2/mods-available/wsgi.load
WSGISocketPrefix {dir}/wsgi
WSGIDaemonProcess bench processes=1 threads={threads}{timeout} python-home={venv} \\
    python-path={apps} display-name=%{{GROUP}}
WSGIProcessGroup bench
WSGIApplicationGroup %{{GLOBAL}}
WSGIScriptAlias / {script}
<Directory {apps}>
    Require all granted
</Directory>
"""


def server_command(kind, app, port, directory, deadline):
    """(argv, note) of `kind` serving `app` on 127.0.0.1:`port`; files it needs go in
    `directory`. With `deadline`, the server's own request timeout is DEADLINE_S where it
    has one."""
    bind = f"127.0.0.1:{port}"
    if kind in ("gunicorn-sync", "gunicorn-gthread"):
        argv = [venv_bin("gunicorn"), "--bind", bind]
        if kind == "gunicorn-gthread":
            argv += ["--worker-class", "gthread", "--threads", str(THREADS)]
        if deadline:
            argv += ["--timeout", str(DEADLINE_S)]
        return argv + [app.target]
    if kind == "granian":
        # No request timeout in `granian --help` (2.8): its timeouts are the HTTP/1 head's
        # read, HTTP/2 pings, idle blocking threads and a worker's graceful stop.
        return [venv_bin("granian"), "--interface", "wsgi", "--host", "127.0.0.1",
                "--port", str(port), app.target]
    if kind in ("uwsgi", "uwsgi-close"):
        # --master: harakiri needs it; --http-keepalive: as every other server here keeps
        # connections open (without it wrk reconnects for every request); --die-on-term:
        # SIGTERM stops it (uWSGI 2.0 reloads on SIGTERM); --disable-logging: the others
        # write no access log by default.
        argv = [venv_bin("uwsgi"), "--http", bind, "--wsgi-file", app.file,
                "--callable", app.callable, "--master"]
        argv += ["--http-keepalive"] if kind == "uwsgi" else []
        argv += ["--need-app", "--die-on-term", "--disable-logging"]
        if deadline:
            argv += ["--harakiri", str(DEADLINE_S)]
        return argv
    if kind == "waitress":
        # channel_timeout (120 s) closes a connection inactive that long; it is no
        # limit on a request the app is running. waitress has no request timeout.
        return [venv_bin("waitress-serve"), f"--listen={bind}", app.target]
    if kind == "apache":
        path = os.path.join(directory, "httpd.conf")
        with open(path, "w") as f:
            f.write(APACHE_CONFIG.format(
                port=port, dir=directory, threads=THREADS, venv=VENV, apps=APPS_DIR,
                script=app.file,
                timeout=f" request-timeout={DEADLINE_S}" if deadline else ""))
        # The full path: mod_wsgi writes its display-name over argv[0], cut to its length.
        return [shutil.which("apache2") or "/usr/sbin/apache2", "-f", path, "-DFOREGROUND"]
    if kind == "microservice-rust":
        path = os.path.join(directory, "config.json")
        with open(path, "w") as f:
            json.dump(product_config(deadline), f)
        return [PRODUCT_BINARY, "--host", "127.0.0.1", "--port", str(port),
                "--app", f"{app.file}:{app.callable}", "--config", path]
    raise ValueError(kind)


def product_config(deadline):
    config = {"mode": "production"}
    if deadline:
        config["request_timeout_s"] = DEADLINE_S
    return config


def server_env():
    """Every server runs in the bench's virtualenv."""
    return {**os.environ, "VIRTUAL_ENV": VENV,
            "PATH": os.path.join(VENV, "bin") + os.pathsep + os.environ.get("PATH", "")}


def proc_table():
    """{pid: (ppid, session id, name)} of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.find("(") + 1:text.rfind(")")]
        fields = text.rpartition(")")[2].split()
        # After the name: state, ppid, pgrp, session.
        table[int(entry)] = (int(fields[1]), int(fields[3]), name)
    return table


def process_name(pid, name):
    """The process's name, or its argv[0] where it names itself there (mod_wsgi's
    daemon: `(wsgi:bench)`)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            first = f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return name
    return first.split()[0] if first.startswith("(") else name


LIVE = []  # every server started and not yet stopped, for stop_all


class Server:
    """One server process, in a session of its own: its process tree is the leader, its
    descendants, and whatever else stays in the session."""

    def __init__(self, kind, app, deadline=False):
        self.kind, self.app, self.deadline = kind, app, deadline
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="msr-bench-python-")
        # Apache's children and mod_wsgi's daemon run as www-data: they need to reach it.
        os.chmod(self.dir, 0o755)
        self.command = server_command(kind, app, self.port, self.dir, deadline)
        self.log_path = os.path.join(self.dir, "server.log")
        log = open(self.log_path, "wb")
        # stdout to /dev/null as in bench/run.py: microservice-rust's access log goes
        # there (the others write none by default); stderr, their own log, to a file.
        self.process = subprocess.Popen(self.command, cwd=APPS_DIR, env=server_env(),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=log, start_new_session=True)
        log.close()
        self.seen = None  # the tree when it was sent SIGTERM
        LIVE.append(self)

    def describe(self):
        """The command as PYTHON.md shows it: paths from the repository, $PORT, $TMP."""
        text = shlex.join(self.command)
        for value, name in ((self.dir, "$TMP"), (ROOT + os.sep, ""),
                            (str(self.port), "$PORT")):
            text = text.replace(value, name)
        return text

    def log_text(self):
        """What the server wrote: its output and, for Apache, its error log."""
        text = ""
        for path in (self.log_path, os.path.join(self.dir, "error.log")):
            try:
                text += open(path, errors="replace").read()
            except OSError:
                pass
        return text

    def log_tail(self, lines=8):
        return "\n".join(self.log_text().strip().splitlines()[-lines:])

    def log_lines(self, *words):
        return [l.strip() for l in self.log_text().splitlines()
                if any(w.lower() in l.lower() for w in words)]

    def ready(self, limit=60):
        """Polls `GET /` until it answers the app's body."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{NAMES[self.kind]} exited with {self.process.returncode}"
                                   f": {self.log_tail()}")
            try:
                status, body = get(self.port, "/", timeout=2)
                if status == 200 and body == self.app.expect:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{NAMES[self.kind]} did not answer `GET /` within {limit} s: "
                           f"{self.log_tail()}")

    def processes(self):
        """{pid: name} of the server's processes: the leader's descendants and its
        session's members."""
        table = proc_table()
        root = self.process.pid
        found = {pid for pid, (_, session, _) in table.items() if session == root}
        if root in table:
            found.add(root)
        children = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        queue = list(found)
        while queue:
            for child in children.get(queue.pop(), []):
                if child not in found:
                    found.add(child)
                    queue.append(child)
        return {pid: process_name(pid, table[pid][2]) for pid in sorted(found)
                if pid in table}

    def cpu_seconds(self):
        """utime + stime of every process of the tree, all threads included."""
        return measure.cpu_seconds(self.processes())

    def memory(self):
        """RSS and PSS (KiB, summed over the tree), processes, threads."""
        rss = pss = threads = 0
        pids = self.processes()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            rss += int(line.split()[1])
                        elif line.startswith("Threads:"):
                            threads += int(line.split()[1])
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            pss += int(line.split()[1])
            except (OSError, ValueError, IndexError):
                pass
        return {"rss_kib": rss, "pss_kib": pss, "processes": len(pids), "threads": threads}

    def terminate(self):
        """SIGTERM to the process group (the first half of `stop`)."""
        if self.seen is None:
            self.seen = self.processes()
            self._signal_group(signal.SIGTERM)

    def stop(self):
        """SIGTERM to the process group; after 5 s, or at once when the leader is gone,
        SIGKILL to the group and to every process of the tree still alive."""
        if self in LIVE:
            LIVE.remove(self)
        self.terminate()
        seen = self.seen
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            seen.update(self.processes())
            if self.process.poll() is not None and not self._alive(seen):
                break
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)
        for pid in self._alive(seen):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def _signal_group(self, number):
        try:
            os.killpg(self.process.pid, number)
        except OSError:
            pass

    def _alive(self, pids):
        """Those of `pids` still running in the server's session (not zombies, not a
        reused PID)."""
        alive = []
        for pid in pids:
            if pid == self.process.pid and self.process.returncode is not None:
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) == self.process.pid:
                alive.append(pid)
        return alive


def stop_servers(servers):
    """SIGTERM to all, then each waited for (SIGKILL past 5 s)."""
    servers = list(servers)
    for server in servers:
        try:
            server.terminate()
        except Exception as error:  # noqa: BLE001 — the others must still be stopped
            print(f"stopping {NAMES[server.kind]}: {error}", file=sys.stderr)
    for server in servers:
        try:
            server.stop()
        except Exception as error:  # noqa: BLE001
            print(f"stopping {NAMES[server.kind]}: {error}", file=sys.stderr)


def stop_all():
    stop_servers(LIVE)


def on_signal(number, _frame):
    raise SystemExit(128 + number)


def get(port, path="/", timeout=5):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


# --- Throughput and latency --------------------------------------------------------------

def wrk(server, path, connections, duration, warm_up=False):
    """One bounded wrk run; returns req/s, p50 and p99 (ms), the server's CPU µs per
    completed request, socket errors and non-2xx answers."""
    threads = 1 if connections == 1 else 2
    cpu_before = 0.0 if warm_up else server.cpu_seconds()
    run = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
         "--timeout", "5s", f"http://127.0.0.1:{server.port}{path}"],
        capture_output=True, text=True, timeout=duration + 30)
    cpu = 0.0 if warm_up else server.cpu_seconds() - cpu_before
    return measure.parse(run.stdout, cpu)


def summarize(runs):
    return {
        **measure.medians(runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
    }


def show(value, spec):
    return "–" if value is None else format(value, spec)


def start_servers(kinds, app, deadline=False):
    """{kind: Server} answering, and {kind: why not} for those that did not start."""
    servers, failed = {}, {}
    for kind in kinds:
        try:
            servers[kind] = Server(kind, app, deadline)
        except OSError as error:
            failed[kind] = f"could not start: {error}"
    for kind in list(servers):
        try:
            servers[kind].ready()
        except RuntimeError as error:
            failed[kind] = str(error)
            servers.pop(kind).stop()
    return servers, failed


def measure_app(app, kinds, rounds, duration):
    """Every server at once for `app`; memory idle, the rounds at each connection count,
    memory after the load."""
    step(f"{app.name}: starting {', '.join(NAMES[k] for k in kinds)}")
    servers, failed = start_servers(kinds, app)
    for kind, why in failed.items():
        step(f"{app.name}: {NAMES[kind]} left out: {why}")
    result = {"failed": failed, "commands": {}, "idle": {}, "loaded": {}, "medians": {}}
    try:
        if app.key == "flask":
            for kind, server in servers.items():
                status, body = get(server.port, "/json")
                if status != 200 or '"ok":true' not in body.replace(" ", ""):
                    step(f"{app.name}: {NAMES[kind]} answered /json with {status} {body!r}")
        time.sleep(1)
        for kind, server in servers.items():
            result["commands"][kind] = server.describe()
            result["idle"][kind] = server.memory()
        step(f"{app.name}: idle memory " + ", ".join(
            f"{NAMES[k]} {m['rss_kib'] / 1024:.1f} MiB" for k, m in result["idle"].items()))
        order = list(servers)
        for c in CONNECTIONS:
            samples = {kind: [] for kind in order}
            for number in range(rounds):
                shift = number % len(order) if order else 0
                for kind in order[shift:] + order[:shift]:
                    server = servers[kind]
                    wrk(server, "/", c, WARM_UP_SECONDS, warm_up=True)
                    run = wrk(server, "/", c, duration)
                    samples[kind].append(run)
                    step(f"{app.name}, round {number + 1}/{rounds}, {c:2} connections, "
                         f"{NAMES[kind]:17}: {run['rps']:8.0f} req/s, "
                         f"p50 {show(run['p50'], '.3f')} ms, p99 {show(run['p99'], '.3f')} ms,"
                         f" CPU {show(run['cpu_us'], '.1f')} µs/req, socket errors "
                         f"{run['socket_errors']}, non-2xx {run['non_2xx']}")
            for kind, runs in samples.items():
                result["medians"][(kind, c)] = summarize(runs)
        time.sleep(1)
        for kind, server in servers.items():
            result["loaded"][kind] = server.memory()
    finally:
        stop_servers(servers.values())
    return result


# --- The deadline ------------------------------------------------------------------------

def timed_get(port, path, started, limit):
    """One request on its own connection: (status or None, what happened, seconds since
    `started` when it came back)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=limit)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, str(response.status), time.monotonic() - started
    except socket.timeout:
        return None, f"no answer in {limit} s", time.monotonic() - started
    except http.client.RemoteDisconnected:
        return None, "closed, no answer", time.monotonic() - started
    except ConnectionResetError:
        return None, "reset", time.monotonic() - started
    except (OSError, http.client.HTTPException) as error:
        return None, type(error).__name__, time.monotonic() - started
    finally:
        connection.close()


def answers(port, timeout=PROBE_TIMEOUT_S):
    try:
        return get(port, "/", timeout=timeout)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def deadline_phase(kind, app, route):
    """A fresh server with its request timeout; SLOW_REQUESTS parallel `route`."""
    try:
        server = Server(kind, app, deadline=True)
    except OSError as error:
        return {"error": f"could not start: {error}", "command": None}
    try:
        server.ready()
        time.sleep(0.5)
        before = server.processes()
        path = f"/{route}/{SLOW_SECONDS}"
        started = time.monotonic()
        results = [None] * SLOW_REQUESTS

        def one(i):
            results[i] = timed_get(server.port, path, started, WAIT_CAP_S)

        seen, sampled = dict(before), threading.Event()

        def sample():
            # Every 0.1 s, so that a worker replaced and replaced again is counted.
            while not sampled.wait(0.1):
                for pid, name in server.processes().items():
                    seen.setdefault(pid, name)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = [threading.Thread(target=one, args=(i,), daemon=True)
                   for i in range(SLOW_REQUESTS)]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, PROBE_AT_S - (time.monotonic() - started)))
        during = answers(server.port)
        for thread in threads:
            thread.join(WAIT_CAP_S + 5)
        results = [r or (None, f"no answer in {WAIT_CAP_S} s", WAIT_CAP_S) for r in results]
        after = answers(server.port)
        time.sleep(0.5)
        sampled.set()
        sampler.join()
        now = server.processes()
        for pid, name in now.items():
            seen.setdefault(pid, name)
        gone = {pid: name for pid, name in seen.items() if pid not in now}
        new = {pid: name for pid, name in seen.items() if pid not in before}
        logged = [line for line in server.log_lines(
            "WORKER TIMEOUT", "was sent SIG", "HARAKIRI ON", "timed out", "time limit",
            "timeout when", "Truncated or oversized", "restarting")
            if not line.startswith("File ")][:2]
        return {"requests": sorted(results, key=lambda r: r[2]), "during": during,
                "after": after, "gone": gone, "new": new, "logged": logged,
                "command": server.describe(), "error": None}
    except RuntimeError as error:
        return {"error": str(error), "command": server.describe()}
    finally:
        server.stop()


def verdict(phase):
    """What the server did with the slow requests, in the words 'answers at the
    deadline' (or past it), 'drops the connections', 'kills a worker', 'hangs', each with
    the figures behind it."""
    if phase.get("error"):
        return "did not start"
    requests = phase["requests"]
    early = [r for r in requests if r[2] < RAN_ITS_COURSE_S]
    late = [r for r in requests if r[2] >= RAN_ITS_COURSE_S]

    def span(group):
        first, last = min(r[2] for r in group), max(r[2] for r in group)
        return f"{first:.1f} s" if last - first < 0.05 else f"{first:.1f}–{last:.1f} s"

    words = []
    answered = [r for r in early if r[0] is not None]
    dropped = [r for r in early if r[0] is None]
    if answered:
        statuses = "/".join(sorted({str(r[0]) for r in answered}))
        when = ("at the deadline" if max(r[2] for r in answered) <= DEADLINE_S + 1.5
                else "past the deadline")
        share = "" if len(answered) == len(requests) else f"{len(answered)} of {len(requests)} "
        words.append(f"answers {share}{when} ({statuses}, {span(answered)})")
    if dropped:
        words.append(f"drops {len(dropped)} connection{'s' if len(dropped) > 1 else ''} "
                     f"unanswered ({span(dropped)})")
    if phase["gone"] or phase["new"]:
        words.append(f"kills a worker ({len(phase['gone'])} process"
                     f"{'es' if len(phase['gone']) != 1 else ''} gone, {len(phase['new'])} new)")
    if late:
        what = "/".join(sorted({r[1] for r in late}))
        words.append(f"hangs ({what}, {span(late)})")
    return ", ".join(words) or "–"


def describe_requests(requests):
    """'504 at 1.0 s ×4', or each when they differ."""
    groups = []
    for _, label, at in requests:
        if groups and groups[-1][0] == label and at - groups[-1][2] < 0.5:
            groups[-1][1] += 1
            groups[-1][3] = at
        else:
            groups.append([label, 1, at, at])
    parts = []
    for label, count, first, last in groups:
        when = f"{first:.1f} s" if last - first < 0.05 else f"{first:.1f}–{last:.1f} s"
        parts.append(f"{label} at {when}" + (f" ×{count}" if count > 1 else ""))
    return "; ".join(parts)


def describe_processes(processes, most=3):
    shown = [f"{name} {pid}" for pid, name in list(processes.items())[:most]]
    if len(processes) > most:
        shown.append(f"{len(processes) - most} more")
    return ", ".join(shown) or "none"


def measure_deadline(kinds):
    app = APPS["flask"]
    results = {}
    for kind in [k for k in DEADLINE_KEYS
                 if k in kinds or k == "uwsgi-close" and "uwsgi" in kinds]:
        results[kind] = {}
        for route in ("sleep", "spin"):
            step(f"deadline: {NAMES[kind]}, {SLOW_REQUESTS} parallel /{route}/{SLOW_SECONDS}")
            phase = deadline_phase(kind, app, route)
            results[kind][route] = phase
            if phase.get("error"):
                step(f"deadline: {NAMES[kind]} did not start: {phase['error']}")
                continue
            step(f"deadline: {NAMES[kind]}, /{route}: {describe_requests(phase['requests'])};"
                 f" GET / during: {'yes' if phase['during'] else 'no'}, after: "
                 f"{'yes' if phase['after'] else 'no'}; processes gone: "
                 f"{describe_processes(phase['gone'])}, new: "
                 f"{describe_processes(phase['new'])} → {verdict(phase)}")
    return results


SETTINGS = {
    "gunicorn-sync": "gunicorn's defaults: the sync worker class, 1 worker, `--timeout 30`.",
    "gunicorn-gthread": f"`--worker-class gthread --threads {THREADS}`: 1 worker of "
                        f"{THREADS} threads, as many as microservice-rust's pool and the "
                        "mod_wsgi daemon of Armada's Flask image; the rest its defaults.",
    "granian": "its defaults for `--interface wsgi`: 1 worker, 1 runtime thread, blocking "
               "threads started as needed up to backpressure / 2 = 512 (the threads column "
               "of the memory table shows how many it started).",
    "uwsgi": "`--http` (its HTTP router process in front of 1 worker process of 1 thread) "
             "with `--master` (harakiri needs it), `--http-keepalive` (without it the "
             "router closes every connection after one answer, and wrk counts each as a "
             "read error), `--need-app`, `--die-on-term` (uWSGI 2.0 reloads on SIGTERM) and "
             "`--disable-logging` (it logs every request by default; the others here do "
             "not).",
    "waitress": "its defaults: 4 threads.",
    "apache": f"Debian's apache2 with its event MPM settings (`mpm_event.conf`: 2 "
              "children of 25 threads to start) and mod_wsgi in daemon mode, `processes=1 "
              f"threads={THREADS}` as Armada's Flask image; no access log; other settings "
              "Apache's built-in defaults (KeepAlive on, MaxKeepAliveRequests 100).",
    "microservice-rust": "production mode, every other setting its default (17 threads, "
                         "1 worker, 1 I/O thread); its access log on, to /dev/null as in "
                         "bench/run.py; the Python host from target/release, in the venv "
                         "through `VIRTUAL_ENV`.",
}

TIMEOUT_SETTINGS = {
    "gunicorn-sync": f"`--timeout {DEADLINE_S}` (the arbiter aborts a worker silent that long)",
    "gunicorn-gthread": f"`--timeout {DEADLINE_S}` (the same; the worker's main loop, not its "
                        "request threads, keeps it alive)",
    "granian": "none: `granian --help` (2.8) has no request timeout (only the HTTP/1 head's "
               "read, HTTP/2 pings, idle blocking threads, a worker's graceful stop)",
    "uwsgi": f"`--harakiri {DEADLINE_S}` (the master kills a worker whose request runs longer)",
    "uwsgi-close": f"`--harakiri {DEADLINE_S}`, and no `--http-keepalive`",
    "waitress": "none: `channel_timeout` (120 s) closes a connection inactive that long, "
                "not a request the app is running",
    "apache": f"mod_wsgi `request-timeout={DEADLINE_S}` (restarts the daemon process when "
              "the running time averaged over all its threads, idle ones counting 0, "
              f"passes it: with {THREADS} threads, one slow request alone is cut after "
              f"about {THREADS} s)",
    "microservice-rust": f"`\"request_timeout_s\": {DEADLINE_S}` (504 at the deadline, the "
                         "request cancelled)",
}


# --- The report --------------------------------------------------------------------------

def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "unknown")
    python = subprocess.run([venv_python(), "--version"], capture_output=True,
                            text=True).stdout.strip()
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True,
                                 text=True).stdout.split("\n")[0].strip()
    versions = venv_versions(read_pins())
    apache = "not installed"
    if shutil.which("apache2"):
        apache = subprocess.run(["apache2", "-v"], capture_output=True,
                                text=True).stdout.split("\n")[0].split(":", 1)[-1].strip()
        mod_wsgi = subprocess.run(["dpkg-query", "-W", "-f", "${Version}",
                                   "libapache2-mod-wsgi-py3"], capture_output=True,
                                  text=True).stdout.strip()
        apache += f", mod_wsgi {mod_wsgi or '?'} (libapache2-mod-wsgi-py3)"
    try:
        revision = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                                  capture_output=True, text=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=ROOT, capture_output=True, text=True).stdout.strip()
        revision += " with changes" if changed else ""
    except OSError:
        revision = "?"
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "python": python, "versions": versions, "wrk": wrk_version, "apache": apache,
            "revision": revision}


def ratio(value, base):
    return None if value is None or not base else value / base


def throughput_table(app, measured, c):
    medians = measured["medians"]
    kinds = [k for k in SERVER_KEYS if (k, c) in medians]
    bases = [b for b in BASELINES if (b, c) in medians]
    heads = ["server", "req/s"] + [f"÷ {NAMES[b]}" for b in bases] + [
        "p50 (ms)", "p99 (ms)", "CPU µs/req"] + [f"CPU ÷ {NAMES[b]}" for b in bases] + [
        "socket errors", "non-2xx"]
    lines = [f"### {app.name}, {c} connection{'s' if c > 1 else ''}", "",
             "| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    for kind in kinds:
        m = medians[(kind, c)]
        cells = [NAMES[kind], show(m["rps"], ",.0f")]
        cells += [show(ratio(m["rps"], medians[(b, c)]["rps"]), ".2f") for b in bases]
        cells += [show(m["p50"], ".3f"), show(m["p99"], ".3f"), show(m["cpu_us"], ".0f")]
        cells += [show(ratio(m["cpu_us"], medians[(b, c)]["cpu_us"]), ".2f") for b in bases]
        cells += [str(m["socket_errors"]), str(m["non_2xx"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def memory_table(results):
    lines = ["| app | server | RSS idle (MiB) | RSS after the load (MiB) | PSS idle (MiB) | "
             "PSS after (MiB) | processes | threads idle / after |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for app_key, measured in results.items():
        for kind in SERVER_KEYS:
            if kind not in measured["idle"]:
                continue
            idle, loaded = measured["idle"][kind], measured["loaded"].get(kind, {})
            lines.append(
                f"| {APPS[app_key].name} | {NAMES[kind]} | {idle['rss_kib'] / 1024:.1f} | "
                f"{show(loaded.get('rss_kib', 0) / 1024 if loaded else None, '.1f')} | "
                f"{idle['pss_kib'] / 1024:.1f} | "
                f"{show(loaded.get('pss_kib', 0) / 1024 if loaded else None, '.1f')} | "
                f"{idle['processes']} | {idle['threads']} / {loaded.get('threads', '–')} |")
    lines.append("")
    return lines


def deadline_tables(deadline):
    lines = ["| server | request timeout set | 4 × `/sleep/30` | 4 × `/spin/30` |",
             "|---|---|---|---|"]
    for kind in DEADLINE_KEYS:
        if kind in deadline:
            lines.append(f"| {NAMES[kind]} | {TIMEOUT_SETTINGS[kind]} | "
                         f"{verdict(deadline[kind]['sleep'])} | "
                         f"{verdict(deadline[kind]['spin'])} |")
    lines.append("")
    for route in ("sleep", "spin"):
        lines += [f"#### 4 parallel `GET /{route}/{SLOW_SECONDS}`", "",
                  "| server | what came back, when (s after sending) | `GET /` in 2 s, "
                  f"{PROBE_AT_S} s in | `GET /` in 2 s, after | processes gone | "
                  "processes new |", "|---|---|---|---|---|---|"]
        for kind in DEADLINE_KEYS:
            if kind not in deadline:
                continue
            phase = deadline[kind][route]
            if phase.get("error"):
                lines.append(f"| {NAMES[kind]} | did not start: {phase['error'][:200]} "
                             "| – | – | – | – |")
                continue
            lines.append(
                f"| {NAMES[kind]} | {describe_requests(phase['requests'])} | "
                f"{'yes' if phase['during'] else 'no'} | {'yes' if phase['after'] else 'no'} | "
                f"{describe_processes(phase['gone'])} | {describe_processes(phase['new'])} |")
        lines.append("")
    logged = [(kind, route, deadline[kind][route]["logged"]) for kind in DEADLINE_KEYS
              if kind in deadline for route in ("sleep", "spin")
              if deadline[kind][route].get("logged")]
    if logged:
        lines += ["What the servers logged about it (first lines):", ""]
        for kind, route, entries in logged:
            for entry in entries:
                lines.append(f"- {NAMES[kind]}, /{route}: `{entry[:200]}`")
        lines.append("")
    return lines


def write_report(args, results, deadline, skipped, info):
    lines = [
        "# Python WSGI servers beside microservice-rust",
        "",
        f"Written by `python3 bench/python.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (" with `--quick`: one short round, preliminary figures." if args.quick else "."),
        f"Medians of {args.rounds} round{'s' if args.rounds > 1 else ''} of "
        f"`wrk --latency -d{args.duration}s` at `GET /`, `-t1 -c1` and `-t2 -c64`, on",
        "loopback; in each round the servers take turns, the order rotated by one from",
        f"round to round, each run after a {WARM_UP_SECONDS} s wrk warm-up at the same "
        "connection count.",
        "CPU per request: user + system time of every process of the server's tree (all",
        "threads), from `/proc/PID/stat` just before and after the run, divided by the",
        "requests wrk completed. Each server runs with its defaults except the bind address",
        "and the app (the commands are below); all run from one virtualenv made with",
        "Debian's Python.",
        "",
    ]
    if skipped:
        lines += ["Not measured:", ""]
        lines += [f"- {NAMES[k]}: {why}" for k, why in skipped.items()]
        lines.append("")
    if results:
        lines += ["## Throughput, latency, CPU per request", ""]
        for app_key, measured in results.items():
            for kind, why in measured["failed"].items():
                lines.append(f"- {APPS[app_key].name}: {NAMES[kind]} did not start: "
                             f"{why[:300]}")
            if measured["failed"]:
                lines.append("")
            for c in CONNECTIONS:
                lines += throughput_table(APPS[app_key], measured, c)
        lines += ["Each run's req/s and CPU µs/req, in round order:", ""]
        for app_key, measured in results.items():
            for (kind, c), m in measured["medians"].items():
                lines.append(f"- {APPS[app_key].name}, {c} conn., {NAMES[kind]}: "
                             f"{m['runs']}; {m['cpu_runs']}")
        lines += ["", "## Resident memory of the whole process tree", "",
                  "RSS sums every process's resident set (pages shared between a master",
                  "and its forked workers count in each); PSS shares them out. Idle: 1 s",
                  "after the server first answered; after: 1 s after its last wrk run.", ""]
        lines += memory_table(results)
    if deadline:
        lines += [
            "## Deadline: requests that outlive the timeout", "",
            "The Flask app, a fresh server for each row and route, its request timeout set",
            f"to {DEADLINE_S} s where it has one. {SLOW_REQUESTS} parallel requests, each on "
            "its own",
            f"connection, waited for up to {WAIT_CAP_S} s; `/sleep/30` blocks in "
            "`time.sleep` (the GIL",
            "free), `/spin/30` runs Python (holding it). \"Kills a worker\": a process of the",
            "server's tree (sampled every 0.1 s) was gone or new. \"Hangs\": a request ran",
            f"{RAN_ITS_COURSE_S} s or more, or got nothing by {WAIT_CAP_S} s. \"At the "
            f"deadline\": within {DEADLINE_S + 1.5:g} s.",
            "",
        ]
        lines += deadline_tables(deadline)
    versions = ", ".join(f"{n} {v or 'missing'}" for n, v in info["versions"].items())
    lines += [
        "## Machine", "",
        f"- {info['nproc']} cores ({info['cpu']}), Linux {info['kernel']}, shared: wrk and",
        "  the servers (and whatever else runs) use the same cores",
        f"- {info['python']} (Debian's /usr/bin/python3, venv "
        f"`{os.path.relpath(VENV, ROOT)}`)",
        f"- {versions}",
        f"- {info['apache']}",
        f"- {info['wrk']}",
        f"- microservice-rust at {info['revision']}",
        "",
        "## Settings", "",
        *[f"- {NAMES[kind]}: {SETTINGS[kind]}" for kind in SERVER_KEYS
          if kind in deadline or any(kind in m["commands"] for m in results.values())],
        "",
        "## Commands", "",
        "Run from `bench/python/` with `VIRTUAL_ENV` set to the venv and its `bin/` first",
        "in `PATH`; `$PORT` is a free port, `$TMP` a temporary directory.",
        "",
    ]
    commands = {}
    for app_key, measured in results.items():
        for kind, command in measured["commands"].items():
            commands.setdefault(kind, []).append((APPS[app_key].name, command))
    for kind, phases in deadline.items():
        command = phases["sleep"].get("command") or phases["spin"].get("command")
        if command:
            commands.setdefault(kind, []).append(("deadline, Flask", command))
    for kind in DEADLINE_KEYS:
        if kind in commands:
            merged = {}
            for label, command in commands[kind]:
                merged.setdefault(command, []).append(label)
            lines.append(f"- {NAMES[kind]}:")
            lines += [f"  - {', '.join(labels)}: `{command}`"
                      for command, labels in merged.items()]
    lines.append("")
    if "apache" in commands or "apache" in deadline:
        lines += [
            "`$TMP/httpd.conf` of Apache, paths here from the repository (absolute in the",
            "file); `request-timeout=1` is added after `threads=17` for the deadline:",
            "",
            "```apache",
            APACHE_CONFIG.format(port="$PORT", dir="$TMP", threads=THREADS,
                                 venv=os.path.relpath(VENV, ROOT), apps="bench/python",
                                 script="bench/python/APP.py", timeout="").rstrip(),
            "```",
            "",
        ]
    if "microservice-rust" in commands:
        lines += [
            f"`$TMP/config.json` of microservice-rust: `{json.dumps(product_config(False))}`;"
            f" deadline: `{json.dumps(product_config(True))}`.",
            "",
        ]
    with open(OUTPUT, "w") as f:
        f.write("\n".join(lines))


def print_summary(results, deadline, skipped):
    print()
    print("Summary (medians; see bench/PYTHON.md):")
    for app_key, measured in results.items():
        for c in CONNECTIONS:
            parts = [f"{NAMES[k]} {m['rps']:,.0f} req/s {show(m['cpu_us'], '.0f')} µs"
                     for (k, cc), m in measured["medians"].items() if cc == c]
            print(f"  {APPS[app_key].name}, {c} conn.: " + "; ".join(parts))
    for kind, phases in deadline.items():
        print(f"  deadline, {NAMES[kind]}: sleep → {verdict(phases['sleep'])}; "
              f"spin → {verdict(phases['spin'])}")
    for kind, why in skipped.items():
        print(f"  not measured: {NAMES[kind]}: {why}")


def main():
    args = ARGS
    atexit.register(stop_all)
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, on_signal)
    try:
        install_wrk()
        prepare_venv()
        raise_fd_limit()
        skipped = {}
        if "apache" in args.servers:
            why = prepare_apache()
            if why:
                skipped["apache"] = why
        if "microservice-rust" in args.servers:
            why = prepare_product()
            if why:
                skipped["microservice-rust"] = why
        for kind, why in skipped.items():
            step(f"{NAMES[kind]}: not measured: {why}")
        kinds = [k for k in args.servers if k not in skipped]
        results, deadline = {}, {}
        if args.only != "deadline":
            for app_key in args.apps:
                results[app_key] = measure_app(APPS[app_key], kinds, args.rounds,
                                               args.duration)
        if args.only != "throughput":
            deadline = measure_deadline(kinds)
        write_report(args, results, deadline, skipped, machine())
        step(f"wrote {os.path.relpath(OUTPUT, ROOT)}")
        print_summary(results, deadline, skipped)
    finally:
        stop_all()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
