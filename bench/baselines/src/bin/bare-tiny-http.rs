//! One of the benchmark's two baselines (bench/run.py): bare tiny_http, `THREADS` threads (default 17) calling
//! `recv()` on one shared server and answering `GET /` with `OK`, as tiny_http's own
//! examples do. No config, no deadlines, no app library.
//!
//! `cargo run --release -p bench-baselines --bin bare-tiny-http -- 127.0.0.1:9090`

use std::sync::Arc;

fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(17);
    let server = Arc::new(tiny_http::Server::http(&address).expect("binding the address"));
    eprintln!("bare tiny_http on http://{address} with {threads} threads");
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || {
                while let Ok(request) = server.recv() {
                    let _ = request.respond(tiny_http::Response::from_string("OK"));
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}
