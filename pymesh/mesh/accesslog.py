"""The file access log a sidecar's listeners carry, builder and reader side by side (as
:mod:`pymesh.mesh.inbound` keeps the ``virtualInbound`` contract): istiod puts meshConfig
``accessLogFile`` / ``accessLogEncoding`` (or a Telemetry ``accessLogging`` with its ``envoy``
provider) on the ``tcp_proxy`` filters as an ``envoy.access_loggers.file`` logger (istio/istio
``pilot/pkg/networking/core/accesslog.go``; the formats in ``pilot/pkg/model/telemetry_logging.go``:
``EnvoyTextLogFormat``, ``EnvoyJSONLogFormatIstio``); pymesh's control plane writes the same,
and the agent reads either."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymesh.mesh.xds import pack

FILE_LOGGER = "envoy.access_loggers.file"
# Istio's default text format, one line per request or connection.
TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
# Istio's JSON format: key -> operator.
JSON_FORMAT = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
}


def file_access_log(path: str, encoding: str) -> Any:
    """An ``AccessLog`` (``envoy.config.accesslog.v3``) writing Istio's format to ``path``."""
    from envoy.config.accesslog.v3 import accesslog_pb2
    from envoy.extensions.access_loggers.file.v3 import file_pb2

    fal = file_pb2.FileAccessLog(path=path)
    if encoding == "JSON":
        fal.log_format.json_format.update(JSON_FORMAT)
    else:
        fal.log_format.text_format_source.inline_string = TEXT_FORMAT
    return accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=pack(fal))


FILE_ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def access_log_of(listeners: Mapping[str, Any]) -> tuple[str, str] | None:
    """The access log istiod configures for a sidecar's TCP traffic (meshConfig
    ``accessLogFile`` / ``accessLogEncoding``, or a Telemetry ``accessLogging`` with the
    ``envoy`` provider): the file logger on the ``tcp_proxy`` filters of
    ``virtualOutbound``, else of ``virtualInbound`` (istio/istio
    ``pilot/pkg/networking/core/accesslog.go``, ``setTCPAccessLog``), as (path, TEXT |
    JSON by its ``log_format``). None: no file logger there. A logger whose config does not
    decode is skipped, not an error: the access log is not worth refusing routes for."""
    from envoy.extensions.access_loggers.file.v3 import file_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    for name in ("virtualOutbound", "virtualInbound"):
        lis = listeners.get(name)
        if lis is None:
            continue
        for chain in lis.filter_chains:
            for f in chain.filters:
                if not f.typed_config.type_url.endswith("tcp_proxy.v3.TcpProxy"):
                    continue
                tp = tcp_proxy_pb2.TcpProxy()
                if not f.typed_config.Unpack(tp):
                    continue
                for al in tp.access_log:
                    if al.typed_config.type_url != FILE_ACCESS_LOG:
                        continue
                    fal = file_pb2.FileAccessLog()
                    if not al.typed_config.Unpack(fal) or not fal.path:
                        continue
                    fmt = fal.log_format.WhichOneof("format") if fal.HasField("log_format") else None
                    return fal.path, ("JSON" if fmt in ("json_format", "typed_json_format") else "TEXT")
    return None
