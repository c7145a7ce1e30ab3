/*
 * Endpoint inspection, Istio locality failover and EDS updates through the
 * C ABI, as an embedding proxy uses them: pymesh_lb_table_new_failover,
 * pymesh_lb_endpoints / _list_len / _list_get / _list_free,
 * pymesh_lb_table_load_assignments(_file), with live state (requests in
 * flight, outlier ejection) read back and carried across an EDS update,
 * and the error paths (NULLs, unknown clusters, bad failover rules).
 *
 * Prints one line per failed check and "N passed, M failed"; exits
 * non-zero on any failure.
 *
 * Usage: lb_inspect SCRATCH_DIR
 */
#define _POSIX_C_SOURCE 200809L

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pymesh.h"

static int passed = 0;
static int failed = 0;

static void check(bool ok, const char *what, const char *detail) {
    if (ok) {
        passed++;
    } else {
        printf("FAIL: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
        failed++;
    }
}

#define EP(ip, port, extra)                                                                                  \
    "{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"" ip "\", \"port_value\": " #port "}}}" \
    extra "}"

/* Three localities; with the proxy in r1/z1 (rule r1 -> r3), Istio ranks
 * r1/z1/s1 first, r1/z2 second and r2 (not the rule's target) last. */
static const char CLUSTERS[] =
    "[{\"name\": \"c\", \"outlier_detection\": {\"always_eject_one_host\": true},"
    " \"load_assignment\": {\"endpoints\": ["
    "  {\"locality\": {\"region\": \"r2\", \"zone\": \"za\"}, \"load_balancing_weight\": 5, \"lb_endpoints\": ["
    EP("10.0.3.1", 80, ", \"health_status\": \"DRAINING\"") "]},"
    "  {\"locality\": {\"region\": \"r1\", \"zone\": \"z1\", \"sub_zone\": \"s1\"}, \"lb_endpoints\": ["
    "    {\"endpoint\": {\"hostname\": \"pod-a\", \"address\": {\"socket_address\": {\"address\": \"10.0.1.1\","
    "     \"port_value\": 80}}}, \"load_balancing_weight\": 3, \"metadata\": {\"filter_metadata\": {"
    "     \"envoy.transport_socket_match\": {\"tlsMode\": \"istio\"},"
    "     \"istio\": {\"network\": \"net1\", \"service_account\": \"spiffe://cluster.local/ns/default/sa/a\"}}}}]},"
    "  {\"locality\": {\"region\": \"r1\", \"zone\": \"z2\"}, \"lb_endpoints\": [" EP("fd00::5", 8080, "") "]}"
    "]}}]";

static const pymesh_lb_endpoint_info *find(const pymesh_lb_endpoint_list *l, const char *text) {
    for (size_t i = 0; i < pymesh_lb_endpoint_list_len(l); i++) {
        const pymesh_lb_endpoint_info *e = pymesh_lb_endpoint_list_get(l, i);
        if (strcmp(e->text, text) == 0) return e;
    }
    return NULL;
}

static pymesh_lb_endpoint_list *list_of(const pymesh_lb_table *t, const char *cluster) {
    pymesh_lb_endpoint_list *l = NULL;
    char *err = NULL;
    check(pymesh_lb_endpoints(t, cluster, &l, &err) == PYMESH_OK && l, "pymesh_lb_endpoints", err);
    pymesh_string_free(err);
    return l;
}

static void failover_and_inspection(const char *dir) {
    const char *from[] = {"r1"};
    const char *to[] = {"r3"};
    pymesh_lb_failover f = {"r1", "z1", NULL, from, to, 1};
    pymesh_lb_table *t = NULL;
    char *err = NULL;
    check(pymesh_lb_table_new_failover(3, true, &f, &t, &err) == PYMESH_OK && t, "new_failover", err);
    check(pymesh_lb_table_load(t, CLUSTERS, strlen(CLUSTERS), false, 0, &err) == PYMESH_OK, "load", err);

    pymesh_lb_endpoint_list *l = list_of(t, "c");
    check(pymesh_lb_endpoint_list_len(l) == 3, "three endpoints", NULL);
    const pymesh_lb_endpoint_info *a = find(l, "10.0.1.1:80");
    const pymesh_lb_endpoint_info *b = find(l, "[fd00::5]:8080");
    const pymesh_lb_endpoint_info *d = find(l, "10.0.3.1:80");
    check(a && b && d, "endpoints by address text", NULL);
    if (!(a && b && d)) return;
    check(a->priority == 0 && b->priority == 1 && d->priority == 2, "failover ranks r1/z1, r1/z2, r2", NULL);
    check(a->address.family == PYMESH_IPV4 && a->address.bytes[0] == 10 && a->address.bytes[3] == 1 && a->port == 80,
          "IPv4 address and port", NULL);
    check(b->address.family == PYMESH_IPV6 && b->address.bytes[0] == 0xfd && b->address.bytes[15] == 5 &&
              b->port == 8080, "IPv6 address and port", NULL);
    check(a->weight == 3 && b->weight == 1, "weights", NULL);
    check(a->health == PYMESH_LB_HEALTHY && a->health_status == PYMESH_LB_STATUS_UNKNOWN, "healthy", NULL);
    check(d->health == PYMESH_LB_UNHEALTHY && d->health_status == PYMESH_LB_STATUS_DRAINING, "draining", NULL);
    check(strcmp(a->region, "r1") == 0 && strcmp(a->zone, "z1") == 0 && strcmp(a->sub_zone, "s1") == 0,
          "locality", a->sub_zone);
    check(strcmp(d->region, "r2") == 0 && strcmp(d->sub_zone, "") == 0 && d->locality_weight == 5,
          "locality weight", NULL);
    check(strcmp(a->tls_mode, "istio") == 0 && strcmp(a->network, "net1") == 0 &&
              strcmp(a->service_account, "spiffe://cluster.local/ns/default/sa/a") == 0 &&
              strcmp(a->hostname, "pod-a") == 0, "Istio metadata and hostname", a->tls_mode);
    check(strcmp(b->tls_mode, "") == 0 && strcmp(b->hostname, "") == 0, "unset strings are empty", NULL);
    check(a->active_requests == 0 && !a->ejected && a->ejections == 0 && !a->health_check_failed, "idle", NULL);
    check(pymesh_lb_endpoint_list_get(l, 3) == NULL && pymesh_lb_endpoint_list_get(NULL, 0) == NULL,
          "get out of range", NULL);
    pymesh_lb_endpoint_list_free(l);

    /* Picks go to the closest locality only (priority 0 fully healthy). */
    bool only_local = true;
    for (int i = 0; i < 50; i++) {
        pymesh_lb_endpoint ep;
        only_local &= pymesh_lb_pick(t, "c", NULL, 0, &ep, NULL) == PYMESH_OK && strcmp(ep.text, "10.0.1.1:80") == 0;
    }
    check(only_local, "failover keeps picks local", NULL);

    /* Live state: a request in flight, then five 503s eject (always_eject_one_host). */
    pymesh_lb_request_started(t, "c", "10.0.1.1:80", NULL);
    bool changed = false;
    for (int i = 0; i < 5; i++) pymesh_lb_report(t, "c", "10.0.1.1:80", PYMESH_LB_HTTP, 503, false, 10 + i, &changed, NULL);
    check(changed, "ejected", NULL);
    l = list_of(t, "c");
    a = find(l, "10.0.1.1:80");
    check(a && a->active_requests == 1 && a->ejected && a->ejections == 1 && a->health == PYMESH_LB_UNHEALTHY,
          "live state read back", NULL);
    pymesh_lb_endpoint_list *before_eds = l;

    /* EDS: .1 stays (keeps its state), .2 comes, the others go. */
    const char *eds = "[{\"cluster_name\": \"c\", \"endpoints\": [{\"locality\": {\"region\": \"r1\", \"zone\": \"z1\"},"
                      " \"lb_endpoints\": [" EP("10.0.1.1", 80, "") "," EP("10.0.1.2", 80, "") "]}]}]";
    check(pymesh_lb_table_load_assignments(t, eds, strlen(eds), false, 20, &err) == PYMESH_OK, "load_assignments", err);
    l = list_of(t, "c");
    a = find(l, "10.0.1.1:80");
    check(pymesh_lb_endpoint_list_len(l) == 2 && find(l, "10.0.1.2:80") && !find(l, "10.0.3.1:80"), "EDS endpoints",
          NULL);
    check(a && a->active_requests == 1 && a->ejected && strcmp(a->tls_mode, "") == 0,
          "state kept, metadata from the assignment", NULL);
    pymesh_lb_endpoint_list_free(l);
    /* The list taken before the update is a copy: still readable. */
    check(pymesh_lb_endpoint_list_len(before_eds) == 3 && strcmp(find(before_eds, "10.0.1.1:80")->network, "net1") == 0,
          "earlier list unchanged", NULL);

    /* Errors: an unknown cluster or a bad field changes nothing. */
    const char *unknown = "[{\"cluster_name\": \"nope\", \"endpoints\": []}]";
    check(pymesh_lb_table_load_assignments(t, unknown, strlen(unknown), false, 30, &err) == PYMESH_ERR_INVALID_ENTRY &&
              err && strstr(err, "cluster \"nope\": cluster_name: no such cluster"), "unknown cluster", err);
    pymesh_string_free(err);
    err = NULL;
    const char *bad = "[{\"cluster_name\": \"c\", \"endpoints\": [{\"lb_endpoints\": [" EP("10.0.1.9", 0, "") "]}]}]";
    check(pymesh_lb_table_load_assignments(t, bad, strlen(bad), false, 30, &err) == PYMESH_ERR_INVALID_ENTRY && err &&
              strstr(err, "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value"), "bad port", err);
    pymesh_string_free(err);
    err = NULL;
    l = list_of(t, "c");
    check(pymesh_lb_endpoint_list_len(l) == 2, "table unchanged after rejected updates", NULL);
    pymesh_lb_endpoint_list_free(l);

    /* From a YAML file. */
    char path[4096];
    snprintf(path, sizeof path, "%s/lb_inspect_eds.yaml", dir);
    FILE *fp = fopen(path, "w");
    if (fp) {
        fputs("cluster_name: c\nendpoints:\n- lb_endpoints:\n"
              "  - endpoint: {address: {socket_address: {address: 10.0.1.7, port_value: 80}}}\n", fp);
        fclose(fp);
    }
    check(pymesh_lb_table_load_assignments_file(t, path, 40, &err) == PYMESH_OK, "load_assignments_file", err);
    pymesh_lb_endpoint ep;
    check(pymesh_lb_pick(t, "c", NULL, 0, &ep, NULL) == PYMESH_OK && strcmp(ep.text, "10.0.1.7:80") == 0,
          "picks follow the file's assignment", ep.text);
    remove(path);

    pymesh_lb_table_free(t);
    /* The list outlives the table. */
    check(find(before_eds, "10.0.1.1:80")->ejected, "list outlives its table", NULL);
    pymesh_lb_endpoint_list_free(before_eds);
}

static void without_failover_and_errors(void) {
    pymesh_lb_table *t = NULL;
    pymesh_lb_table_new(3, true, &t, NULL);
    pymesh_lb_table_load(t, CLUSTERS, strlen(CLUSTERS), false, 0, NULL);
    pymesh_lb_endpoint_list *l = list_of(t, "c");
    bool all_zero = pymesh_lb_endpoint_list_len(l) == 3;
    for (size_t i = 0; i < pymesh_lb_endpoint_list_len(l); i++) all_zero &= pymesh_lb_endpoint_list_get(l, i)->priority == 0;
    check(all_zero, "no failover: input priorities", NULL);
    pymesh_lb_endpoint_list_free(l);

    char *err = NULL;
    l = (pymesh_lb_endpoint_list *)1;
    check(pymesh_lb_endpoints(t, "nope", &l, &err) == PYMESH_ERR_INVALID_ARGUMENT && l == NULL && err &&
              strstr(err, "no cluster \"nope\""), "unknown cluster", err);
    pymesh_string_free(err);
    check(pymesh_lb_endpoints(NULL, "c", &l, NULL) == PYMESH_ERR_INVALID_ARGUMENT, "NULL table", NULL);
    check(pymesh_lb_endpoints(t, NULL, &l, NULL) == PYMESH_ERR_INVALID_ARGUMENT, "NULL cluster", NULL);
    check(pymesh_lb_endpoints(t, "c", NULL, NULL) == PYMESH_ERR_INVALID_ARGUMENT, "NULL out", NULL);
    check(pymesh_lb_endpoint_list_len(NULL) == 0, "len of NULL", NULL);
    pymesh_lb_endpoint_list_free(NULL);
    check(pymesh_lb_table_load_assignments(NULL, "[]", 2, false, 0, NULL) == PYMESH_ERR_INVALID_ARGUMENT,
          "assignments into NULL", NULL);
    check(pymesh_lb_table_load_assignments(t, "[", 1, false, 0, NULL) == PYMESH_ERR_PARSE, "assignments parse error",
          NULL);
    pymesh_lb_table_free(t);

    const char *to[] = {"r3"};
    pymesh_lb_failover f = {"r1", NULL, NULL, NULL, to, 1};
    t = (pymesh_lb_table *)1;
    err = NULL;
    check(pymesh_lb_table_new_failover(1, true, &f, &t, &err) == PYMESH_ERR_INVALID_ARGUMENT && t == NULL && err &&
              strstr(err, "failover->failover_from is NULL"), "NULL failover rules", err);
    pymesh_string_free(err);
    check(pymesh_lb_table_new_failover(1, false, NULL, &t, NULL) == PYMESH_OK && t, "NULL failover is none", NULL);
    pymesh_lb_table_free(t);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    failover_and_inspection(argv[1]);
    without_failover_and_errors();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
