/*
 * Embedding pymesh's name table from C: build a table entry by entry, from a
 * JSON document, from a YAML file and from NDS protobuf bytes, look names up,
 * iterate the entries, and serve from a live table that is swapped while it
 * is in use. Exits non-zero on the first result that differs from what the
 * table rules (tests/cases/names.cases) say.
 *
 * Usage: names_example SCRATCH_DIR   (a directory for the YAML file)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pymesh.h"

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* Stops on an unexpected error, printing pymesh's message. */
static void must(pymesh_status status, char *message, const char *what) {
    if (status != PYMESH_OK) {
        fprintf(stderr, "%s: %s: %s\n", what, pymesh_status_str(status), message ? message : "(no message)");
        pymesh_string_free(message);
        exit(1);
    }
}

/* The answer to a lookup, with its addresses. */
typedef struct {
    pymesh_status status;
    pymesh_name_answer answer;
    pymesh_ip addrs[8];
} looked;

static looked look(const pymesh_name_table *table, const char *name) {
    looked r;
    char *err = NULL;
    r.status = pymesh_name_table_lookup(table, name, strlen(name), &r.answer, r.addrs, 8, &err);
    if (err != NULL) {
        fprintf(stderr, "lookup %s: %s\n", name, err);
        pymesh_string_free(err);
        failures++;
    }
    return r;
}

static int is_v4(const pymesh_ip *ip, unsigned a, unsigned b, unsigned c, unsigned d) {
    return ip->family == PYMESH_IPV4 && ip->bytes[0] == a && ip->bytes[1] == b && ip->bytes[2] == c &&
           ip->bytes[3] == d;
}

/* fd00::N */
static int is_fd00(const pymesh_ip *ip, unsigned n) {
    static const uint8_t prefix[15] = {0xfd, 0x00};
    return ip->family == PYMESH_IPV6 && memcmp(ip->bytes, prefix, 15) == 0 && ip->bytes[15] == n;
}

static void builder_example(const pymesh_name_config *config) {
    pymesh_name_table_builder *builder = pymesh_name_table_builder_new();
    char *err = NULL;
    const char *product_ips[] = {"10.96.0.20", "fd00::20", "10.96.0.21"};
    must(pymesh_name_table_builder_add(builder, "product.default.svc.cluster.local", product_ips, 3, "Kubernetes",
                                       "product", "default", &err),
         err, "add product");
    const char *db_ips[] = {"10.96.7.7"};
    must(pymesh_name_table_builder_add(builder, "db.storage.svc.cluster.local", db_ips, 1, "Kubernetes", "db",
                                       "storage", &err),
         err, "add db");
    const char *ext_ips[] = {"203.0.113.5"};
    must(pymesh_name_table_builder_add(builder, "www.example.com", ext_ips, 1, NULL, NULL, NULL, &err), err,
         "add www");

    pymesh_name_table *table = NULL;
    must(pymesh_name_table_builder_build(builder, config, &table, &err), err, "build");
    pymesh_name_table_builder_free(builder);
    CHECK(pymesh_name_table_len(table) == 3);

    /* The bare name of a service in the proxy's own namespace. */
    looked r = look(table, "Product");
    CHECK(r.status == PYMESH_OK);
    CHECK(strcmp(r.answer.canonical, "product.default.svc.cluster.local") == 0);
    CHECK(r.answer.form == PYMESH_NAME_FORM_SHORT_NAME);
    CHECK(strcmp(pymesh_name_form_str(r.answer.form), "name") == 0);
    CHECK(r.answer.search_index == -1);
    CHECK(r.answer.n_ipv4 == 2 && r.answer.n_ipv6 == 1);
    /* IPv4 first, in table order, then IPv6. */
    CHECK(is_v4(&r.addrs[0], 10, 96, 0, 20));
    CHECK(is_v4(&r.addrs[1], 10, 96, 0, 21));
    CHECK(is_fd00(&r.addrs[2], 0x20));

    /* name.namespace of another namespace, and a search domain stripped. */
    r = look(table, "db.storage.default.svc.cluster.local.");
    CHECK(r.status == PYMESH_OK);
    CHECK(strcmp(r.answer.canonical, "db.storage.svc.cluster.local") == 0);
    CHECK(r.answer.form == PYMESH_NAME_FORM_NAME_NAMESPACE);
    CHECK(r.answer.search_index == 0);
    CHECK(r.answer.n_ipv4 == 1 && is_v4(&r.addrs[0], 10, 96, 7, 7));
    /* Not in the proxy's namespace: no bare name. */
    CHECK(look(table, "db").status == PYMESH_NOT_FOUND);
    /* Not a Kubernetes service: no short forms. */
    r = look(table, "www.example.com");
    CHECK(r.status == PYMESH_OK && r.answer.form == PYMESH_NAME_FORM_HOSTNAME);
    CHECK(look(table, "api.github.com").status == PYMESH_NOT_FOUND);

    /* Iteration in input order. */
    const char *want[] = {"product.default.svc.cluster.local", "db.storage.svc.cluster.local", "www.example.com"};
    for (size_t i = 0; i < pymesh_name_table_len(table); i++) {
        char host[PYMESH_NAME_BUF_LEN];
        must(pymesh_name_table_entry_hostname(table, i, host, sizeof host, &err), err, "entry_hostname");
        CHECK(strcmp(host, want[i]) == 0);
    }
    pymesh_name_table_free(table);
}

static const char JSON_DOC[] =
    "{\"table\": {"
    "\"*.example.com\": {\"ips\": [\"198.51.100.1\"], \"registry\": \"External\"},"
    "\"legacy.example.org\": {\"ips\": [\"192.0.2.50\"], \"alt_hosts\": [\"old.example.org\"]}}}";

static void json_example(const pymesh_name_config *config) {
    pymesh_name_table *table = NULL;
    char *err = NULL;
    must(pymesh_name_table_from_json(JSON_DOC, strlen(JSON_DOC), config, &table, &err), err, "from_json");
    CHECK(err == NULL);

    looked r = look(table, "A.B.Example.COM");
    CHECK(r.status == PYMESH_OK);
    CHECK(strcmp(r.answer.canonical, "a.b.example.com") == 0); /* never a literal '*' */
    CHECK(r.answer.form == PYMESH_NAME_FORM_WILDCARD);
    CHECK(strcmp(pymesh_name_form_str(r.answer.form), "wildcard") == 0);
    CHECK(r.answer.n_ipv4 == 1 && r.answer.n_ipv6 == 0 && is_v4(&r.addrs[0], 198, 51, 100, 1));

    r = look(table, "old.example.org");
    CHECK(r.status == PYMESH_OK && r.answer.form == PYMESH_NAME_FORM_ALT_HOST);
    CHECK(strcmp(r.answer.canonical, "legacy.example.org") == 0);

    r = look(table, "example.com");
    CHECK(r.status == PYMESH_NOT_FOUND && r.answer.canonical[0] == '\0');
    pymesh_name_table_free(table);
}

static void yaml_file_example(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/names_example.yaml", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        exit(1);
    }
    fputs("table:\n  yaml.example.net:\n    ips: [\"192.0.2.7\", \"fd00::7\"]\n", f);
    fclose(f);

    pymesh_name_table *table = NULL;
    char *err = NULL;
    must(pymesh_name_table_from_file(path, NULL, &table, &err), err, "from_file");
    looked r = look(table, "yaml.example.net");
    CHECK(r.status == PYMESH_OK && r.answer.n_ipv4 == 1 && r.answer.n_ipv6 == 1);
    CHECK(is_v4(&r.addrs[0], 192, 0, 2, 7) && is_fd00(&r.addrs[1], 7));
    pymesh_name_table_free(table);
    remove(path);
}

/* An NDS NameTable by hand: field 1 (map entry) = {1: key, 2: NameInfo {1: ips, 2: registry}}. */
static void nds_example(void) {
    static const uint8_t nds[] = {
        0x0a, 27,                                                  /* table entry, 27 bytes */
        0x0a, 9, 'n', 'd', 's', '.', 'l', 'o', 'c', 'a', 'l',      /* key */
        0x12, 14,                                                  /* NameInfo, 14 bytes */
        0x0a, 8, '1', '0', '.', '1', '.', '2', '.', '3',           /* ips */
        0x12, 2, 'v', 'm',                                         /* registry */
    };
    pymesh_name_table *table = NULL;
    char *err = NULL;
    must(pymesh_name_table_from_nds(nds, sizeof nds, NULL, &table, &err), err, "from_nds");
    looked r = look(table, "nds.local");
    CHECK(r.status == PYMESH_OK && r.answer.n_ipv4 == 1 && is_v4(&r.addrs[0], 10, 1, 2, 3));
    pymesh_name_table_free(table);
}

static pymesh_status live_lookup(const pymesh_live_name_table *live, const char *name, pymesh_ip *addr) {
    pymesh_name_answer answer;
    return pymesh_live_name_table_lookup(live, name, strlen(name), &answer, addr, 1, NULL);
}

static void live_example(void) {
    pymesh_live_name_table *live = pymesh_live_name_table_new();
    pymesh_ip addr;
    /* No snapshot yet: everything is forwarded. */
    CHECK(live_lookup(live, "svc.example", &addr) == PYMESH_NOT_FOUND);
    CHECK(pymesh_live_name_table_generation(live) == 0);

    for (unsigned gen = 1; gen <= 3; gen++) {
        char doc[128];
        snprintf(doc, sizeof doc, "{\"table\": {\"svc.example\": {\"ips\": [\"10.0.0.%u\"]}}}", gen);
        pymesh_name_table *table = NULL;
        char *err = NULL;
        must(pymesh_name_table_from_json(doc, strlen(doc), NULL, &table, &err), err, "from_json");
        uint64_t generation = 0;
        /* The live table takes the snapshot over: no pymesh_name_table_free. */
        must(pymesh_live_name_table_store(live, table, &generation, &err), err, "store");
        CHECK(generation == gen);
        CHECK(live_lookup(live, "svc.example", &addr) == PYMESH_OK);
        CHECK(is_v4(&addr, 10, 0, 0, gen));
    }
    pymesh_live_name_table_free(live);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    const char *search[] = {"default.svc.cluster.local", "svc.cluster.local"};
    pymesh_name_config config = {
        .proxy_namespace = "default",
        .domain = NULL, /* cluster.local */
        .search = search,
        .search_len = 2,
    };
    builder_example(&config);
    json_example(&config);
    yaml_file_example(argv[1]);
    nds_example();
    live_example();
    if (failures != 0) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("names_example: all checks passed\n");
    return 0;
}
