/*
 * The error paths of the C ABI as a C caller meets them: NULL handles and
 * names, malformed documents, non-UTF-8 text, invalid addresses and configs,
 * small buffers. Each must give its status code and a non-empty message
 * (freed with pymesh_string_free), leave out-pointers NULL, and never crash;
 * every free function must accept NULL. Exits non-zero on any mismatch.
 */
#include <stdio.h>
#include <string.h>

#include "pymesh.h"

static int failures = 0;

/*
 * Checks that a call returned `want` and, for errors, a non-empty message
 * containing `needle` (NULL: any message); for non-errors, no message.
 * Frees the message.
 */
static void expect_status(int line, pymesh_status got, char *message, pymesh_status want, const char *needle) {
    int is_error = want != PYMESH_OK && want != PYMESH_NOT_FOUND;
    int ok = got == want;
    if (is_error) {
        ok = ok && message != NULL && message[0] != '\0' && (needle == NULL || strstr(message, needle) != NULL);
    } else {
        ok = ok && message == NULL;
    }
    if (!ok) {
        fprintf(stderr, "%s:%d: want %s (message with \"%s\"), got %s, message \"%s\"\n", __FILE__, line,
                pymesh_status_str(want), needle ? needle : "", pymesh_status_str(got), message ? message : "(NULL)");
        failures++;
    }
    pymesh_string_free(message);
}

#define EXPECT(call, want, needle)                                                                 \
    do {                                                                                           \
        char *message_ = (char *)"garbage: must be overwritten";                                   \
        char **err = &message_;                                                                    \
        pymesh_status status_ = (call);                                                            \
        expect_status(__LINE__, status_, message_, want, needle);                                  \
    } while (0)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static const char DOC[] = "{\"table\": {\"ok.example\": {\"ips\": [\"192.0.2.1\"]}}}";

int main(void) {
    pymesh_name_table *table = (pymesh_name_table *)&failures; /* must be reset to NULL on error */
    pymesh_name_answer answer;
    pymesh_ip addrs[4];
    char buf[PYMESH_NAME_BUF_LEN];

    /* Free functions accept NULL; length and generation of NULL are 0. */
    pymesh_name_table_free(NULL);
    pymesh_name_table_builder_free(NULL);
    pymesh_live_name_table_free(NULL);
    pymesh_string_free(NULL);
    CHECK(pymesh_name_table_len(NULL) == 0);
    CHECK(pymesh_live_name_table_generation(NULL) == 0);
    CHECK(pymesh_status_str(12345) == NULL);
    CHECK(pymesh_name_form_str(-1) == NULL);
    CHECK(strcmp(pymesh_status_str(PYMESH_ERR_PANIC), "PYMESH_ERR_PANIC") == 0);

    /* Documents: NULL, malformed, not UTF-8, wrong shape; out must be given. */
    EXPECT(pymesh_name_table_from_json(NULL, 0, NULL, &table, err), PYMESH_ERR_INVALID_ARGUMENT, "NULL");
    CHECK(table == NULL);
    EXPECT(pymesh_name_table_from_json("{\"table\": ", 10, NULL, &table, err), PYMESH_ERR_PARSE, "<json>");
    CHECK(table == NULL);
    static const char not_utf8[] = "{\"table\": {\"caf\xe9.example\": {\"ips\": [\"192.0.2.1\"]}}}";
    EXPECT(pymesh_name_table_from_json(not_utf8, strlen(not_utf8), NULL, &table, err), PYMESH_ERR_PARSE, "UTF-8");
    EXPECT(pymesh_name_table_from_json("[1, 2]", 6, NULL, &table, err), PYMESH_ERR_PARSE, "table");
    EXPECT(pymesh_name_table_from_json(DOC, strlen(DOC), NULL, NULL, err), PYMESH_ERR_INVALID_ARGUMENT, "out");
    EXPECT(pymesh_name_table_from_yaml("table: [", 8, NULL, &table, err), PYMESH_ERR_PARSE, "<yaml>");
    static const uint8_t bad_nds[] = {0x0a, 0x7f, 0x01}; /* a length past the end */
    EXPECT(pymesh_name_table_from_nds(bad_nds, sizeof bad_nds, NULL, &table, err), PYMESH_ERR_PARSE, NULL);
    EXPECT(pymesh_name_table_from_nds(NULL, 5, NULL, &table, err), PYMESH_ERR_INVALID_ARGUMENT, "nds");
    EXPECT(pymesh_name_table_from_file("/nonexistent/pymesh/names.json", NULL, &table, err), PYMESH_ERR_IO,
           "/nonexistent/pymesh/names.json");
    EXPECT(pymesh_name_table_from_file(NULL, NULL, &table, err), PYMESH_ERR_INVALID_ARGUMENT, "path");
    CHECK(table == NULL);

    /* Invalid entries and configs are named. */
    static const char bad_ip[] = "{\"table\": {\"bad.example\": {\"ips\": [\"10.0.0.1\", \"10.0.0.300\"]}}}";
    EXPECT(pymesh_name_table_from_json(bad_ip, strlen(bad_ip), NULL, &table, err), PYMESH_ERR_INVALID_ENTRY,
           "\"bad.example\": ips[1]: \"10.0.0.300\" is not an IPv4 or IPv6 address");
    pymesh_name_config bad_domain = {.proxy_namespace = NULL, .domain = "a..b", .search = NULL, .search_len = 0};
    EXPECT(pymesh_name_table_from_json(DOC, strlen(DOC), &bad_domain, &table, err), PYMESH_ERR_INVALID_CONFIG,
           "domain");
    pymesh_name_config no_search = {.proxy_namespace = NULL, .domain = NULL, .search = NULL, .search_len = 1};
    EXPECT(pymesh_name_table_from_json(DOC, strlen(DOC), &no_search, &table, err), PYMESH_ERR_INVALID_ARGUMENT,
           "config->search");
    const char *null_search[] = {"ok.example", NULL};
    pymesh_name_config null_item = {.proxy_namespace = NULL, .domain = NULL, .search = null_search, .search_len = 2};
    EXPECT(pymesh_name_table_from_json(DOC, strlen(DOC), &null_item, &table, err), PYMESH_ERR_INVALID_ARGUMENT,
           "config->search[1] is NULL");
    pymesh_name_config bad_ns = {.proxy_namespace = "\xff", .domain = NULL, .search = NULL, .search_len = 0};
    EXPECT(pymesh_name_table_from_json(DOC, strlen(DOC), &bad_ns, &table, err), PYMESH_ERR_INVALID_ARGUMENT,
           "config->proxy_namespace is not valid UTF-8");
    CHECK(table == NULL);

    /* Builder: NULL builder, NULL or non-UTF-8 strings, then an invalid IP named at build. */
    const char *ips[] = {"192.0.2.1"};
    const char *bad_ips[] = {"not-an-ip"};
    const char *null_ips[] = {NULL};
    EXPECT(pymesh_name_table_builder_add(NULL, "x.example", ips, 1, NULL, NULL, NULL, err),
           PYMESH_ERR_INVALID_ARGUMENT, "builder");
    pymesh_name_table_builder *builder = pymesh_name_table_builder_new();
    CHECK(builder != NULL);
    EXPECT(pymesh_name_table_builder_add(builder, NULL, ips, 1, NULL, NULL, NULL, err), PYMESH_ERR_INVALID_ARGUMENT,
           "hostname is NULL");
    EXPECT(pymesh_name_table_builder_add(builder, "caf\xc3.example", ips, 1, NULL, NULL, NULL, err),
           PYMESH_ERR_INVALID_ARGUMENT, "hostname is not valid UTF-8");
    EXPECT(pymesh_name_table_builder_add(builder, "x.example", NULL, 1, NULL, NULL, NULL, err),
           PYMESH_ERR_INVALID_ARGUMENT, "ips");
    EXPECT(pymesh_name_table_builder_add(builder, "x.example", null_ips, 1, NULL, NULL, NULL, err),
           PYMESH_ERR_INVALID_ARGUMENT, "ips[0] is NULL");
    EXPECT(pymesh_name_table_builder_build(builder, NULL, &table, err), PYMESH_OK, NULL);
    CHECK(pymesh_name_table_len(table) == 0); /* the failed adds added nothing */
    pymesh_name_table_free(table);
    EXPECT(pymesh_name_table_builder_add(builder, "x.example", bad_ips, 1, NULL, NULL, NULL, err), PYMESH_OK, NULL);
    EXPECT(pymesh_name_table_builder_build(builder, NULL, &table, err), PYMESH_ERR_INVALID_ENTRY,
           "\"x.example\": ips[0]: \"not-an-ip\" is not an IPv4 or IPv6 address");
    CHECK(table == NULL);
    EXPECT(pymesh_name_table_builder_build(NULL, NULL, &table, err), PYMESH_ERR_INVALID_ARGUMENT, "builder");
    EXPECT(pymesh_name_table_builder_build(builder, NULL, NULL, err), PYMESH_ERR_INVALID_ARGUMENT, "out");
    pymesh_name_table_builder_free(builder);

    /* Lookups: NULL table, name, out; non-UTF-8 name; NULL addrs with a capacity. */
    EXPECT(pymesh_name_table_from_json(DOC, strlen(DOC), NULL, &table, err), PYMESH_OK, NULL);
    EXPECT(pymesh_name_table_lookup(NULL, "ok.example", 10, &answer, addrs, 4, err), PYMESH_ERR_INVALID_ARGUMENT,
           "table is NULL");
    EXPECT(pymesh_name_table_lookup(table, NULL, 10, &answer, addrs, 4, err), PYMESH_ERR_INVALID_ARGUMENT,
           "name is NULL");
    EXPECT(pymesh_name_table_lookup(table, "ok.example", 10, NULL, addrs, 4, err), PYMESH_ERR_INVALID_ARGUMENT,
           "out is NULL");
    EXPECT(pymesh_name_table_lookup(table, "ok.example", 10, &answer, NULL, 4, err), PYMESH_ERR_INVALID_ARGUMENT,
           "addrs");
    EXPECT(pymesh_name_table_lookup(table, "ok\xff.example", 11, &answer, addrs, 4, err),
           PYMESH_ERR_INVALID_ARGUMENT, "name is not valid UTF-8");
    /* Valid but unusual names are simply unknown, not errors. */
    EXPECT(pymesh_name_table_lookup(table, "", 0, &answer, addrs, 4, err), PYMESH_NOT_FOUND, NULL);
    EXPECT(pymesh_name_table_lookup(table, "b\xc3\xbc" "cher.example", strlen("b\xc3\xbc" "cher.example"), &answer, addrs, 4, err), PYMESH_NOT_FOUND,
           NULL);
    EXPECT(pymesh_name_table_lookup(table, "*.example", 9, &answer, addrs, 4, err), PYMESH_NOT_FOUND, NULL);
    /* name_len counts bytes; no NUL is needed or looked at. */
    EXPECT(pymesh_name_table_lookup(table, "ok.example.trailing", 10, &answer, NULL, 0, err), PYMESH_OK, NULL);
    CHECK(answer.n_ipv4 == 1);
    /* A NULL error_message slot is allowed: only the code comes back. */
    CHECK(pymesh_name_table_lookup(NULL, "x", 1, &answer, NULL, 0, NULL) == PYMESH_ERR_INVALID_ARGUMENT);

    /* Iteration: index out of range, NULL or small buffer. */
    EXPECT(pymesh_name_table_entry_hostname(table, 1, buf, sizeof buf, err), PYMESH_ERR_INVALID_ARGUMENT,
           "out of range");
    EXPECT(pymesh_name_table_entry_hostname(table, 0, NULL, 0, err), PYMESH_ERR_INVALID_ARGUMENT, "buf");
    EXPECT(pymesh_name_table_entry_hostname(table, 0, buf, 10, err), PYMESH_ERR_BUFFER_TOO_SMALL, "11 bytes");
    EXPECT(pymesh_name_table_entry_hostname(table, 0, buf, 11, err), PYMESH_OK, NULL);
    CHECK(strcmp(buf, "ok.example") == 0);
    EXPECT(pymesh_name_table_entry_hostname(NULL, 0, buf, sizeof buf, err), PYMESH_ERR_INVALID_ARGUMENT, "table");

    /* Live table: NULL live, NULL table (store always takes the table over). */
    pymesh_live_name_table *live = pymesh_live_name_table_new();
    EXPECT(pymesh_live_name_table_lookup(live, "ok.example", 10, &answer, addrs, 4, err), PYMESH_NOT_FOUND, NULL);
    EXPECT(pymesh_live_name_table_lookup(live, NULL, 0, &answer, addrs, 4, err), PYMESH_ERR_INVALID_ARGUMENT,
           "name is NULL");
    EXPECT(pymesh_live_name_table_lookup(NULL, "ok.example", 10, &answer, addrs, 4, err),
           PYMESH_ERR_INVALID_ARGUMENT, "live is NULL");
    EXPECT(pymesh_live_name_table_store(live, NULL, NULL, err), PYMESH_ERR_INVALID_ARGUMENT, "table is NULL");
    EXPECT(pymesh_live_name_table_store(NULL, table, NULL, err), PYMESH_ERR_INVALID_ARGUMENT, "live is NULL");
    table = NULL; /* freed by the failed store */
    CHECK(pymesh_live_name_table_generation(live) == 0);
    pymesh_live_name_table_free(live);

    if (failures != 0) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("names_errors: all checks passed\n");
    return 0;
}
