/*
 * C driver of the shared lbtable conformance cases (tests/cases/lb.cases;
 * the Rust and Python drivers read the same file), plus the C-only checks
 * of the lbtable ABI: outcomes and time through pymesh_lb_report /
 * pymesh_lb_tick, NULL and bad arguments, NULL-safe frees.
 *
 * Each case goes through the C ABI as an embedding proxy would use it: the
 * `clusters` JSON to pymesh_lb_table_load, `load` to pymesh_lb_priority_load,
 * `pick` to pymesh_lb_pick, `assign` to pymesh_lb_table_load_assignments,
 * `redirect` to pymesh_redirect_table_from_json,
 * `classify` to pymesh_redirect_classify.
 *
 * Prints one line per mismatch and "N passed, M failed"; exits non-zero on
 * any failure.
 *
 * Usage: lb_conformance PATH/TO/lb.cases
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pymesh.h"

#define MAX_PRIO 16

static int passed = 0;
static int failed = 0;

static void check(bool ok, int line, const char *what, const char *detail) {
    if (ok) {
        passed++;
    } else {
        printf("FAIL (lb.cases:%d): %s%s%s\n", line, what, detail ? ": " : "", detail ? detail : "");
        failed++;
    }
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Parses "a,b,c" into out; returns the count. */
static size_t parse_list(const char *s, unsigned *out, bool *flags) {
    size_t n = 0;
    while (*s && *s != ' ' && n < MAX_PRIO) {
        if (flags) {
            flags[n] = strncmp(s, "yes", 3) == 0;
        } else {
            out[n] = (unsigned)strtoul(s, NULL, 10);
        }
        n++;
        while (*s && *s != ',' && *s != ' ') s++;
        if (*s == ',') s++;
    }
    return n;
}

static bool to_ip(const char *text, struct pymesh_ip *ip) {
    memset(ip, 0, sizeof *ip);
    if (inet_pton(AF_INET, text, ip->bytes) == 1) {
        ip->family = PYMESH_IPV4;
        return true;
    }
    if (inet_pton(AF_INET6, text, ip->bytes) == 1) {
        ip->family = PYMESH_IPV6;
        return true;
    }
    return false;
}

typedef struct {
    struct pymesh_lb_table *table;
    struct pymesh_redirect_table *redirect;
    const char *error; /* expected error substring */
    char *load_message;
    int line;
} state;

static void finish_case(state *st) {
    if (st->error) {
        check(st->load_message && strstr(st->load_message, st->error), st->line, "expected error",
              st->load_message ? st->load_message : "(loaded without error)");
    }
    pymesh_string_free(st->load_message);
    pymesh_lb_table_free(st->table);
    pymesh_redirect_table_free(st->redirect);
    memset(st, 0, sizeof *st);
}

static void run_check(state *st, const char *line, int n) {
    if (st->error || st->load_message) return; /* error cases check at the end */
    char msg[512];
    if (strncmp(line, "load ", 5) == 0) {
        char cluster[256];
        const char *arrow = strstr(line, " -> ");
        size_t len = (size_t)(arrow - (line + 5));
        memcpy(cluster, line + 5, len);
        cluster[len] = '\0';
        unsigned want_h[MAX_PRIO], want_d[MAX_PRIO], got_h[MAX_PRIO], got_d[MAX_PRIO];
        bool want_p[MAX_PRIO], got_p[MAX_PRIO];
        size_t nh = parse_list(strstr(arrow, "healthy ") + 8, want_h, NULL);
        parse_list(strstr(arrow, "degraded ") + 9, want_d, NULL);
        parse_list(strstr(arrow, "panic ") + 6, NULL, want_p);
        size_t count = 0;
        char *err = NULL;
        enum pymesh_status s =
            pymesh_lb_priority_load(st->table, cluster, got_h, got_d, got_p, MAX_PRIO, &count, &err);
        bool ok = s == PYMESH_OK && count == nh;
        for (size_t i = 0; ok && i < nh; i++) {
            ok = got_h[i] == want_h[i] && got_d[i] == want_d[i] && got_p[i] == want_p[i];
        }
        snprintf(msg, sizeof msg, "status %d, %zu priorities, first healthy %u", (int)s, count, count ? got_h[0] : 0);
        check(ok, n, line, ok ? NULL : msg);
        pymesh_string_free(err);
    } else if (strncmp(line, "pick ", 5) == 0) {
        char cluster[256] = {0}, key[256] = {0}, want[128] = {0};
        const char *arrow = strstr(line, " -> ");
        char lhs[600];
        size_t len = (size_t)(arrow - line);
        memcpy(lhs, line, len);
        lhs[len] = '\0';
        int k = sscanf(lhs, "pick %255s %255s", cluster, key);
        snprintf(want, sizeof want, "%s", arrow + 4);
        struct pymesh_lb_endpoint ep;
        char *err = NULL;
        enum pymesh_status s = pymesh_lb_pick(st->table, cluster, k == 2 ? (const uint8_t *)key : NULL,
                                              k == 2 ? strlen(key) : 0, &ep, &err);
        const char *got = s == PYMESH_OK ? ep.text : s == PYMESH_NOT_FOUND ? "none" : "(error)";
        snprintf(msg, sizeof msg, "got %s (%s)", got, err ? err : "");
        check(strcmp(got, want) == 0, n, line, msg);
        pymesh_string_free(err);
    } else if (strncmp(line, "classify ", 9) == 0) {
        char ip_text[64];
        unsigned port = 0;
        sscanf(line, "classify %63s %u", ip_text, &port);
        const char *want = strstr(line, " -> ") + 4;
        struct pymesh_ip ip;
        to_ip(ip_text, &ip);
        enum pymesh_redirect_verdict v;
        char name[256];
        char got[300];
        char *err = NULL;
        enum pymesh_status s = pymesh_redirect_classify(st->redirect, &ip, (uint16_t)port, &v, name, sizeof name, &err);
        if (s != PYMESH_OK) {
            snprintf(got, sizeof got, "(status %d: %s)", (int)s, err ? err : "");
        } else if (v == PYMESH_REDIRECT_CLUSTER) {
            snprintf(got, sizeof got, "cluster %s", name);
        } else {
            snprintf(got, sizeof got, "%s", v == PYMESH_REDIRECT_PASSTHROUGH ? "passthrough" : "bypass");
        }
        check(strcmp(got, want) == 0, n, line, got);
        pymesh_string_free(err);
    }
}

static void run_file(char *text) {
    state st;
    memset(&st, 0, sizeof st);
    bool in_case = false;
    int n = 0;
    char *p = text;
    while (*p) {
        char *end = strchr(p, '\n');
        if (end) *end = '\0';
        n++;
        char *line = p;
        p = end ? end + 1 : p + strlen(p);
        if (line[0] == '\0' || line[0] == '#') continue;
        if (strncmp(line, "case ", 5) == 0) {
            if (in_case) finish_case(&st);
            in_case = true;
            st.line = n;
        } else if (strncmp(line, "clusters ", 9) == 0) {
            const char *json = line + 9;
            pymesh_lb_table_new(1, true, &st.table, NULL);
            pymesh_lb_table_load(st.table, json, strlen(json), false, 0, &st.load_message);
        } else if (strncmp(line, "redirect ", 9) == 0) {
            const char *json = line + 9;
            pymesh_redirect_table_from_json(json, strlen(json), false, &st.redirect, &st.load_message);
        } else if (strncmp(line, "assign ", 7) == 0) {
            const char *json = line + 7;
            char *err = NULL;
            check(pymesh_lb_table_load_assignments(st.table, json, strlen(json), false, 0, &err) == PYMESH_OK, n,
                  "assign", err);
            pymesh_string_free(err);
        } else if (strncmp(line, "error ", 6) == 0) {
            st.error = line + 6;
        } else {
            if (st.load_message && !st.error) {
                check(false, n, "unexpected load error", st.load_message);
                continue;
            }
            run_check(&st, line, n);
        }
    }
    if (in_case) finish_case(&st);
}

static const char OUTLIER[] =
    "[{\"name\": \"c\", \"outlier_detection\": {\"interval\": \"1s\", \"base_ejection_time\": \"5s\"},"
    " \"load_assignment\": {\"endpoints\": [{\"lb_endpoints\": ["
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"10.0.0.1\", \"port_value\": 80}}}},"
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"10.0.0.2\", \"port_value\": 80}}}},"
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"10.0.0.3\", \"port_value\": 80}}}},"
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"10.0.0.4\", \"port_value\": 80}}}},"
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"10.0.0.5\", \"port_value\": 80}}}},"
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"10.0.0.6\", \"port_value\": 80}}}},"
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"10.0.0.7\", \"port_value\": 80}}}},"
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"10.0.0.8\", \"port_value\": 80}}}},"
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"10.0.0.9\", \"port_value\": 80}}}},"
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"10.0.0.10\", \"port_value\": 80}}}}"
    "]}]}}]";

/* Outlier detection and time through the ABI, and the error paths. */
static void abi_checks(void) {
    struct pymesh_lb_table *t = NULL;
    char *err = NULL;
    check(pymesh_lb_table_new(7, true, &t, &err) == PYMESH_OK && t, 0, "pymesh_lb_table_new", err);
    check(pymesh_lb_table_load(t, OUTLIER, strlen(OUTLIER), false, 0, &err) == PYMESH_OK, 0, "load outlier", err);
    check(pymesh_lb_table_len(t) == 1, 0, "pymesh_lb_table_len", NULL);
    bool changed = false;
    for (int i = 0; i < 5; i++) {
        pymesh_lb_request_started(t, "c", "10.0.0.1:80", NULL);
        pymesh_lb_report(t, "c", "10.0.0.1:80", PYMESH_LB_HTTP, 503, true, 100 + i, &changed, &err);
    }
    check(changed, 0, "fifth 503 ejects", err);
    bool seen = false;
    for (int i = 0; i < 200; i++) {
        struct pymesh_lb_endpoint ep;
        pymesh_lb_pick(t, "c", NULL, 0, &ep, NULL);
        seen |= strcmp(ep.text, "10.0.0.1:80") == 0;
    }
    check(!seen, 0, "ejected endpoint is not picked", NULL);
    check(pymesh_lb_tick(t, 4000) == 0, 0, "still ejected at 4 s", NULL);
    check(pymesh_lb_tick(t, 6000) == 1, 0, "returned at the 6 s sweep", NULL);
    pymesh_lb_set_health_check(t, "c", "10.0.0.2:80", false, 7000, &err);
    check(err == NULL, 0, "set_health_check", err);

    /* Errors: unknown cluster and endpoint, bad status, NULLs, buffer sizes. */
    struct pymesh_lb_endpoint ep;
    check(pymesh_lb_pick(t, "nope", NULL, 0, &ep, &err) == PYMESH_ERR_INVALID_ARGUMENT && err &&
              strstr(err, "no cluster \"nope\""), 0, "unknown cluster", err);
    pymesh_string_free(err);
    err = NULL;
    check(pymesh_lb_report(t, "c", "10.0.0.99:80", PYMESH_LB_HTTP, 200, false, 0, NULL, &err) ==
              PYMESH_ERR_INVALID_ARGUMENT, 0, "unknown endpoint", err);
    pymesh_string_free(err);
    err = NULL;
    check(pymesh_lb_report(t, "c", "10.0.0.2:80", PYMESH_LB_HTTP, 42, false, 0, NULL, &err) ==
              PYMESH_ERR_INVALID_ARGUMENT, 0, "bad http status", err);
    pymesh_string_free(err);
    check(pymesh_lb_pick(NULL, "c", NULL, 0, &ep, NULL) == PYMESH_ERR_INVALID_ARGUMENT, 0, "NULL table", NULL);
    check(pymesh_lb_pick(t, NULL, NULL, 0, &ep, NULL) == PYMESH_ERR_INVALID_ARGUMENT, 0, "NULL cluster", NULL);
    check(pymesh_lb_pick(t, "c", NULL, 0, NULL, NULL) == PYMESH_ERR_INVALID_ARGUMENT, 0, "NULL out", NULL);
    unsigned h[1], d[1];
    bool p[1];
    size_t count = 0;
    check(pymesh_lb_priority_load(t, "c", h, d, p, 1, &count, NULL) == PYMESH_OK && count == 1 && h[0] == 100, 0,
          "priority load", NULL);
    err = NULL;
    const char *bad = "[{\"name\": \"x\", \"lb_policy\": \"MAGLEV\", \"maglev_lb_config\": {\"table_size\": 4}}]";
    check(pymesh_lb_table_load(t, bad, strlen(bad), false, 0, &err) == PYMESH_ERR_INVALID_ENTRY && err &&
              strstr(err, "cluster \"x\": maglev_lb_config.table_size"), 0, "invalid cluster", err);
    pymesh_string_free(err);
    check(pymesh_lb_table_len(t) == 1, 0, "failed load keeps the table", NULL);
    check(pymesh_lb_table_load(t, "{", 1, false, 0, NULL) == PYMESH_ERR_PARSE, 0, "parse error", NULL);

    struct pymesh_redirect_table *r = NULL;
    const char *rj = "{\"services\": [{\"address\": \"10.96.0.20\", \"port\": 80, \"cluster\": \"outbound|80||web\"}]}";
    check(pymesh_redirect_table_from_json(rj, strlen(rj), false, &r, NULL) == PYMESH_OK, 0, "redirect", NULL);
    struct pymesh_ip ip;
    to_ip("10.96.0.20", &ip);
    enum pymesh_redirect_verdict v;
    char small[4];
    check(pymesh_redirect_classify(r, &ip, 80, &v, small, sizeof small, NULL) == PYMESH_ERR_BUFFER_TOO_SMALL, 0,
          "small cluster buffer", NULL);
    check(pymesh_redirect_classify(r, &ip, 80, &v, NULL, 0, NULL) == PYMESH_OK && v == PYMESH_REDIRECT_CLUSTER, 0,
          "verdict without name", NULL);
    ip.family = 5;
    check(pymesh_redirect_classify(r, &ip, 80, &v, NULL, 0, NULL) == PYMESH_ERR_INVALID_ARGUMENT, 0, "bad family",
          NULL);
    pymesh_redirect_table_free(r);
    pymesh_redirect_table_free(NULL);
    pymesh_lb_table_free(t);
    pymesh_lb_table_free(NULL);
    check(pymesh_lb_tick(NULL, 0) == 0 && pymesh_lb_table_len(NULL) == 0, 0, "NULL-safe", NULL);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH/TO/lb.cases\n", argv[0]);
        return 2;
    }
    char *text = read_file(argv[1]);
    if (!text) return 2;
    run_file(text);
    free(text);
    abi_checks();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
