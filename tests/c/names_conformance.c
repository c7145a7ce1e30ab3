/*
 * C driver of the shared name table conformance cases
 * (tests/cases/names.cases; the Rust and Python drivers read the same file).
 * Every case goes through the C ABI as an embedding program would use it:
 * the `table` line's JSON to pymesh_name_table_from_json, the `config` line
 * to a pymesh_name_config, each `expect` to pymesh_name_table_lookup.
 *
 * Prints one line per mismatch and a last line "N passed, M failed"; exits
 * non-zero if anything failed or the file could not be read.
 *
 * Usage: names_conformance PATH/TO/names.cases
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pymesh.h"

#define MAX_SEARCH 16
#define MAX_ADDRS 64

/* One case, its strings pointing into the file buffer. */
typedef struct {
    const char *title;
    const char *proxy_namespace;
    const char *domain;
    const char *search[MAX_SEARCH];
    size_t search_len;
    const char *table;
    const char *error; /* the `error` directive's substring, or NULL */
    const char **expects;
    size_t n_expects;
    size_t cap_expects;
    int line; /* of the `case` directive */
} test_case;

static int passed = 0;
static int failed = 0;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void fail(const test_case *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL [%s] (line %d): ", c->title, c->line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    failed++;
}

/* The whole file, NUL-terminated; NULL (after a message) on error. */
static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long size;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        (buf = malloc((size_t)size + 1)) == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        perror(path);
        free(buf);
        if (f != NULL) {
            fclose(f);
        }
        return NULL;
    }
    fclose(f);
    buf[size] = '\0';
    return buf;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t' || *s == '\r') {
        s++;
    }
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r')) {
        s[--n] = '\0';
    }
    return s;
}

/* Splits `s` at the first occurrence of `sep`: returns the rest, or NULL. */
static char *split_once(char *s, const char *sep) {
    char *at = strstr(s, sep);
    if (at == NULL) {
        return NULL;
    }
    *at = '\0';
    return at + strlen(sep);
}

/* Appends " ADDR" to `got`, ADDR spelled as inet_ntop spells it ("10.0.0.1", "fd00::1"). */
static void append_ip(char *got, size_t cap, const pymesh_ip *ip) {
    char text[INET6_ADDRSTRLEN];
    int family = ip->family == PYMESH_IPV4 ? AF_INET : AF_INET6;
    if (inet_ntop(family, ip->bytes, text, sizeof text) == NULL) {
        snprintf(text, sizeof text, "?family%u", ip->family);
    }
    strncat(got, " ", cap - strlen(got) - 1);
    strncat(got, text, cap - strlen(got) - 1);
}

/*
 * Checks one `expect QUERY TYPE -> ...` line. Canonical name and form are
 * compared as text; addresses are compared as bytes after inet_pton, so the
 * check does not depend on how a library spells IPv6 addresses.
 */
static void check_expect(const test_case *c, const pymesh_name_table *table, const char *line) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", line);
    char *rhs = split_once(buf, " -> ");
    char *query = buf;
    char *qtype = rhs == NULL ? NULL : split_once(query, " ");
    if (rhs == NULL || qtype == NULL) {
        fail(c, "malformed expect %s", line);
        return;
    }
    int want_family;
    if (strcmp(qtype, "A") == 0) {
        want_family = PYMESH_IPV4;
    } else if (strcmp(qtype, "AAAA") == 0) {
        want_family = PYMESH_IPV6;
    } else {
        fail(c, "unknown query type %s in %s", qtype, line);
        return;
    }

    pymesh_name_answer answer;
    pymesh_ip addrs[MAX_ADDRS];
    char *err = NULL;
    pymesh_status status = pymesh_name_table_lookup(table, query, strlen(query), &answer, addrs, MAX_ADDRS, &err);

    /* What we got, in the directive's own format. */
    char got[4096] = "";
    if (status == PYMESH_NOT_FOUND) {
        snprintf(got, sizeof got, "unknown");
    } else if (status == PYMESH_OK) {
        snprintf(got, sizeof got, "%s %s", answer.canonical, pymesh_name_form_str(answer.form));
        if (answer.search_index >= 0) {
            char at[16];
            snprintf(at, sizeof at, "@%d", (int)answer.search_index);
            strncat(got, at, sizeof got - strlen(got) - 1);
        }
        size_t n = answer.n_ipv4 + answer.n_ipv6;
        for (size_t i = 0; i < n && i < MAX_ADDRS; i++) {
            if (addrs[i].family == want_family) {
                append_ip(got, sizeof got, &addrs[i]);
            }
        }
    } else {
        snprintf(got, sizeof got, "%s: %s", pymesh_status_str(status), err ? err : "(no message)");
        pymesh_string_free(err);
        fail(c, "%s: lookup failed: %s", line, got);
        return;
    }

    /* Compare with what the line wants. */
    char want[4096];
    snprintf(want, sizeof want, "%s", rhs);
    int ok = 1;
    char *save = NULL;
    char *tok = strtok_r(want, " ", &save);
    if (tok == NULL) {
        ok = 0;
    } else if (strcmp(tok, "unknown") == 0) {
        ok = status == PYMESH_NOT_FOUND && strtok_r(NULL, " ", &save) == NULL;
    } else if (status != PYMESH_OK || strcmp(tok, answer.canonical) != 0) {
        ok = 0;
    } else {
        /* FORM or FORM@SEARCH */
        char form[64];
        snprintf(form, sizeof form, "%s", pymesh_name_form_str(answer.form));
        if (answer.search_index >= 0) {
            char at[16];
            snprintf(at, sizeof at, "@%d", (int)answer.search_index);
            strncat(form, at, sizeof form - strlen(form) - 1);
        }
        tok = strtok_r(NULL, " ", &save);
        ok = tok != NULL && strcmp(tok, form) == 0;
        /* The addresses of the asked family, in order: IPv4 come first in addrs. */
        size_t first = want_family == PYMESH_IPV4 ? 0 : answer.n_ipv4;
        size_t count = want_family == PYMESH_IPV4 ? answer.n_ipv4 : answer.n_ipv6;
        size_t i = 0;
        while (ok && (tok = strtok_r(NULL, " ", &save)) != NULL) {
            uint8_t bytes[16] = {0};
            int af = want_family == PYMESH_IPV4 ? AF_INET : AF_INET6;
            ok = i < count && first + i < MAX_ADDRS && inet_pton(af, tok, bytes) == 1 &&
                 addrs[first + i].family == want_family &&
                 memcmp(addrs[first + i].bytes, bytes, want_family == PYMESH_IPV4 ? 4 : 16) == 0;
            i++;
        }
        ok = ok && i == count;
    }
    if (ok) {
        passed++;
    } else {
        fail(c, "%s: want \"%s\", got \"%s\"", line, rhs, got);
    }
}

static void run_case(const test_case *c) {
    pymesh_name_config config = {
        .proxy_namespace = c->proxy_namespace,
        .domain = c->domain,
        .search = c->search,
        .search_len = c->search_len,
    };
    pymesh_name_table *table = NULL;
    char *err = NULL;
    const char *json = c->table != NULL ? c->table : "";
    pymesh_status status = pymesh_name_table_from_json(json, strlen(json), &config, &table, &err);

    if (c->error != NULL) {
        if (status == PYMESH_OK) {
            fail(c, "built, expected an error containing \"%s\"", c->error);
        } else if (err == NULL || strstr(err, c->error) == NULL) {
            fail(c, "error \"%s\" lacks \"%s\"", err ? err : "(no message)", c->error);
        } else {
            passed++;
        }
    } else if (status != PYMESH_OK) {
        /* Every check of the case fails with the build. */
        size_t n = c->n_expects > 0 ? c->n_expects : 1;
        for (size_t i = 0; i < n; i++) {
            fail(c, "build failed: %s: %s", pymesh_status_str(status), err ? err : "(no message)");
        }
    } else {
        for (size_t i = 0; i < c->n_expects; i++) {
            check_expect(c, table, c->expects[i]);
        }
    }
    pymesh_string_free(err);
    pymesh_name_table_free(table);
}

static void reset_case(test_case *c, const char *title, int line) {
    c->title = title;
    c->proxy_namespace = NULL;
    c->domain = NULL;
    c->search_len = 0;
    c->table = NULL;
    c->error = NULL;
    c->n_expects = 0;
    c->line = line;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s names.cases\n", argv[0]);
        return 2;
    }
    char *text = read_file(argv[1]);
    if (text == NULL) {
        return 2;
    }
    test_case c = {0};
    int have_case = 0, n_cases = 0, line_no = 0;
    for (char *next = text; next != NULL;) {
        char *line = next;
        char *newline = strchr(line, '\n');
        next = newline != NULL ? newline + 1 : NULL;
        if (newline != NULL) {
            *newline = '\0';
        }
        line_no++;
        line = trim(line);
        if (line[0] == '\0' || line[0] == '#') {
            continue;
        }
        char *rest = split_once(line, " ");
        if (rest == NULL) {
            rest = line + strlen(line);
        }
        rest = trim(rest);
        if (strcmp(line, "case") == 0) {
            if (have_case) {
                run_case(&c);
            }
            reset_case(&c, rest, line_no);
            have_case = 1;
            n_cases++;
            continue;
        }
        if (!have_case) {
            fprintf(stderr, "%s: directive %s before the first case\n", argv[1], line);
            return 2;
        }
        if (strcmp(line, "config") == 0) {
            char *save_kv = NULL;
            for (char *kv = strtok_r(rest, " \t", &save_kv); kv != NULL; kv = strtok_r(NULL, " \t", &save_kv)) {
                char *value = split_once(kv, "=");
                if (value == NULL) {
                    fprintf(stderr, "%s: config needs KEY=VALUE, got %s\n", argv[1], kv);
                    return 2;
                }
                if (strcmp(kv, "namespace") == 0) {
                    c.proxy_namespace = value;
                } else if (strcmp(kv, "domain") == 0) {
                    c.domain = value;
                } else if (strcmp(kv, "search") == 0) {
                    char *save_s = NULL;
                    for (char *s = strtok_r(value, ",", &save_s); s != NULL; s = strtok_r(NULL, ",", &save_s)) {
                        if (c.search_len == MAX_SEARCH) {
                            fprintf(stderr, "%s: more than %d search domains\n", argv[1], MAX_SEARCH);
                            return 2;
                        }
                        c.search[c.search_len++] = s;
                    }
                } else {
                    fprintf(stderr, "%s: unknown config key %s\n", argv[1], kv);
                    return 2;
                }
            }
        } else if (strcmp(line, "table") == 0) {
            c.table = rest;
        } else if (strcmp(line, "expect") == 0) {
            if (c.n_expects == c.cap_expects) {
                c.cap_expects = c.cap_expects ? c.cap_expects * 2 : 16;
                const char **more = realloc((void *)c.expects, c.cap_expects * sizeof *c.expects);
                if (more == NULL) {
                    perror("realloc");
                    return 2;
                }
                c.expects = more;
            }
            c.expects[c.n_expects++] = rest;
        } else if (strcmp(line, "error") == 0) {
            c.error = rest;
        } else {
            fprintf(stderr, "%s: unknown directive %s\n", argv[1], line);
            return 2;
        }
    }
    if (have_case) {
        run_case(&c);
    }
    free((void *)c.expects);
    free(text);
    if (n_cases < 20) {
        printf("FAIL: only %d cases in %s: the file looks truncated\n", n_cases, argv[1]);
        failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
