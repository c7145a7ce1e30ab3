/*
 * An embedding proxy's use of pymesh_dns_answer: it keeps its own sockets
 * and asks pymesh for the reply to each query packet. Checks an A answer
 * (ID, flags, owner pointer, address), NODATA with an SOA, a forward
 * (PYMESH_NOT_FOUND), a dropped runt, UDP truncation with TC against TCP,
 * and argument errors. Exits non-zero on any mismatch.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pymesh.h"

static int failures = 0;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

/* Writes a query for dotted `name` and `qtype` into `buf`; returns its length. */
static size_t make_query(uint8_t *buf, const char *name, uint16_t qtype) {
    static const uint8_t header[12] = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    size_t n = sizeof header;
    memcpy(buf, header, n);
    const char *p = name;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        buf[n++] = (uint8_t)len;
        memcpy(buf + n, p, len);
        n += len;
        p += len + (dot ? 1 : 0);
    }
    buf[n++] = 0;
    buf[n++] = (uint8_t)(qtype >> 8);
    buf[n++] = (uint8_t)qtype;
    buf[n++] = 0;
    buf[n++] = 1;
    return n;
}

static uint16_t u16_at(const uint8_t *b, size_t at) { return (uint16_t)((b[at] << 8) | b[at + 1]); }

int main(void) {
    static const char json[] =
        "{\"table\": {\"product.default.svc.cluster.local\": {\"ips\": [\"10.96.0.20\"], \"registry\": \"Kubernetes\","
        " \"shortname\": \"product\", \"namespace\": \"default\"},"
        " \"many.default.svc.cluster.local\": {\"ips\": [\"10.1.0.1\", \"10.1.0.2\", \"10.1.0.3\", \"10.1.0.4\","
        " \"10.1.0.5\", \"10.1.0.6\", \"10.1.0.7\", \"10.1.0.8\", \"10.1.0.9\", \"10.1.0.10\", \"10.1.0.11\","
        " \"10.1.0.12\", \"10.1.0.13\", \"10.1.0.14\", \"10.1.0.15\", \"10.1.0.16\", \"10.1.0.17\", \"10.1.0.18\","
        " \"10.1.0.19\", \"10.1.0.20\", \"10.1.0.21\", \"10.1.0.22\", \"10.1.0.23\", \"10.1.0.24\", \"10.1.0.25\","
        " \"10.1.0.26\", \"10.1.0.27\", \"10.1.0.28\", \"10.1.0.29\", \"10.1.0.30\"]}}}";
    pymesh_name_table *table = NULL;
    CHECK(pymesh_name_table_from_json(json, sizeof json - 1, NULL, &table, NULL) == PYMESH_OK);

    uint8_t q[300], out[65535];
    size_t out_len = 1;

    /* A from the table. */
    size_t qn = make_query(q, "Product.default.svc.cluster.local", 1);
    CHECK(pymesh_dns_answer(table, q, qn, 0, PYMESH_DNS_DEFAULT_TTL, out, sizeof out, &out_len, NULL) == PYMESH_OK);
    CHECK(out_len == qn + 16);
    CHECK(u16_at(out, 0) == 0x1234);
    CHECK((out[2] & 0x84) == 0x84); /* QR and AA */
    CHECK(u16_at(out, 6) == 1);
    CHECK(memcmp(out + 12, q + 12, qn - 12) == 0); /* the question, letter case kept */
    CHECK(u16_at(out, qn) == 0xC00C);              /* owner: pointer to the question */
    CHECK(memcmp(out + out_len - 4, "\x0a\x60\x00\x14", 4) == 0);

    /* AAAA of a v4-only name: NODATA with an SOA. */
    qn = make_query(q, "product.default.svc.cluster.local", 28);
    CHECK(pymesh_dns_answer(table, q, qn, 0, 30, out, sizeof out, &out_len, NULL) == PYMESH_OK);
    CHECK((out[3] & 0xF) == 0 && u16_at(out, 6) == 0 && u16_at(out, 8) == 1);

    /* Not ours: forward. */
    qn = make_query(q, "www.example.org", 1);
    CHECK(pymesh_dns_answer(table, q, qn, 0, 30, out, sizeof out, &out_len, NULL) == PYMESH_NOT_FOUND);
    CHECK(out_len == 0);

    /* A runt: nothing to send. */
    out_len = 7;
    CHECK(pymesh_dns_answer(table, q, 5, 0, 30, out, sizeof out, &out_len, NULL) == PYMESH_OK);
    CHECK(out_len == 0);

    /* 30 addresses take 528 bytes: over UDP the reply is cut to 512 with TC, over TCP all of it. */
    qn = make_query(q, "many.default.svc.cluster.local", 1);
    CHECK(pymesh_dns_answer(table, q, qn, 0, 30, out, sizeof out, &out_len, NULL) == PYMESH_OK);
    CHECK(out_len <= 512 && u16_at(out, 6) == 29 && (out[2] & 0x02) != 0);
    CHECK(pymesh_dns_answer(table, q, qn, 1, 30, out, sizeof out, &out_len, NULL) == PYMESH_OK);
    CHECK(out_len == 528 && u16_at(out, 6) == 30 && (out[2] & 0x02) == 0);

    /* Errors: NULL table, small buffer, bad transport. */
    char *msg = NULL;
    CHECK(pymesh_dns_answer(NULL, q, qn, 0, 30, out, sizeof out, &out_len, &msg) == PYMESH_ERR_INVALID_ARGUMENT);
    CHECK(msg != NULL);
    pymesh_string_free(msg);
    CHECK(pymesh_dns_answer(table, q, qn, 0, 30, out, 100, &out_len, NULL) == PYMESH_ERR_INVALID_ARGUMENT);
    CHECK(pymesh_dns_answer(table, q, qn, 7, 30, out, sizeof out, &out_len, NULL) == PYMESH_ERR_INVALID_ARGUMENT);

    pymesh_name_table_free(table);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    puts("dns_answer: ok");
    return 0;
}
