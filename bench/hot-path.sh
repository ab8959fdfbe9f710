#!/usr/bin/env bash
# The production hot path against bare tiny_http, in the same run, on loopback.
#
# `GET /` of the example app through microservice-rust in production mode with default
# settings (17 threads), and the same request to examples/bare-tiny-http.rs (17 threads
# calling recv()). wrk runs against each in turn, ROUNDS times, DURATION each; the medians
# and their ratio are printed. Needs wrk (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
PRODUCT_PORT=${PRODUCT_PORT:-18181}
BASELINE_PORT=${BASELINE_PORT:-18182}

if ! command -v wrk >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet -p microservice-rust -p example-rum-counter
cargo build --release --quiet -p microservice-rust --example bare-tiny-http

config=$(mktemp)
echo '{"mode": "production"}' >"$config"
./target/release/microservice-rust --host 127.0.0.1 --port "$PRODUCT_PORT" \
    --app target/release/libexample_rum_counter.so --config "$config" 2>/dev/null &
product=$!
./target/release/examples/bare-tiny-http "127.0.0.1:$BASELINE_PORT" 2>/dev/null &
baseline=$!
trap 'kill $product $baseline 2>/dev/null; wait 2>/dev/null; rm -f "$config"' EXIT
for port in "$PRODUCT_PORT" "$BASELINE_PORT"; do
    up=no
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && up=yes && break; sleep 0.1; done
    [ "$up" = yes ] || { echo "nothing answers on port $port" >&2; exit 1; }
done

# wrk's "Requests/sec" line.
rate() { wrk -t2 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$1/" | awk '/Requests\/sec/ {print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

product_rates=(); baseline_rates=()
for round in $(seq "$ROUNDS"); do
    p=$(rate "$PRODUCT_PORT"); b=$(rate "$BASELINE_PORT")
    product_rates+=("$p"); baseline_rates+=("$b")
    echo "round $round/$ROUNDS: microservice-rust $p req/s, bare tiny_http $b req/s"
done
p=$(printf '%s\n' "${product_rates[@]}" | median)
b=$(printf '%s\n' "${baseline_rates[@]}" | median)
echo "median over $ROUNDS rounds of $DURATION at $CONNECTIONS connections:"
echo "  microservice-rust (production, 17 threads, example app): $p req/s"
echo "  bare tiny_http (17 threads calling recv()):              $b req/s"
awk -v p="$p" -v b="$b" 'BEGIN {printf "  ratio microservice-rust / bare tiny_http: %.2f\n", p / b}'
