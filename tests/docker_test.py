#!/usr/bin/env python3
"""The images in a real Docker engine: `make test-docker`.

Every container runs with --network host on a free loopback port (the workplace has no
bridge network). Timing checks state their tolerance. Prints one line per check and a
closing "N passed, M failed"; exits non-zero on any failure.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BINARY = os.path.join(ROOT, "target", "release", "microservice-rust")
IMAGE = "example-rum-counter"
BASE = "microservice-rust"
PYTHON_IMAGE = "example-rum-counter-python"
PYTHON_BASE = "microservice-rust-python"
TOLERANCE_S = 0.45
CONTAINERS = []


def docker(*args, check=True):
    result = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def logs(name):
    """What the container wrote (the service logs on stderr)."""
    result = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    return result.stdout + result.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=30):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def wait_for(what, limit, check):
    deadline = time.monotonic() + limit
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        time.sleep(0.1)


def run_container(*args, docker_args=(), port=None, image=IMAGE):
    """Starts the example image (or `image`); returns (name, port) once /readyz is 200. Without `port`
    it picks a free one and passes it as --port; with one, the config must give it."""
    port_args = ()
    if port is None:
        port = free_port()
        port_args = ("--port", str(port))
    name = f"msr-test-{os.getpid()}-{len(CONTAINERS)}"
    docker("run", "-d", "--network", "host", "--name", name, *docker_args, image,
           *port_args, *args)
    CONTAINERS.append(name)
    wait_for("/readyz", 20, lambda: get(port, "/readyz", timeout=2)[0] == 200)
    return name, port


def parallel_gets(port, path, count):
    """Sends `count` GETs at once; returns sorted (seconds, status, body)."""
    start = time.monotonic()
    results = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def one():
        barrier.wait()
        status, body = get(port, path)
        with lock:
            results.append((time.monotonic() - start, status, body))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results)


def near(actual, ideal):
    return abs(actual - ideal) <= TOLERANCE_S


def answers_one_request_at_a_time(image):
    _, port = run_container(image=image)
    results = parallel_gets(port, "/delay/1", 4)
    times = [round(t, 2) for t, _, _ in results]
    assert all(s == 200 and "rnd=" in b for _, s, b in results), results
    for i, t in enumerate(times):
        assert near(t, i + 1), f"answer {i + 1} at {t}s; all {times}"
    return f"answers at {times} s"


def answers_in_batches_of_4(image):
    _, port = run_container("--env", "production", image=image)
    results = parallel_gets(port, "/delay/1", 11)
    times = [round(t, 2) for t, _, _ in results]
    assert all(s == 200 and "rnd=" in b for _, s, b in results), results
    for batch, size in ((1, 4), (2, 4), (3, 3)):
        got = sum(1 for t in times if near(t, batch))
        assert got == size, f"{got} answers near {batch}s; all {times}"
    return f"answers at {times} s"


def test_dev_answers_one_request_at_a_time():
    return answers_one_request_at_a_time(IMAGE)


def test_production_answers_in_batches_of_4():
    return answers_in_batches_of_4(IMAGE)


def test_python_dev_serves_the_app_from_its_conventional_place_one_request_at_a_time():
    detail = answers_one_request_at_a_time(PYTHON_IMAGE)
    serving = "serving /opt/example-rum-counter-python/src/main.py"
    assert serving in logs(CONTAINERS[-1]), logs(CONTAINERS[-1])
    return f"{serving} with no app named; {detail}"


def test_python_production_answers_in_batches_of_4():
    return answers_in_batches_of_4(PYTHON_IMAGE)


def test_the_environment_variable_selects_production_too():
    for args, env in (((), ("-e", "MICROSERVICE_ENV=production")), (("--env", "production"), ())):
        out = docker("run", "--rm", "--network", "host", *env, IMAGE, "check-config", *args)
        report = json.loads(out)
        config = report["config"]
        assert report["source"] == "/opt/example-rum-counter/config/production/config.json", report
        assert (config["mode"], config["threads"], config["rums_limit"]) == ("production", 4, 2)
    return "check-config: production, 4 threads, from /opt/example-rum-counter/config/production/"


def test_the_base_image_default_config_is_the_last_fallback():
    return default_config_is_the_last_fallback(BASE)


def test_the_python_base_image_default_config_is_the_last_fallback():
    return default_config_is_the_last_fallback(PYTHON_BASE)


def default_config_is_the_last_fallback(base):
    report = json.loads(docker("run", "--rm", "--network", "host", base, "check-config"))
    assert report["source"] == "/etc/microservice-rust/config.json", report
    with open(os.path.join(os.path.dirname(__file__), "..", "config.json")) as f:
        shipped = json.load(f)
    config = report["config"]
    for key in ("threads", "workers", "port", "max_body_bytes", "stop_timeout_s"):
        assert config[key] == shipped[key], (key, config[key], shipped[key])
    # The shipped config leaves the mode to the environment, which is dev by default.
    assert shipped["mode"] is None, shipped["mode"]
    assert (config["mode"], report["mode_from"]) == ("dev", "from the environment `dev`"), report
    return (f"check-config in {base} reads /etc/microservice-rust/config.json; "
            "mode dev from the environment")


def test_io_threads_and_the_bodies_budget_follow_the_containers_cpus_and_memory():
    """A container given 1 CPU and 512 MiB gets 1 I/O thread and a budget of 128 MiB for
    request bodies (a quarter of its memory, one worker), and check-config says why."""
    report = json.loads(docker("run", "--rm", "--network", "host", "--cpus", "1",
                               "--memory", "512m", BASE, "check-config"))
    config = report["config"]
    assert config["io_threads"] == 1, report
    assert "rounded up: 1 for 1 CPU(s)" in report["io_threads_from"], report
    assert config["max_body_memory_bytes"] == 512 * 1024 * 1024 // 4, report
    assert "536870912 bytes" in report["max_body_memory_from"], report
    return (f"--cpus 1 --memory 512m: io_threads 1, max_body_memory_bytes "
            f"{config['max_body_memory_bytes']} ({report['max_body_memory_from']})")


def reports_healthy(image):
    name, _ = run_container(image=image)
    started = time.monotonic()
    wait_for("healthy", 30,
             lambda: docker("inspect", "-f", "{{.State.Health.Status}}", name) == "healthy")
    return f"healthy after {time.monotonic() - started:.1f}s (HEALTHCHECK interval 5s)"


def test_docker_reports_healthy_on_a_port_given_on_the_command_line():
    return reports_healthy(IMAGE)


def test_python_docker_reports_healthy():
    return reports_healthy(PYTHON_IMAGE)


def mounted_config(config):
    """A directory with config.json holding `config`, as docker arguments for CONFIG_PATH."""
    config_dir = tempfile.mkdtemp(prefix="msr-docker-")
    with open(os.path.join(config_dir, "config.json"), "w") as f:
        json.dump(config, f)
    os.chmod(config_dir, 0o755)
    return ("-v", f"{config_dir}:/cfg:ro", "-e", "CONFIG_PATH=/cfg")


def test_docker_reports_healthy_on_a_port_given_by_the_config():
    port = free_port()
    name, _ = run_container(docker_args=mounted_config({"port": port}), port=port)
    started = time.monotonic()
    wait_for("healthy", 30,
             lambda: docker("inspect", "-f", "{{.State.Health.Status}}", name) == "healthy")
    return f"port {port} from the config; healthy after {time.monotonic() - started:.1f}s"


def stop_lets_a_slow_request_finish_and_exits_0(image):
    name, port = run_container(image=image)
    outcome = {}

    def slow():
        outcome["reply"] = get(port, "/delay/3")

    request = threading.Thread(target=slow)
    request.start()
    time.sleep(0.5)
    started = time.monotonic()
    docker("stop", name)
    stopped = time.monotonic() - started
    request.join()
    status, body = outcome["reply"]
    assert status == 200 and "rnd=" in body, outcome
    code = docker("inspect", "-f", "{{.State.ExitCode}}", name)
    assert code == "0", f"exit code {code}"
    assert stopped < 10, f"docker stop took {stopped:.1f}s"
    return f"slow request 200, exit 0, docker stop took {stopped:.1f}s"


def test_docker_stop_lets_a_slow_request_finish_and_exits_0():
    return stop_lets_a_slow_request_finish_and_exits_0(IMAGE)


def test_python_docker_stop_lets_a_slow_request_finish_and_exits_0():
    return stop_lets_a_slow_request_finish_and_exits_0(PYTHON_IMAGE)


def test_the_watchdog_replaces_a_hung_worker_in_the_container():
    name, port = run_container(docker_args=mounted_config(
        {"mode": "production", "threads": 2, "request_timeout_s": 0,
         "watchdog": {"interval_s": 1, "timeout_s": 0.5, "failures": 2}}))
    hung = [threading.Thread(target=lambda: get(port, "/delay/1000", timeout=60))
            for _ in range(2)]
    for t in hung:
        t.start()
    started = time.monotonic()
    wait_for("the watchdog's replacement", 15,
             lambda: "took over from" in logs(name) and "(watchdog)" in logs(name))
    replaced = time.monotonic() - started
    # Until the old worker has stopped accepting, a new connection may still reach it, and
    # it answers what it has read with 503, as it should.
    wait_for("the new worker serving", 5, lambda: get(port, "/")[0] == 200)
    assert docker("inspect", "-f", "{{.State.Running}}", name) == "true"
    for t in hung:
        t.join()
    return f"replaced {replaced:.1f}s after the hang; the container stays up"


def pid_1_is_the_supervisor_running_as_the_unprivileged_user(image):
    name, _ = run_container(image=image)
    host_pid = docker("inspect", "-f", "{{.State.Pid}}", name)
    with open(f"/proc/{host_pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{host_pid}/cmdline") as f:
        command = f.read().split("\0")
    assert command[0] == "/usr/local/bin/microservice-rust", command
    assert status["NSpid"].split()[-1] == "1", status["NSpid"]
    assert status["Uid"].split()[0] == "10001", status["Uid"]
    children = open(f"/proc/{host_pid}/task/{host_pid}/children").read().split()
    for child in children:
        with open(f"/proc/{child}/status") as f:
            uid = [line for line in f if line.startswith("Uid:")][0].split()[1]
        assert uid == "10001", f"worker {child} runs as {uid}"
    return f"PID 1 is {' '.join(command).strip()}, uid 10001; {len(children)} worker(s) uid 10001"


def test_pid_1_is_the_supervisor_running_as_the_unprivileged_user():
    return pid_1_is_the_supervisor_running_as_the_unprivileged_user(IMAGE)


def test_python_pid_1_is_the_supervisor_running_as_the_unprivileged_user():
    return pid_1_is_the_supervisor_running_as_the_unprivileged_user(PYTHON_IMAGE)


def test_the_python_image_python_is_the_hosts_and_the_user_owns_the_virtualenv():
    """The Python host was built against libpython3.11: the image must resolve every library
    it links, its python must be 3.11, and pip must install into /opt/venv as the user the
    image runs as (no `USER root`)."""
    host = "/usr/local/lib/microservice-rust/libmicroservice_rust_python.so"
    linked = docker("run", "--rm", "--network", "host", "--entrypoint", "ldd", PYTHON_IMAGE, host)
    assert "not found" not in linked and "libpython3.11.so.1.0 => /" in linked, linked
    script = ("import os, sys, sysconfig, flask; "
              "print('%d.%d' % sys.version_info[:2], sys.prefix, os.stat(sys.prefix).st_uid, "
              "os.access(sysconfig.get_path('purelib'), os.W_OK), flask.__file__)")
    out = docker("run", "--rm", "--network", "host", "--entrypoint", "python", PYTHON_IMAGE,
                 "-c", script)
    version, prefix, uid, writable, flask = out.split()
    assert (version, prefix, uid, writable) == ("3.11", "/opt/venv", "10001", "True"), out
    assert flask.startswith("/opt/venv/lib/python3.11/site-packages/flask/"), out
    return (f"the host's libraries resolve (libpython3.11.so.1.0); python {version}; "
            "/opt/venv owned and writable by 10001, Flask in it")


def files_under(top):
    """{relative path: bytes} of every file under `top`."""
    found = {}
    for directory, _, names in os.walk(top):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, top)] = f.read()
    return found


def test_a_new_app_builds_against_the_base_image_sdk_and_serves_from_its_dockerfile():
    """`new --lang c`, compiled here against the header copied out of the base image, then
    served by its Dockerfile's final stage. The build stage's compiler image cannot be
    pulled here, so a stage holding the library built here stands in for it."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([BINARY, "new", "--lang", "c", "hello-c"], cwd=tmp, check=True,
                       capture_output=True)
        app = os.path.join(tmp, "hello-c")
        container = docker("create", BASE)
        try:
            docker("cp", f"{container}:/usr/local/include/microservice_rust.h",
                   os.path.join(app, "include", "microservice_rust.h"))
            docker("cp", f"{container}:/usr/local/share/microservice-rust/sdk",
                   os.path.join(tmp, "image-sdk"))
        finally:
            docker("rm", container)
        subprocess.run([BINARY, "sdk", os.path.join(tmp, "binary-sdk")], check=True,
                       capture_output=True)
        image_sdk = files_under(os.path.join(tmp, "image-sdk"))
        assert "Cargo.toml" in image_sdk and "include/microservice_rust.h" in image_sdk, \
            sorted(image_sdk)
        assert image_sdk == files_under(os.path.join(tmp, "binary-sdk")), sorted(image_sdk)
        subprocess.run(["make", "--quiet"], cwd=app, check=True, capture_output=True)

        with open(os.path.join(app, "Dockerfile")) as f:
            dockerfile = f.read()
        assert "COPY --from=server /usr/local/include/microservice_rust.h" in dockerfile
        final = dockerfile[dockerfile.rindex("\nFROM microservice-rust\n"):]
        with open(os.path.join(app, "Dockerfile.test"), "w") as f:
            f.write("FROM scratch AS build\nCOPY build/libhello_c.so /src/build/\n" + final)
        tag = f"msr-test-new-app-{os.getpid()}"
        docker("build", "-q", "-f", os.path.join(app, "Dockerfile.test"), "-t", tag, app)
    try:
        _, port = run_container("--env", "production", image=tag)
        assert get(port, "/") == (200, "Hello, world!\n"), get(port, "/")
        status, body = get(port, "/json")
        assert status == 200 and body.startswith('{"requests": '), (status, body)
        report = json.loads(docker("run", "--rm", "--network", "host", tag, "check-config",
                                   "--env", "production"))
        assert report["source"] == "/opt/hello-c/config/production/config.json", report
    finally:
        for container in CONTAINERS:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        CONTAINERS.clear()
        docker("rmi", "-f", tag, check=False)
    return (f"the image's SDK ({len(image_sdk)} files) is the binary's; the app served / and "
            "/json from /opt/hello-c in production")


def test_image_sizes():
    sizes = {image: int(docker("image", "inspect", "-f", "{{.Size}}", image))
             for image in (BASE, IMAGE, PYTHON_BASE, PYTHON_IMAGE)}
    assert sizes[BASE] < 20 * 1024 * 1024, sizes
    # Debian minbase (about 75 MB) with python3 (about 50) and the virtualenv's pip (25).
    assert sizes[PYTHON_BASE] < 200 * 1024 * 1024, sizes
    return ", ".join(f"{image} {size / 1e6:.1f} MB" for image, size in sizes.items())


def main():
    tests = [(name, fn) for name, fn in globals().items() if name.startswith("test_")]
    passed = failed = 0
    for name, test in tests:
        try:
            detail = test()
            passed += 1
            print(f"ok    {name}: {detail}", flush=True)
        except Exception:  # noqa: BLE001 - every failure is reported, the run goes on
            failed += 1
            print(f"FAIL  {name}", flush=True)
            traceback.print_exc()
        finally:
            for container in CONTAINERS:
                subprocess.run(["docker", "rm", "-f", container], capture_output=True)
            CONTAINERS.clear()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
