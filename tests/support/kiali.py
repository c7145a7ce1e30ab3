"""The label sets Kiali's graph groups Istio's series by (kiali
``graph/telemetry/istio/istio.go``): a series missing any of them is skipped, so every
series the relays export must carry all of them, on both reporters."""

from __future__ import annotations

_EDGE = (
    "source_cluster,source_workload_namespace,source_workload,source_canonical_service,"
    "source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,"
    "destination_service_name,destination_workload_namespace,destination_workload,"
    "destination_canonical_service,destination_canonical_revision"
)
# TCP edges (istio_tcp_*).
KIALI_TCP_GROUP = f"{_EDGE},response_flags"
# HTTP and gRPC edges (istio_requests_total).
KIALI_HTTP_GROUP = f"{_EDGE},request_protocol,response_code,grpc_response_status,response_flags"
