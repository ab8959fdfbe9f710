/*
 * microservice_rust.h: the ABI between the microservice-rust worker and an app library.
 *
 * An app is a shared library that exports two functions:
 *
 *   uint32_t msr_abi_version(void);            must return MSR_ABI_VERSION
 *   const msr_app_api *msr_app_entry(void);    the app's function table (static data)
 *
 * The worker calls msr_abi_version first and refuses a library that answers another
 * version. It then calls `create` once, `handle` from many threads at once, `health` for
 * /healthz, and `shutdown` once before it exits.
 *
 * Memory: each side frees what it allocated.
 *   - The request and every byte it points at belong to the worker and are valid only
 *     during `handle`; copy what you keep. Its byte runs are not NUL-terminated.
 *   - The config passed to `create` belongs to the worker and is valid only during
 *     `create`. It IS NUL-terminated: config_json[config_len] == 0, so it can be passed
 *     to a parser that takes a C string.
 *   - The response's headers and body belong to the app until the worker passes the
 *     response to `release`, after the response has been sent. `release` may be NULL
 *     when the app returns only static data.
 *   - Error and health messages are written by the app into the worker's buffer, at most
 *     *_cap bytes including the terminating NUL.
 *
 * NULL: `create` returns NULL only to refuse to start. A stateless app returns any
 * non-NULL pointer (the address of a static object will do); the worker passes it back
 * as `app` and never frees it. `health`, `release` and `shutdown` may be NULL in the
 * table; `create` and `handle` may not. In a request, a byte run with len 0 may have a
 * NULL ptr, and `headers` may be NULL when header_count is 0 (likewise in a response).
 *
 * Threads: `handle` and `health` are called from several threads at once; `create` and
 * `shutdown` once each, with no other call running.
 *
 * src/sdk/abi.rs is the same ABI in Rust; the two change together, with MSR_ABI_VERSION.
 */
#ifndef MICROSERVICE_RUST_H
#define MICROSERVICE_RUST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version 2 appended `id`, `host` and `host_ctx` to msr_request. Version 3 appended
 * `version` and `time_left_us` to msr_request, `stream_cut` to msr_host and
 * `deadline_grace_ms` to msr_app_api. The
 * worker still loads version 1 and 2 apps (they never read past the fields of their
 * version, and the worker reads `deadline_grace_ms` only from a version 3 table); an older
 * worker refuses a newer app. */
#define MSR_ABI_VERSION 3u

/* msr_request.time_left_us of a request without a deadline. */
#define MSR_NO_DEADLINE UINT64_MAX

typedef struct msr_bytes {
    const uint8_t *ptr;
    size_t len;
} msr_bytes;

typedef struct msr_header {
    msr_bytes name;
    msr_bytes value;
} msr_header;

typedef struct msr_host msr_host;

typedef struct msr_request {
    msr_bytes method;
    msr_bytes path;          /* without the query string, not percent-decoded */
    msr_bytes query;         /* without the '?'; empty when there is none */
    const msr_header *headers; /* in the order received; names in lower case */
    size_t header_count;
    msr_bytes body;          /* the whole body, read before handle is called */
    msr_bytes peer;          /* the client's "ip:port" */
    /* ABI 2 */
    msr_bytes id;            /* the request's ID: the client's X-Request-ID if sane, else made up */
    const msr_host *host;    /* the worker's functions below, for this request */
    void *host_ctx;          /* passed back to them as ctx */
    /* ABI 3 */
    msr_bytes version;       /* the request line's protocol: "HTTP/1.1" or "HTTP/1.0" */
    uint64_t time_left_us;   /* microseconds to the deadline when handle was called (0 once
                              * passed); MSR_NO_DEADLINE without one */
} msr_request;

/* The worker's functions, callable from `handle` on the thread it runs on, while it runs. */
struct msr_host {
    /* 1 once the request is cancelled (its client left, or its deadline passed), else 0.
     * A long handler may look now and then and return early. */
    int32_t (*is_cancelled)(void *ctx);
    /* Starts a streamed response: the status and headers are sent at once, the body is
     * what stream_write sends, and it ends when handle returns (the response handle fills
     * in is then ignored, but still passed to release). 0, or -1 when the request is
     * cancelled or a stream was started already. The headers are copied. */
    int32_t (*stream_start)(void *ctx, uint16_t status, const msr_header *headers,
                            size_t header_count);
    /* Sends body bytes (copied). Blocks while the client reads slowly (at most 64 KiB wait in
     * the worker beyond the socket's buffer). 0, or -1 once the request is cancelled: the
     * response is then cut off and handle should return. */
    int32_t (*stream_write)(void *ctx, const uint8_t *bytes, size_t len);
    /* ABI 3. Ends a started stream as cut off: the connection closes without the last chunk,
     * so the client cannot take what it got for the whole answer (for an app that failed
     * half way). Later writes fail. 0, or -1 without a stream. */
    int32_t (*stream_cut)(void *ctx);
};

/* Optional: the worker's functions for the life of the process. When the library exports
 *
 *   void msr_attach_host(const msr_host_api *host);
 *
 * the worker calls it once, before `create`; keep the pointer. It is not part of the
 * version handshake: a library without it loads, and a worker that does not call it
 * leaves `host` unknown to the app (log to stderr yourself then). */
#define MSR_LOG_DEBUG 0u
#define MSR_LOG_INFO 1u
#define MSR_LOG_WARN 2u
#define MSR_LOG_ERROR 3u /* and any larger number */

/* Kinds of metric_declare, and operations of metric_update. */
#define MSR_METRIC_COUNTER 1u
#define MSR_METRIC_GAUGE 2u
#define MSR_METRIC_HISTOGRAM 3u
#define MSR_METRIC_ADD 1u     /* counters: a whole number >= 0; gauges: any */
#define MSR_METRIC_SET 2u     /* gauges */
#define MSR_METRIC_OBSERVE 3u /* histograms */

typedef struct msr_host_api {
    /* The table's size as the worker built it. Fields are only ever appended: call a
     * function only when its field lies within `size`. */
    size_t size;
    /* The worker's own pointer: pass it as each function's first argument. */
    void *host;
    /* Writes one line of the app's at `level` (MSR_LOG_*) in the worker's log_format,
     * beside its own lines on stderr, tagged with the worker's pid and, when request_ctx
     * is a request's host_ctx, with the request's ID, method and path. Pass a host_ctx only
     * on the thread running that request's handle, while it runs; NULL anywhere else.
     * Lines below the worker's log_level are left out. Never blocks: when stderr is
     * behind, the line is dropped and counted. `message` is len bytes of UTF-8 without a
     * line end (other bytes are replaced, control characters escaped, text past 16 KiB
     * cut). Any thread, any time. */
    void (*log)(void *host, void *request_ctx, uint32_t level, const uint8_t *message,
                size_t len);
    /* Declares one of the app's metrics, shown by /metrics beside the server's and summed
     * over every worker: kind MSR_METRIC_*, label_count label names (at most 4) and, for a
     * histogram, bound_count rising bucket bounds (at most 16). Names follow Prometheus's
     * rules; `microservice_` and `process_` are the server's. Returns the metric's number
     * (>= 0); declaring the same metric again (every worker does) returns the same. On a
     * refusal returns -1 after writing a NUL-terminated message naming the metric into
     * error (at most error_cap bytes): return it from create to stop the worker. */
    int64_t (*metric_declare)(void *host, uint32_t kind, msr_bytes name, msr_bytes help,
                              const msr_bytes *label_names, size_t label_count,
                              const double *bounds, size_t bound_count, uint8_t *error,
                              size_t error_cap);
    /* Updates the label set label_values (label_count, in the declared order) of metric id
     * with op (MSR_METRIC_ADD, _SET, _OBSERVE) and value. Lock-free, any thread. Counters
     * and histograms never go back, also when a worker is replaced; a gauge is each
     * worker's own. 0, or -1 when dropped: an unknown metric, an operation or value the
     * kind does not take, the wrong number of values, values over 240 bytes together, or
     * a new label set past the metric's 1,000 (counted in
     * microservice_app_series_dropped_total{metric="..."}). */
    int32_t (*metric_update)(void *host, int64_t id, uint32_t op, const msr_bytes *label_values,
                             size_t label_count, double value);
} msr_host_api;

typedef struct msr_response {
    uint16_t status;         /* 200..999; anything else (1xx too) is sent as 500 */
    const msr_header *headers;
    size_t header_count;
    msr_bytes body;
    void *owner;             /* the app's own handle, passed back to release */
} msr_response;

typedef struct msr_app_api {
    uint32_t abi_version;    /* MSR_ABI_VERSION */

    /* Builds the app from the resolved config (JSON text, config_len bytes followed by a
     * NUL). Returns the app's handle, never NULL on success; on failure returns NULL after
     * writing a NUL-terminated message of at most error_cap bytes into error. */
    void *(*create)(const uint8_t *config_json, size_t config_len,
                    uint8_t *error, size_t error_cap);

    /* Answers one request by filling in *response (zeroed by the worker). */
    void (*handle)(void *app, const msr_request *request, msr_response *response);

    /* Optional. 0 when healthy; otherwise non-zero after writing a NUL-terminated reason. */
    int32_t (*health)(void *app, uint8_t *message, size_t message_cap);

    /* Optional. Frees what handle allocated for *response. */
    void (*release)(void *app, msr_response *response);

    /* Optional. Stops the app and frees it; nothing is called after it. */
    void (*shutdown)(void *app);

    /* ABI 3. How long after a request's deadline the app takes to return from handle (it
     * looks at is_cancelled often), in milliseconds. The worker answers 504 at the
     * deadline either way; it writes the thread off and starts another only when handle
     * is still running this long after. 0: at the deadline. */
    uint32_t deadline_grace_ms;
} msr_app_api;

uint32_t msr_abi_version(void);
const msr_app_api *msr_app_entry(void);
void msr_attach_host(const msr_host_api *host); /* optional, see msr_host_api */

/* Optional: a batch handler. With the config's `batching: {"max_size": N, "timeout_s": T}`
 * the pool hands it up to N requests at once, waiting at most T after the first was read
 * for more. Fill in responses[i] (zeroed by the worker) for requests[i]; each is passed to
 * release after its answer is sent. Called from several threads at once, like handle.
 * Deadlines, cancellation (each request's host_ctx), the access log and the metrics stay
 * per request; stream_start fails in a batch. Without `batching` it is never called, and
 * without it `batching` is ignored (the worker says so at start). */
void msr_handle_batch(void *app, const msr_request *requests, size_t count,
                      msr_response *responses);

#ifdef __cplusplus
}
#endif

#endif /* MICROSERVICE_RUST_H */
