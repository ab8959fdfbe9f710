"""What the benches measure alike: wrk's output read, and a server's CPU time. Shared by
bench/run.py (`make bench`) and bench/python.py (`make bench-python`)."""

import os
import statistics
import struct

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    """User + system CPU time of the processes `pids`, all their threads included (the
    process line of /proc/PID/stat sums them, exited threads too); a process gone is
    left out."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # After the parenthesized name: state is field 3, utime 14, stime 15.
                fields = f.read().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / CLOCK_TICKS


def parse(out, cpu_seconds):
    """req/s, the requests completed, p50 and p99 in milliseconds (with `--latency`),
    socket errors and non-2xx answers from wrk's output, and `cpu_seconds` (the server's,
    over the run) per completed request in microseconds."""
    result = {"rps": 0.0, "p50": None, "p99": None, "cpu_us": None, "requests": 0,
              "socket_errors": 0, "non_2xx": 0}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(words[1])
        elif len(words) >= 3 and words[1:3] == ["requests", "in"]:
            result["requests"] = int(words[0])
        elif len(words) == 2 and words[0] in ("50%", "99%"):
            result["p" + words[0][:-1]] = milliseconds(words[1])
        elif line.strip().startswith("Socket errors:"):
            result["socket_errors"] += sum(int(w.strip(",")) for w in words
                                           if w.strip(",").isdigit())
        elif line.strip().startswith("Non-2xx"):
            result["non_2xx"] += int(words[-1])
    if result["requests"]:
        result["cpu_us"] = cpu_seconds * 1e6 / result["requests"]
    return result


def milliseconds(text):
    """wrk's `812.00us`, `1.20ms` or `2.00s` in milliseconds."""
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def median(values):
    """The median of the values that are not None; None when there is none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def medians(runs):
    """The medians of a server's runs (as `parse` gives them), with each run's req/s and
    CPU µs per request in order."""
    return {
        "rps": median(r["rps"] for r in runs),
        "p50": median(r["p50"] for r in runs),
        "p99": median(r["p99"] for r in runs),
        "cpu_us": median(r["cpu_us"] for r in runs),
        "runs": [round(r["rps"]) for r in runs],
        "cpu_runs": [None if r["cpu_us"] is None else round(r["cpu_us"], 1) for r in runs],
    }


def distinct_kib(pids):
    """The memory a set of processes holds resident, each page counted once however many
    of them map it (their summed RSS counts the code both map once per process): the
    physical pages behind their mappings, from /proc/PID/pagemap (needs root; None
    without)."""
    frames = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
                for line in maps:
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    if start >= 1 << 47:
                        continue  # [vsyscall]
                    pagemap.seek(start // 4096 * 8)
                    data = pagemap.read((end - start) // 4096 * 8)
                    for (entry,) in struct.iter_unpack("<Q", data):
                        if entry >> 63:
                            frame = entry & ((1 << 55) - 1)
                            if not frame:
                                return None  # frame numbers hidden: not root
                            frames.add(frame)
        except OSError:
            return None
    return len(frames) * 4
