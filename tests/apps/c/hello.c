/*
 * A microservice-rust app in C, for the tests. Built by the tests with `cc`:
 *
 *   (no define)       a working app: GET /hello → "hello from C, <method> <path>", and
 *                     a warning in the worker's log naming the request (msr_attach_host),
 *                     counted in /metrics as c_hello_total{method=...}; with `batching`,
 *                     a batch handler whose answers say "batch of <count>"
 *   -DFOREIGN_ABI     answers the handshake with another ABI version
 *   -DABI_V1          an app of ABI version 1, which knows the request without its ID
 *   -DABI_V2          an app of ABI version 2, which knows the request without its
 *                     version and deadline
 *   -DNO_ENTRY        answers the handshake but exports no msr_app_entry
 *   -DREFUSE          its create fails with a message
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "microservice_rust.h"

#ifdef ABI_V1
#define APP_ABI 1u
#elif defined(ABI_V2)
#define APP_ABI 2u
#else
#define APP_ABI MSR_ABI_VERSION
#endif

#define CONTENT_TYPE "Content-Type"
#define TEXT_PLAIN "text/plain"

static const msr_header text_header = {
    {(const uint8_t *)CONTENT_TYPE, sizeof CONTENT_TYPE - 1},
    {(const uint8_t *)TEXT_PLAIN, sizeof TEXT_PLAIN - 1},
};

struct app {
    int requests_seen;
};

#ifndef ABI_V1
/* The worker's functions, given before create, and the app's metric. */
static const msr_host_api *host_api;
static int64_t hello_metric = -1;

void msr_attach_host(const msr_host_api *host) { host_api = host; }

static void app_log(void *request_ctx, uint32_t level, const char *message) {
    if (host_api != NULL && host_api->size >= sizeof(msr_host_api)) {
        host_api->log(host_api->host, request_ctx, level, (const uint8_t *)message,
                      strlen(message));
    }
}
#endif

static void *create(const uint8_t *config_json, size_t config_len, uint8_t *error,
                    size_t error_cap) {
    /* The header promises a NUL after the config's bytes. */
    if (config_json[config_len] != 0 || strlen((const char *)config_json) != config_len) {
        snprintf((char *)error, error_cap, "the config is not NUL-terminated");
        return NULL;
    }
#ifdef REFUSE
    snprintf((char *)error, error_cap, "the C app refuses to start");
    return NULL;
#else
    (void)error;
    (void)error_cap;
#ifndef ABI_V1
    app_log(NULL, MSR_LOG_INFO, "the C app is starting");
    if (host_api != NULL && host_api->size >= sizeof(msr_host_api)) {
        static const char name[] = "c_hello_total", help[] = "Hellos, by method.";
        static const char label[] = "method";
        msr_bytes labels[1] = {{(const uint8_t *)label, sizeof label - 1}};
        hello_metric = host_api->metric_declare(
            host_api->host, MSR_METRIC_COUNTER, (msr_bytes){(const uint8_t *)name, sizeof name - 1},
            (msr_bytes){(const uint8_t *)help, sizeof help - 1}, labels, 1, NULL, 0, error,
            error_cap);
        if (hello_metric < 0) {
            return NULL;
        }
    }
#endif
    return calloc(1, sizeof(struct app));
#endif
}

static void handle(void *app, const msr_request *request, msr_response *response) {
    ((struct app *)app)->requests_seen++; /* racy, and only a test */
    char *body = malloc(256);
    int len = snprintf(body, 256, "hello from C, %.*s %.*s", (int)request->method.len,
                       (const char *)request->method.ptr, (int)request->path.len,
                       (const char *)request->path.ptr);
#ifndef ABI_V1
    /* ABI 2: the request's ID, and the worker's answer to is_cancelled. */
    len += snprintf(body + len, 256 - (size_t)len, ", request %.*s, cancelled %d",
                    (int)request->id.len, (const char *)request->id.ptr,
                    (int)request->host->is_cancelled(request->host_ctx));
#ifndef ABI_V2
    /* ABI 3: the protocol, and whether there is a deadline. */
    len += snprintf(body + len, 256 - (size_t)len, ", %.*s, %s", (int)request->version.len,
                    (const char *)request->version.ptr,
                    request->time_left_us == MSR_NO_DEADLINE ? "no deadline" : "a deadline");
#endif
    app_log(request->host_ctx, MSR_LOG_WARN, "hello from C\nin the log");
    if (hello_metric >= 0) {
        host_api->metric_update(host_api->host, hello_metric, MSR_METRIC_ADD, &request->method, 1,
                                1.0);
    }
#endif
    response->status = 200;
    response->headers = &text_header;
    response->header_count = 1;
    response->body.ptr = (const uint8_t *)body;
    response->body.len = (size_t)len;
    response->owner = body;
}

#ifndef ABI_V1
/* A batch handler (used with `batching` in the config): each answer says how many
 * requests came together. */
void msr_handle_batch(void *app, const msr_request *requests, size_t count,
                      msr_response *responses) {
    (void)app;
    (void)requests;
    for (size_t i = 0; i < count; i++) {
        char *body = malloc(64);
        int len = snprintf(body, 64, "batch of %zu", count);
        responses[i].status = 200;
        responses[i].headers = &text_header;
        responses[i].header_count = 1;
        responses[i].body.ptr = (const uint8_t *)body;
        responses[i].body.len = (size_t)len;
        responses[i].owner = body;
    }
}
#endif

static void release(void *app, msr_response *response) {
    (void)app;
    free(response->owner);
}

static void shutdown_app(void *app) { free(app); }

/* Unused in the NO_ENTRY variant. */
__attribute__((unused)) static const msr_app_api api = {
    APP_ABI, create, handle, NULL, release, shutdown_app,
};

uint32_t msr_abi_version(void) {
#ifdef FOREIGN_ABI
    return MSR_ABI_VERSION + 1;
#else
    return APP_ABI;
#endif
}

#ifndef NO_ENTRY
const msr_app_api *msr_app_entry(void) { return &api; }
#endif
