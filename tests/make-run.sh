#!/usr/bin/env bash
# The README's first command, as a newcomer runs it: `make run`, then
# `curl 127.0.0.1:8080/delay/1` prints a line with `rnd=`.
set -u
cd "$(dirname "$0")/.."

port=${PORT:-8080}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "make-run: port $port is already in use; stop what listens there" >&2
    echo "make-run: 0 passed, 1 failed"
    exit 1
fi

log=$(mktemp)
setsid make --no-print-directory run PORT="$port" >"$log" 2>&1 &
group=$!
stop() { kill -TERM -- "-$group" 2>/dev/null; wait "$group" 2>/dev/null; rm -f "$log"; }
trap stop EXIT

answer=""
for _ in $(seq 600); do   # up to 120 s, for a build on a fresh machine
    answer=$(curl -s --max-time 5 "http://127.0.0.1:$port/delay/1") && break
    sleep 0.2
done

if grep -q 'rnd=' <<<"$answer"; then
    echo "make-run: curl 127.0.0.1:$port/delay/1 -> $answer"
    echo "make-run: 1 passed, 0 failed"
else
    echo "make-run: no rnd= line from /delay/1 (got: '$answer'); make run said:" >&2
    cat "$log" >&2
    echo "make-run: 0 passed, 1 failed"
    exit 1
fi
