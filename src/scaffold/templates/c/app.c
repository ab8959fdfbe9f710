/*
 * @NAME@: a microservice-rust app in C. `make` builds build/lib@LIB@.so.
 *
 *   GET /                 a greeting: the config's "greeting" key
 *   GET /json             {"requests": N}
 *   GET /slow?seconds=S   answers after S seconds (default 2, at most 60)
 *   /healthz              asks health() below
 *
 * include/microservice_rust.h states the rules: who owns what, what may be NULL, which
 * functions run on many threads at once (handle and health).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "microservice_rust.h"

#define MAX_SLOW_S 60.0

struct app {
    char greeting[128];
    atomic_ulong requests;
};

static const char content_type[] = "content-type";
static const char text_plain[] = "text/plain; charset=utf-8";
static const char application_json[] = "application/json";

static const msr_header text_header = {
    {(const uint8_t *)content_type, sizeof content_type - 1},
    {(const uint8_t *)text_plain, sizeof text_plain - 1},
};
static const msr_header json_header = {
    {(const uint8_t *)content_type, sizeof content_type - 1},
    {(const uint8_t *)application_json, sizeof application_json - 1},
};

/* The string value of a top-level "key": "value" in the config (which the worker writes
 * as compact JSON), copied into out; 0 when absent. Escapes are left as they are: use a
 * JSON library for anything more. */
static int config_string(const char *json, const char *key, char *out, size_t cap) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *start = strstr(json, pattern);
    if (start == NULL) return 0;
    start += strlen(pattern);
    const char *end = strchr(start, '"');
    if (end == NULL || (size_t)(end - start) >= cap) return 0;
    memcpy(out, start, (size_t)(end - start));
    out[end - start] = '\0';
    return 1;
}

static void *create(const uint8_t *config_json, size_t config_len, uint8_t *error,
                    size_t error_cap) {
    (void)config_len; /* the config is NUL-terminated */
    struct app *app = calloc(1, sizeof *app);
    if (app == NULL) {
        snprintf((char *)error, error_cap, "out of memory");
        return NULL;
    }
    if (!config_string((const char *)config_json, "greeting", app->greeting,
                       sizeof app->greeting)) {
        strcpy(app->greeting, "Hello");
    }
    atomic_init(&app->requests, 0);
    return app;
}

static int is(msr_bytes bytes, const char *text) {
    return bytes.len == strlen(text) && memcmp(bytes.ptr, text, bytes.len) == 0;
}

/* The number after "seconds=" in the query, or the default. */
static double slow_seconds(msr_bytes query) {
    char text[64] = {0};
    memcpy(text, query.ptr, query.len < sizeof text - 1 ? query.len : sizeof text - 1);
    const char *at = strstr(text, "seconds=");
    double seconds = at ? strtod(at + strlen("seconds="), NULL) : 2.0;
    if (!(seconds >= 0.0)) seconds = 0.0;
    return seconds > MAX_SLOW_S ? MAX_SLOW_S : seconds;
}

/* Answers with text the app allocated; release() frees it once the worker has sent it. */
static void answer(msr_response *response, uint16_t status, const msr_header *header,
                   char *body, int len) {
    response->status = status;
    response->headers = header;
    response->header_count = 1;
    response->body.ptr = (const uint8_t *)body;
    response->body.len = len > 0 ? (size_t)len : 0;
    response->owner = body;
}

static void handle(void *app_handle, const msr_request *request, msr_response *response) {
    struct app *app = app_handle;
    unsigned long served = atomic_fetch_add(&app->requests, 1) + 1;
    char *body = malloc(256);
    if (body == NULL) {
        response->status = 503; /* no body: nothing to free */
        return;
    }
    int get = is(request->method, "GET");
    if (get && is(request->path, "/")) {
        answer(response, 200, &text_header, body,
               snprintf(body, 256, "%s, world!\n", app->greeting));
    } else if (get && is(request->path, "/json")) {
        answer(response, 200, &json_header, body,
               snprintf(body, 256, "{\"requests\": %lu}\n", served));
    } else if (get && is(request->path, "/slow")) {
        double seconds = slow_seconds(request->query);
        struct timespec pause = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
        nanosleep(&pause, NULL);
        answer(response, 200, &text_header, body,
               snprintf(body, 256, "slept %g s\n", seconds));
    } else {
        answer(response, 404, &text_header, body, snprintf(body, 256, "not found\n"));
    }
}

static int32_t health(void *app, uint8_t *message, size_t message_cap) {
    (void)app;
    (void)message;
    (void)message_cap;
    return 0; /* non-zero after writing a reason makes /healthz answer 503 */
}

static void release(void *app, msr_response *response) {
    (void)app;
    free(response->owner);
}

static void shutdown_app(void *app) { free(app); }

static const msr_app_api api = {
    MSR_ABI_VERSION, create, handle, health, release, shutdown_app,
};

uint32_t msr_abi_version(void) { return MSR_ABI_VERSION; }

const msr_app_api *msr_app_entry(void) { return &api; }
