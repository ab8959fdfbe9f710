//! A baseline of the benchmark (bench/run.py): bare hyper 1 on tokio, the least that the
//! product's HTTP layer can cost on the same stack. A multi-thread runtime accepts on the
//! address given, and each connection is one task serving HTTP/1.1 with keep-alive and
//! hyper's 5 s `header_read_timeout`; every request's body is read in full (as a handler
//! that takes uploads must) and it is answered `200` with the body `OK`. No config, no app
//! library, no thread pool for handlers, no limits beyond hyper's own.
//!
//! `IO_THREADS=N` gives the runtime N worker threads (the product's shape, with its
//! `io_threads`); without it, the runtime is tokio's default, one worker thread per CPU
//! this process may use, as `#[tokio::main]` makes it: bare hyper at its best on the
//! machine.
//!
//! `cargo run --release -p bench-baselines --bin bare-hyper -- 127.0.0.1:9090`

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let io_threads: Option<usize> = std::env::var("IO_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .filter(|t| *t > 0);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = io_threads {
        // The product's shape: nothing here blocks; one thread is enough for what tokio
        // itself puts there.
        builder.worker_threads(threads).max_blocking_threads(1);
    }
    let runtime = builder
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let io_threads =
        io_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    runtime.block_on(serve(address, io_threads));
}

async fn serve(address: String, io_threads: usize) {
    let listener = TcpListener::bind(&address)
        .await
        .expect("binding the address");
    eprintln!("bare hyper on http://{address} with {io_threads} io threads");
    let mut http = http1::Builder::new();
    // Without a timer, hyper silently ignores header_read_timeout.
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(5));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of fds, most likely: wait for connections to close instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let http = http.clone();
        tokio::spawn(async move {
            let _ = http
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _body = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(b"OK")));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}
