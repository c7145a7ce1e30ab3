"""Istio's CRD schemas for the kinds pymesh serves, reduced to what a structural check
reads (types, properties, items, sizes, enums). Generated from
istio/api@b8f8791d9653b2edc77a071d48887e582cfe84bf kubernetes/customresourcedefinitions.gen.yaml
by ``python -m pymesh.controlplane.schema CRD-FILE SOURCE``: do not edit.
"""

from typing import Any

ISTIO: dict[str, Any] = {
    "DestinationRule": {
        "properties": {
            "spec": {
                "properties": {
                    "exportTo": {"items": {"type": "string"}, "type": "array"},
                    "host": {"type": "string"},
                    "subsets": {
                        "items": {
                            "properties": {
                                "labels": {"additionalProperties": {"type": "string"}, "type": "object"},
                                "name": {"type": "string"},
                                "trafficPolicy": {
                                    "properties": {
                                        "connectionPool": {
                                            "properties": {
                                                "http": {
                                                    "properties": {
                                                        "h2UpgradePolicy": {
                                                            "enum": ["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"],
                                                            "type": "string",
                                                        },
                                                        "http1MaxPendingRequests": {"type": "integer"},
                                                        "http2KeepAlive": {
                                                            "properties": {
                                                                "interval": {"type": "string"},
                                                                "timeout": {"type": "string"},
                                                            },
                                                            "type": "object",
                                                        },
                                                        "http2MaxRequests": {"type": "integer"},
                                                        "idleTimeout": {"type": "string"},
                                                        "maxConcurrentStreams": {"type": "integer"},
                                                        "maxRequestsPerConnection": {"type": "integer"},
                                                        "maxRetries": {"type": "integer"},
                                                        "useClientProtocol": {"type": "boolean"},
                                                    },
                                                    "type": "object",
                                                },
                                                "tcp": {
                                                    "properties": {
                                                        "connectTimeout": {"type": "string"},
                                                        "idleTimeout": {"type": "string"},
                                                        "maxConnectionDuration": {"type": "string"},
                                                        "maxConnections": {"type": "integer"},
                                                        "tcpKeepalive": {
                                                            "properties": {
                                                                "interval": {"type": "string"},
                                                                "probes": {
                                                                    "maximum": 4294967295,
                                                                    "minimum": 0,
                                                                    "type": "integer",
                                                                },
                                                                "time": {"type": "string"},
                                                            },
                                                            "type": "object",
                                                        },
                                                    },
                                                    "type": "object",
                                                },
                                            },
                                            "type": "object",
                                        },
                                        "loadBalancer": {
                                            "properties": {
                                                "consistentHash": {
                                                    "properties": {
                                                        "httpCookie": {
                                                            "properties": {
                                                                "attributes": {
                                                                    "items": {
                                                                        "properties": {
                                                                            "name": {"type": "string"},
                                                                            "value": {"type": "string"},
                                                                        },
                                                                        "type": "object",
                                                                    },
                                                                    "type": "array",
                                                                },
                                                                "name": {"type": "string"},
                                                                "path": {"type": "string"},
                                                                "ttl": {"type": "string"},
                                                            },
                                                            "type": "object",
                                                        },
                                                        "httpHeaderName": {"type": "string"},
                                                        "httpQueryParameterName": {"type": "string"},
                                                        "maglev": {
                                                            "properties": {
                                                                "tableSize": {"minimum": 0, "type": "integer"}
                                                            },
                                                            "type": "object",
                                                        },
                                                        "minimumRingSize": {"minimum": 0, "type": "integer"},
                                                        "ringHash": {
                                                            "properties": {
                                                                "minimumRingSize": {"minimum": 0, "type": "integer"}
                                                            },
                                                            "type": "object",
                                                        },
                                                        "useSourceIp": {"type": "boolean"},
                                                    },
                                                    "type": "object",
                                                },
                                                "localityLbSetting": {
                                                    "properties": {
                                                        "distribute": {
                                                            "items": {
                                                                "properties": {
                                                                    "from": {"type": "string"},
                                                                    "to": {
                                                                        "additionalProperties": {
                                                                            "maximum": 4294967295,
                                                                            "minimum": 0,
                                                                            "type": "integer",
                                                                        },
                                                                        "type": "object",
                                                                    },
                                                                },
                                                                "type": "object",
                                                            },
                                                            "type": "array",
                                                        },
                                                        "enabled": {"type": "boolean"},
                                                        "failover": {
                                                            "items": {
                                                                "properties": {
                                                                    "from": {"type": "string"},
                                                                    "to": {"type": "string"},
                                                                },
                                                                "type": "object",
                                                            },
                                                            "type": "array",
                                                        },
                                                        "failoverPriority": {
                                                            "items": {"type": "string"},
                                                            "type": "array",
                                                        },
                                                    },
                                                    "type": "object",
                                                },
                                                "simple": {
                                                    "enum": [
                                                        "UNSPECIFIED",
                                                        "LEAST_CONN",
                                                        "RANDOM",
                                                        "PASSTHROUGH",
                                                        "ROUND_ROBIN",
                                                        "LEAST_REQUEST",
                                                    ],
                                                    "type": "string",
                                                },
                                                "warmup": {
                                                    "properties": {
                                                        "aggression": {"minimum": 0, "type": "number"},
                                                        "duration": {"type": "string"},
                                                        "minimumPercent": {
                                                            "maximum": 100,
                                                            "minimum": 0,
                                                            "type": "number",
                                                        },
                                                    },
                                                    "type": "object",
                                                },
                                                "warmupDurationSecs": {"type": "string"},
                                                "zoneAwareLbSetting": {
                                                    "properties": {
                                                        "enabled": {"type": "boolean"},
                                                        "failover": {
                                                            "items": {
                                                                "properties": {
                                                                    "from": {"type": "string"},
                                                                    "to": {"type": "string"},
                                                                },
                                                                "type": "object",
                                                            },
                                                            "type": "array",
                                                        },
                                                        "failoverPriority": {
                                                            "items": {"type": "string"},
                                                            "type": "array",
                                                        },
                                                        "minClusterSize": {"minimum": 1, "type": "integer"},
                                                    },
                                                    "type": "object",
                                                },
                                            },
                                            "type": "object",
                                        },
                                        "outlierDetection": {
                                            "properties": {
                                                "baseEjectionTime": {"type": "string"},
                                                "consecutive5xxErrors": {
                                                    "maximum": 4294967295,
                                                    "minimum": 0,
                                                    "type": "integer",
                                                },
                                                "consecutiveErrors": {"type": "integer"},
                                                "consecutiveGatewayErrors": {
                                                    "maximum": 4294967295,
                                                    "minimum": 0,
                                                    "type": "integer",
                                                },
                                                "consecutiveLocalOriginFailures": {
                                                    "maximum": 4294967295,
                                                    "minimum": 0,
                                                    "type": "integer",
                                                },
                                                "interval": {"type": "string"},
                                                "maxEjectionPercent": {"type": "integer"},
                                                "minHealthPercent": {"type": "integer"},
                                                "outlierDetectionHttpErrorCodes": {
                                                    "items": {"maximum": 599, "minimum": 100, "type": "integer"},
                                                    "type": "array",
                                                },
                                                "splitExternalLocalOriginErrors": {"type": "boolean"},
                                            },
                                            "type": "object",
                                        },
                                        "portLevelSettings": {
                                            "items": {
                                                "properties": {
                                                    "connectionPool": {
                                                        "properties": {
                                                            "http": {
                                                                "properties": {
                                                                    "h2UpgradePolicy": {
                                                                        "enum": [
                                                                            "DEFAULT",
                                                                            "DO_NOT_UPGRADE",
                                                                            "UPGRADE",
                                                                        ],
                                                                        "type": "string",
                                                                    },
                                                                    "http1MaxPendingRequests": {"type": "integer"},
                                                                    "http2KeepAlive": {
                                                                        "properties": {
                                                                            "interval": {"type": "string"},
                                                                            "timeout": {"type": "string"},
                                                                        },
                                                                        "type": "object",
                                                                    },
                                                                    "http2MaxRequests": {"type": "integer"},
                                                                    "idleTimeout": {"type": "string"},
                                                                    "maxConcurrentStreams": {"type": "integer"},
                                                                    "maxRequestsPerConnection": {"type": "integer"},
                                                                    "maxRetries": {"type": "integer"},
                                                                    "useClientProtocol": {"type": "boolean"},
                                                                },
                                                                "type": "object",
                                                            },
                                                            "tcp": {
                                                                "properties": {
                                                                    "connectTimeout": {"type": "string"},
                                                                    "idleTimeout": {"type": "string"},
                                                                    "maxConnectionDuration": {"type": "string"},
                                                                    "maxConnections": {"type": "integer"},
                                                                    "tcpKeepalive": {
                                                                        "properties": {
                                                                            "interval": {"type": "string"},
                                                                            "probes": {
                                                                                "maximum": 4294967295,
                                                                                "minimum": 0,
                                                                                "type": "integer",
                                                                            },
                                                                            "time": {"type": "string"},
                                                                        },
                                                                        "type": "object",
                                                                    },
                                                                },
                                                                "type": "object",
                                                            },
                                                        },
                                                        "type": "object",
                                                    },
                                                    "loadBalancer": {
                                                        "properties": {
                                                            "consistentHash": {
                                                                "properties": {
                                                                    "httpCookie": {
                                                                        "properties": {
                                                                            "attributes": {
                                                                                "items": {
                                                                                    "properties": {
                                                                                        "name": {"type": "string"},
                                                                                        "value": {"type": "string"},
                                                                                    },
                                                                                    "type": "object",
                                                                                },
                                                                                "type": "array",
                                                                            },
                                                                            "name": {"type": "string"},
                                                                            "path": {"type": "string"},
                                                                            "ttl": {"type": "string"},
                                                                        },
                                                                        "type": "object",
                                                                    },
                                                                    "httpHeaderName": {"type": "string"},
                                                                    "httpQueryParameterName": {"type": "string"},
                                                                    "maglev": {
                                                                        "properties": {
                                                                            "tableSize": {
                                                                                "minimum": 0,
                                                                                "type": "integer",
                                                                            }
                                                                        },
                                                                        "type": "object",
                                                                    },
                                                                    "minimumRingSize": {
                                                                        "minimum": 0,
                                                                        "type": "integer",
                                                                    },
                                                                    "ringHash": {
                                                                        "properties": {
                                                                            "minimumRingSize": {
                                                                                "minimum": 0,
                                                                                "type": "integer",
                                                                            }
                                                                        },
                                                                        "type": "object",
                                                                    },
                                                                    "useSourceIp": {"type": "boolean"},
                                                                },
                                                                "type": "object",
                                                            },
                                                            "localityLbSetting": {
                                                                "properties": {
                                                                    "distribute": {
                                                                        "items": {
                                                                            "properties": {
                                                                                "from": {"type": "string"},
                                                                                "to": {
                                                                                    "additionalProperties": {
                                                                                        "maximum": 4294967295,
                                                                                        "minimum": 0,
                                                                                        "type": "integer",
                                                                                    },
                                                                                    "type": "object",
                                                                                },
                                                                            },
                                                                            "type": "object",
                                                                        },
                                                                        "type": "array",
                                                                    },
                                                                    "enabled": {"type": "boolean"},
                                                                    "failover": {
                                                                        "items": {
                                                                            "properties": {
                                                                                "from": {"type": "string"},
                                                                                "to": {"type": "string"},
                                                                            },
                                                                            "type": "object",
                                                                        },
                                                                        "type": "array",
                                                                    },
                                                                    "failoverPriority": {
                                                                        "items": {"type": "string"},
                                                                        "type": "array",
                                                                    },
                                                                },
                                                                "type": "object",
                                                            },
                                                            "simple": {
                                                                "enum": [
                                                                    "UNSPECIFIED",
                                                                    "LEAST_CONN",
                                                                    "RANDOM",
                                                                    "PASSTHROUGH",
                                                                    "ROUND_ROBIN",
                                                                    "LEAST_REQUEST",
                                                                ],
                                                                "type": "string",
                                                            },
                                                            "warmup": {
                                                                "properties": {
                                                                    "aggression": {"minimum": 0, "type": "number"},
                                                                    "duration": {"type": "string"},
                                                                    "minimumPercent": {
                                                                        "maximum": 100,
                                                                        "minimum": 0,
                                                                        "type": "number",
                                                                    },
                                                                },
                                                                "type": "object",
                                                            },
                                                            "warmupDurationSecs": {"type": "string"},
                                                            "zoneAwareLbSetting": {
                                                                "properties": {
                                                                    "enabled": {"type": "boolean"},
                                                                    "failover": {
                                                                        "items": {
                                                                            "properties": {
                                                                                "from": {"type": "string"},
                                                                                "to": {"type": "string"},
                                                                            },
                                                                            "type": "object",
                                                                        },
                                                                        "type": "array",
                                                                    },
                                                                    "failoverPriority": {
                                                                        "items": {"type": "string"},
                                                                        "type": "array",
                                                                    },
                                                                    "minClusterSize": {"minimum": 1, "type": "integer"},
                                                                },
                                                                "type": "object",
                                                            },
                                                        },
                                                        "type": "object",
                                                    },
                                                    "outlierDetection": {
                                                        "properties": {
                                                            "baseEjectionTime": {"type": "string"},
                                                            "consecutive5xxErrors": {
                                                                "maximum": 4294967295,
                                                                "minimum": 0,
                                                                "type": "integer",
                                                            },
                                                            "consecutiveErrors": {"type": "integer"},
                                                            "consecutiveGatewayErrors": {
                                                                "maximum": 4294967295,
                                                                "minimum": 0,
                                                                "type": "integer",
                                                            },
                                                            "consecutiveLocalOriginFailures": {
                                                                "maximum": 4294967295,
                                                                "minimum": 0,
                                                                "type": "integer",
                                                            },
                                                            "interval": {"type": "string"},
                                                            "maxEjectionPercent": {"type": "integer"},
                                                            "minHealthPercent": {"type": "integer"},
                                                            "outlierDetectionHttpErrorCodes": {
                                                                "items": {
                                                                    "maximum": 599,
                                                                    "minimum": 100,
                                                                    "type": "integer",
                                                                },
                                                                "type": "array",
                                                            },
                                                            "splitExternalLocalOriginErrors": {"type": "boolean"},
                                                        },
                                                        "type": "object",
                                                    },
                                                    "port": {
                                                        "properties": {
                                                            "number": {
                                                                "maximum": 4294967295,
                                                                "minimum": 0,
                                                                "type": "integer",
                                                            }
                                                        },
                                                        "type": "object",
                                                    },
                                                    "tls": {
                                                        "properties": {
                                                            "caCertificates": {"type": "string"},
                                                            "caCrl": {"type": "string"},
                                                            "clientCertificate": {"type": "string"},
                                                            "credentialName": {"type": "string"},
                                                            "insecureSkipVerify": {"type": "boolean"},
                                                            "mode": {
                                                                "enum": ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"],
                                                                "type": "string",
                                                            },
                                                            "privateKey": {"type": "string"},
                                                            "sni": {"type": "string"},
                                                            "subjectAltNames": {
                                                                "items": {"type": "string"},
                                                                "type": "array",
                                                            },
                                                        },
                                                        "type": "object",
                                                    },
                                                },
                                                "type": "object",
                                            },
                                            "maxItems": 4096,
                                            "type": "array",
                                        },
                                        "proxyProtocol": {
                                            "properties": {"version": {"enum": ["V1", "V2"], "type": "string"}},
                                            "type": "object",
                                        },
                                        "retryBudget": {
                                            "properties": {
                                                "budgetInterval": {"type": "string"},
                                                "minRetryConcurrency": {
                                                    "maximum": 4294967295,
                                                    "minimum": 0,
                                                    "type": "integer",
                                                },
                                                "percent": {"maximum": 100, "minimum": 0, "type": "number"},
                                            },
                                            "type": "object",
                                        },
                                        "tls": {
                                            "properties": {
                                                "caCertificates": {"type": "string"},
                                                "caCrl": {"type": "string"},
                                                "clientCertificate": {"type": "string"},
                                                "credentialName": {"type": "string"},
                                                "insecureSkipVerify": {"type": "boolean"},
                                                "mode": {
                                                    "enum": ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"],
                                                    "type": "string",
                                                },
                                                "privateKey": {"type": "string"},
                                                "sni": {"type": "string"},
                                                "subjectAltNames": {"items": {"type": "string"}, "type": "array"},
                                            },
                                            "type": "object",
                                        },
                                        "tunnel": {
                                            "properties": {
                                                "protocol": {"type": "string"},
                                                "targetHost": {"type": "string"},
                                                "targetPort": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                            },
                                            "type": "object",
                                        },
                                    },
                                    "type": "object",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "trafficPolicy": {
                        "properties": {
                            "connectionPool": {
                                "properties": {
                                    "http": {
                                        "properties": {
                                            "h2UpgradePolicy": {
                                                "enum": ["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"],
                                                "type": "string",
                                            },
                                            "http1MaxPendingRequests": {"type": "integer"},
                                            "http2KeepAlive": {
                                                "properties": {
                                                    "interval": {"type": "string"},
                                                    "timeout": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "http2MaxRequests": {"type": "integer"},
                                            "idleTimeout": {"type": "string"},
                                            "maxConcurrentStreams": {"type": "integer"},
                                            "maxRequestsPerConnection": {"type": "integer"},
                                            "maxRetries": {"type": "integer"},
                                            "useClientProtocol": {"type": "boolean"},
                                        },
                                        "type": "object",
                                    },
                                    "tcp": {
                                        "properties": {
                                            "connectTimeout": {"type": "string"},
                                            "idleTimeout": {"type": "string"},
                                            "maxConnectionDuration": {"type": "string"},
                                            "maxConnections": {"type": "integer"},
                                            "tcpKeepalive": {
                                                "properties": {
                                                    "interval": {"type": "string"},
                                                    "probes": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                                    "time": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                        },
                                        "type": "object",
                                    },
                                },
                                "type": "object",
                            },
                            "loadBalancer": {
                                "properties": {
                                    "consistentHash": {
                                        "properties": {
                                            "httpCookie": {
                                                "properties": {
                                                    "attributes": {
                                                        "items": {
                                                            "properties": {
                                                                "name": {"type": "string"},
                                                                "value": {"type": "string"},
                                                            },
                                                            "type": "object",
                                                        },
                                                        "type": "array",
                                                    },
                                                    "name": {"type": "string"},
                                                    "path": {"type": "string"},
                                                    "ttl": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "httpHeaderName": {"type": "string"},
                                            "httpQueryParameterName": {"type": "string"},
                                            "maglev": {
                                                "properties": {"tableSize": {"minimum": 0, "type": "integer"}},
                                                "type": "object",
                                            },
                                            "minimumRingSize": {"minimum": 0, "type": "integer"},
                                            "ringHash": {
                                                "properties": {"minimumRingSize": {"minimum": 0, "type": "integer"}},
                                                "type": "object",
                                            },
                                            "useSourceIp": {"type": "boolean"},
                                        },
                                        "type": "object",
                                    },
                                    "localityLbSetting": {
                                        "properties": {
                                            "distribute": {
                                                "items": {
                                                    "properties": {
                                                        "from": {"type": "string"},
                                                        "to": {
                                                            "additionalProperties": {
                                                                "maximum": 4294967295,
                                                                "minimum": 0,
                                                                "type": "integer",
                                                            },
                                                            "type": "object",
                                                        },
                                                    },
                                                    "type": "object",
                                                },
                                                "type": "array",
                                            },
                                            "enabled": {"type": "boolean"},
                                            "failover": {
                                                "items": {
                                                    "properties": {
                                                        "from": {"type": "string"},
                                                        "to": {"type": "string"},
                                                    },
                                                    "type": "object",
                                                },
                                                "type": "array",
                                            },
                                            "failoverPriority": {"items": {"type": "string"}, "type": "array"},
                                        },
                                        "type": "object",
                                    },
                                    "simple": {
                                        "enum": [
                                            "UNSPECIFIED",
                                            "LEAST_CONN",
                                            "RANDOM",
                                            "PASSTHROUGH",
                                            "ROUND_ROBIN",
                                            "LEAST_REQUEST",
                                        ],
                                        "type": "string",
                                    },
                                    "warmup": {
                                        "properties": {
                                            "aggression": {"minimum": 0, "type": "number"},
                                            "duration": {"type": "string"},
                                            "minimumPercent": {"maximum": 100, "minimum": 0, "type": "number"},
                                        },
                                        "type": "object",
                                    },
                                    "warmupDurationSecs": {"type": "string"},
                                    "zoneAwareLbSetting": {
                                        "properties": {
                                            "enabled": {"type": "boolean"},
                                            "failover": {
                                                "items": {
                                                    "properties": {
                                                        "from": {"type": "string"},
                                                        "to": {"type": "string"},
                                                    },
                                                    "type": "object",
                                                },
                                                "type": "array",
                                            },
                                            "failoverPriority": {"items": {"type": "string"}, "type": "array"},
                                            "minClusterSize": {"minimum": 1, "type": "integer"},
                                        },
                                        "type": "object",
                                    },
                                },
                                "type": "object",
                            },
                            "outlierDetection": {
                                "properties": {
                                    "baseEjectionTime": {"type": "string"},
                                    "consecutive5xxErrors": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                    "consecutiveErrors": {"type": "integer"},
                                    "consecutiveGatewayErrors": {
                                        "maximum": 4294967295,
                                        "minimum": 0,
                                        "type": "integer",
                                    },
                                    "consecutiveLocalOriginFailures": {
                                        "maximum": 4294967295,
                                        "minimum": 0,
                                        "type": "integer",
                                    },
                                    "interval": {"type": "string"},
                                    "maxEjectionPercent": {"type": "integer"},
                                    "minHealthPercent": {"type": "integer"},
                                    "outlierDetectionHttpErrorCodes": {
                                        "items": {"maximum": 599, "minimum": 100, "type": "integer"},
                                        "type": "array",
                                    },
                                    "splitExternalLocalOriginErrors": {"type": "boolean"},
                                },
                                "type": "object",
                            },
                            "portLevelSettings": {
                                "items": {
                                    "properties": {
                                        "connectionPool": {
                                            "properties": {
                                                "http": {
                                                    "properties": {
                                                        "h2UpgradePolicy": {
                                                            "enum": ["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"],
                                                            "type": "string",
                                                        },
                                                        "http1MaxPendingRequests": {"type": "integer"},
                                                        "http2KeepAlive": {
                                                            "properties": {
                                                                "interval": {"type": "string"},
                                                                "timeout": {"type": "string"},
                                                            },
                                                            "type": "object",
                                                        },
                                                        "http2MaxRequests": {"type": "integer"},
                                                        "idleTimeout": {"type": "string"},
                                                        "maxConcurrentStreams": {"type": "integer"},
                                                        "maxRequestsPerConnection": {"type": "integer"},
                                                        "maxRetries": {"type": "integer"},
                                                        "useClientProtocol": {"type": "boolean"},
                                                    },
                                                    "type": "object",
                                                },
                                                "tcp": {
                                                    "properties": {
                                                        "connectTimeout": {"type": "string"},
                                                        "idleTimeout": {"type": "string"},
                                                        "maxConnectionDuration": {"type": "string"},
                                                        "maxConnections": {"type": "integer"},
                                                        "tcpKeepalive": {
                                                            "properties": {
                                                                "interval": {"type": "string"},
                                                                "probes": {
                                                                    "maximum": 4294967295,
                                                                    "minimum": 0,
                                                                    "type": "integer",
                                                                },
                                                                "time": {"type": "string"},
                                                            },
                                                            "type": "object",
                                                        },
                                                    },
                                                    "type": "object",
                                                },
                                            },
                                            "type": "object",
                                        },
                                        "loadBalancer": {
                                            "properties": {
                                                "consistentHash": {
                                                    "properties": {
                                                        "httpCookie": {
                                                            "properties": {
                                                                "attributes": {
                                                                    "items": {
                                                                        "properties": {
                                                                            "name": {"type": "string"},
                                                                            "value": {"type": "string"},
                                                                        },
                                                                        "type": "object",
                                                                    },
                                                                    "type": "array",
                                                                },
                                                                "name": {"type": "string"},
                                                                "path": {"type": "string"},
                                                                "ttl": {"type": "string"},
                                                            },
                                                            "type": "object",
                                                        },
                                                        "httpHeaderName": {"type": "string"},
                                                        "httpQueryParameterName": {"type": "string"},
                                                        "maglev": {
                                                            "properties": {
                                                                "tableSize": {"minimum": 0, "type": "integer"}
                                                            },
                                                            "type": "object",
                                                        },
                                                        "minimumRingSize": {"minimum": 0, "type": "integer"},
                                                        "ringHash": {
                                                            "properties": {
                                                                "minimumRingSize": {"minimum": 0, "type": "integer"}
                                                            },
                                                            "type": "object",
                                                        },
                                                        "useSourceIp": {"type": "boolean"},
                                                    },
                                                    "type": "object",
                                                },
                                                "localityLbSetting": {
                                                    "properties": {
                                                        "distribute": {
                                                            "items": {
                                                                "properties": {
                                                                    "from": {"type": "string"},
                                                                    "to": {
                                                                        "additionalProperties": {
                                                                            "maximum": 4294967295,
                                                                            "minimum": 0,
                                                                            "type": "integer",
                                                                        },
                                                                        "type": "object",
                                                                    },
                                                                },
                                                                "type": "object",
                                                            },
                                                            "type": "array",
                                                        },
                                                        "enabled": {"type": "boolean"},
                                                        "failover": {
                                                            "items": {
                                                                "properties": {
                                                                    "from": {"type": "string"},
                                                                    "to": {"type": "string"},
                                                                },
                                                                "type": "object",
                                                            },
                                                            "type": "array",
                                                        },
                                                        "failoverPriority": {
                                                            "items": {"type": "string"},
                                                            "type": "array",
                                                        },
                                                    },
                                                    "type": "object",
                                                },
                                                "simple": {
                                                    "enum": [
                                                        "UNSPECIFIED",
                                                        "LEAST_CONN",
                                                        "RANDOM",
                                                        "PASSTHROUGH",
                                                        "ROUND_ROBIN",
                                                        "LEAST_REQUEST",
                                                    ],
                                                    "type": "string",
                                                },
                                                "warmup": {
                                                    "properties": {
                                                        "aggression": {"minimum": 0, "type": "number"},
                                                        "duration": {"type": "string"},
                                                        "minimumPercent": {
                                                            "maximum": 100,
                                                            "minimum": 0,
                                                            "type": "number",
                                                        },
                                                    },
                                                    "type": "object",
                                                },
                                                "warmupDurationSecs": {"type": "string"},
                                                "zoneAwareLbSetting": {
                                                    "properties": {
                                                        "enabled": {"type": "boolean"},
                                                        "failover": {
                                                            "items": {
                                                                "properties": {
                                                                    "from": {"type": "string"},
                                                                    "to": {"type": "string"},
                                                                },
                                                                "type": "object",
                                                            },
                                                            "type": "array",
                                                        },
                                                        "failoverPriority": {
                                                            "items": {"type": "string"},
                                                            "type": "array",
                                                        },
                                                        "minClusterSize": {"minimum": 1, "type": "integer"},
                                                    },
                                                    "type": "object",
                                                },
                                            },
                                            "type": "object",
                                        },
                                        "outlierDetection": {
                                            "properties": {
                                                "baseEjectionTime": {"type": "string"},
                                                "consecutive5xxErrors": {
                                                    "maximum": 4294967295,
                                                    "minimum": 0,
                                                    "type": "integer",
                                                },
                                                "consecutiveErrors": {"type": "integer"},
                                                "consecutiveGatewayErrors": {
                                                    "maximum": 4294967295,
                                                    "minimum": 0,
                                                    "type": "integer",
                                                },
                                                "consecutiveLocalOriginFailures": {
                                                    "maximum": 4294967295,
                                                    "minimum": 0,
                                                    "type": "integer",
                                                },
                                                "interval": {"type": "string"},
                                                "maxEjectionPercent": {"type": "integer"},
                                                "minHealthPercent": {"type": "integer"},
                                                "outlierDetectionHttpErrorCodes": {
                                                    "items": {"maximum": 599, "minimum": 100, "type": "integer"},
                                                    "type": "array",
                                                },
                                                "splitExternalLocalOriginErrors": {"type": "boolean"},
                                            },
                                            "type": "object",
                                        },
                                        "port": {
                                            "properties": {
                                                "number": {"maximum": 4294967295, "minimum": 0, "type": "integer"}
                                            },
                                            "type": "object",
                                        },
                                        "tls": {
                                            "properties": {
                                                "caCertificates": {"type": "string"},
                                                "caCrl": {"type": "string"},
                                                "clientCertificate": {"type": "string"},
                                                "credentialName": {"type": "string"},
                                                "insecureSkipVerify": {"type": "boolean"},
                                                "mode": {
                                                    "enum": ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"],
                                                    "type": "string",
                                                },
                                                "privateKey": {"type": "string"},
                                                "sni": {"type": "string"},
                                                "subjectAltNames": {"items": {"type": "string"}, "type": "array"},
                                            },
                                            "type": "object",
                                        },
                                    },
                                    "type": "object",
                                },
                                "maxItems": 4096,
                                "type": "array",
                            },
                            "proxyProtocol": {
                                "properties": {"version": {"enum": ["V1", "V2"], "type": "string"}},
                                "type": "object",
                            },
                            "retryBudget": {
                                "properties": {
                                    "budgetInterval": {"type": "string"},
                                    "minRetryConcurrency": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                    "percent": {"maximum": 100, "minimum": 0, "type": "number"},
                                },
                                "type": "object",
                            },
                            "tls": {
                                "properties": {
                                    "caCertificates": {"type": "string"},
                                    "caCrl": {"type": "string"},
                                    "clientCertificate": {"type": "string"},
                                    "credentialName": {"type": "string"},
                                    "insecureSkipVerify": {"type": "boolean"},
                                    "mode": {"enum": ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"], "type": "string"},
                                    "privateKey": {"type": "string"},
                                    "sni": {"type": "string"},
                                    "subjectAltNames": {"items": {"type": "string"}, "type": "array"},
                                },
                                "type": "object",
                            },
                            "tunnel": {
                                "properties": {
                                    "protocol": {"type": "string"},
                                    "targetHost": {"type": "string"},
                                    "targetPort": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                },
                                "type": "object",
                            },
                        },
                        "type": "object",
                    },
                    "workloadSelector": {
                        "properties": {
                            "matchLabels": {
                                "additionalProperties": {"maxLength": 63, "type": "string"},
                                "maxProperties": 4096,
                                "type": "object",
                            }
                        },
                        "type": "object",
                    },
                },
                "type": "object",
            },
            "status": {
                "properties": {
                    "conditions": {
                        "items": {
                            "properties": {
                                "lastProbeTime": {"type": "string"},
                                "lastTransitionTime": {"type": "string"},
                                "message": {"type": "string"},
                                "observedGeneration": {"x-kubernetes-int-or-string": True},
                                "reason": {"type": "string"},
                                "status": {"type": "string"},
                                "type": {"type": "string"},
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "observedGeneration": {"x-kubernetes-int-or-string": True},
                    "validationMessages": {
                        "items": {
                            "properties": {
                                "documentationUrl": {"type": "string"},
                                "level": {"enum": ["UNKNOWN", "ERROR", "WARNING", "INFO"], "type": "string"},
                                "type": {
                                    "properties": {"code": {"type": "string"}, "name": {"type": "string"}},
                                    "type": "object",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                },
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
        "type": "object",
    },
    "PeerAuthentication": {
        "properties": {
            "spec": {
                "properties": {
                    "mtls": {
                        "properties": {
                            "mode": {"enum": ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"], "type": "string"}
                        },
                        "type": "object",
                    },
                    "portLevelMtls": {
                        "additionalProperties": {
                            "properties": {
                                "mode": {"enum": ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"], "type": "string"}
                            },
                            "type": "object",
                        },
                        "type": "object",
                    },
                    "selector": {
                        "properties": {
                            "matchLabels": {
                                "additionalProperties": {"maxLength": 63, "type": "string"},
                                "maxProperties": 4096,
                                "type": "object",
                            }
                        },
                        "type": "object",
                    },
                },
                "type": "object",
            },
            "status": {
                "properties": {
                    "conditions": {
                        "items": {
                            "properties": {
                                "lastProbeTime": {"type": "string"},
                                "lastTransitionTime": {"type": "string"},
                                "message": {"type": "string"},
                                "observedGeneration": {"x-kubernetes-int-or-string": True},
                                "reason": {"type": "string"},
                                "status": {"type": "string"},
                                "type": {"type": "string"},
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "observedGeneration": {"x-kubernetes-int-or-string": True},
                    "validationMessages": {
                        "items": {
                            "properties": {
                                "documentationUrl": {"type": "string"},
                                "level": {"enum": ["UNKNOWN", "ERROR", "WARNING", "INFO"], "type": "string"},
                                "type": {
                                    "properties": {"code": {"type": "string"}, "name": {"type": "string"}},
                                    "type": "object",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                },
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
        "type": "object",
    },
    "ServiceEntry": {
        "properties": {
            "spec": {
                "properties": {
                    "addresses": {"items": {"maxLength": 64, "type": "string"}, "maxItems": 256, "type": "array"},
                    "endpoints": {
                        "items": {
                            "properties": {
                                "address": {"maxLength": 256, "type": "string"},
                                "labels": {
                                    "additionalProperties": {"type": "string"},
                                    "maxProperties": 256,
                                    "type": "object",
                                },
                                "locality": {"maxLength": 2048, "type": "string"},
                                "network": {"maxLength": 2048, "type": "string"},
                                "ports": {
                                    "additionalProperties": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                    "maxProperties": 128,
                                    "type": "object",
                                },
                                "serviceAccount": {"maxLength": 253, "type": "string"},
                                "weight": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                            },
                            "type": "object",
                        },
                        "maxItems": 4096,
                        "type": "array",
                    },
                    "exportTo": {"items": {"type": "string"}, "type": "array"},
                    "hosts": {"items": {"type": "string"}, "maxItems": 256, "minItems": 1, "type": "array"},
                    "location": {"enum": ["MESH_EXTERNAL", "MESH_INTERNAL"], "type": "string"},
                    "ports": {
                        "items": {
                            "properties": {
                                "name": {"maxLength": 256, "type": "string"},
                                "number": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                "protocol": {"maxLength": 256, "type": "string"},
                                "targetPort": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                            },
                            "type": "object",
                        },
                        "maxItems": 256,
                        "type": "array",
                    },
                    "resolution": {
                        "enum": ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"],
                        "type": "string",
                    },
                    "subjectAltNames": {"items": {"type": "string"}, "type": "array"},
                    "workloadSelector": {
                        "properties": {
                            "labels": {
                                "additionalProperties": {"maxLength": 63, "type": "string"},
                                "maxProperties": 256,
                                "type": "object",
                            }
                        },
                        "type": "object",
                    },
                },
                "type": "object",
            },
            "status": {
                "properties": {
                    "conditions": {
                        "items": {
                            "properties": {
                                "lastProbeTime": {"type": "string"},
                                "lastTransitionTime": {"type": "string"},
                                "message": {"type": "string"},
                                "observedGeneration": {"x-kubernetes-int-or-string": True},
                                "reason": {"type": "string"},
                                "status": {"type": "string"},
                                "type": {"type": "string"},
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "observedGeneration": {"x-kubernetes-int-or-string": True},
                    "validationMessages": {
                        "items": {
                            "properties": {
                                "documentationUrl": {"type": "string"},
                                "level": {"enum": ["UNKNOWN", "ERROR", "WARNING", "INFO"], "type": "string"},
                                "type": {
                                    "properties": {"code": {"type": "string"}, "name": {"type": "string"}},
                                    "type": "object",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                },
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
        "type": "object",
    },
    "Telemetry": {
        "properties": {
            "spec": {
                "properties": {
                    "accessLogging": {
                        "items": {
                            "properties": {
                                "disabled": {"type": "boolean"},
                                "filter": {"properties": {"expression": {"type": "string"}}, "type": "object"},
                                "match": {
                                    "properties": {
                                        "mode": {"enum": ["CLIENT_AND_SERVER", "CLIENT", "SERVER"], "type": "string"}
                                    },
                                    "type": "object",
                                },
                                "providers": {
                                    "items": {"properties": {"name": {"type": "string"}}, "type": "object"},
                                    "type": "array",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "metrics": {
                        "items": {
                            "properties": {
                                "overrides": {
                                    "items": {
                                        "properties": {
                                            "disabled": {"type": "boolean"},
                                            "match": {
                                                "properties": {
                                                    "customMetric": {"type": "string"},
                                                    "metric": {
                                                        "enum": [
                                                            "ALL_METRICS",
                                                            "REQUEST_COUNT",
                                                            "REQUEST_DURATION",
                                                            "REQUEST_SIZE",
                                                            "RESPONSE_SIZE",
                                                            "TCP_OPENED_CONNECTIONS",
                                                            "TCP_CLOSED_CONNECTIONS",
                                                            "TCP_SENT_BYTES",
                                                            "TCP_RECEIVED_BYTES",
                                                            "GRPC_REQUEST_MESSAGES",
                                                            "GRPC_RESPONSE_MESSAGES",
                                                        ],
                                                        "type": "string",
                                                    },
                                                    "mode": {
                                                        "enum": ["CLIENT_AND_SERVER", "CLIENT", "SERVER"],
                                                        "type": "string",
                                                    },
                                                },
                                                "type": "object",
                                            },
                                            "tagOverrides": {
                                                "additionalProperties": {
                                                    "properties": {
                                                        "operation": {"enum": ["UPSERT", "REMOVE"], "type": "string"},
                                                        "value": {"type": "string"},
                                                    },
                                                    "type": "object",
                                                },
                                                "type": "object",
                                            },
                                        },
                                        "type": "object",
                                    },
                                    "type": "array",
                                },
                                "providers": {
                                    "items": {"properties": {"name": {"type": "string"}}, "type": "object"},
                                    "type": "array",
                                },
                                "reportingInterval": {"type": "string"},
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "selector": {
                        "properties": {
                            "matchLabels": {
                                "additionalProperties": {"maxLength": 63, "type": "string"},
                                "maxProperties": 4096,
                                "type": "object",
                            }
                        },
                        "type": "object",
                    },
                    "targetRef": {
                        "properties": {
                            "group": {"maxLength": 253, "type": "string"},
                            "kind": {"maxLength": 63, "type": "string"},
                            "name": {"maxLength": 253, "type": "string"},
                            "namespace": {"type": "string"},
                        },
                        "type": "object",
                    },
                    "targetRefs": {
                        "items": {
                            "properties": {
                                "group": {"maxLength": 253, "type": "string"},
                                "kind": {"maxLength": 63, "type": "string"},
                                "name": {"maxLength": 253, "type": "string"},
                                "namespace": {"type": "string"},
                            },
                            "type": "object",
                        },
                        "maxItems": 16,
                        "type": "array",
                    },
                    "tracing": {
                        "items": {
                            "properties": {
                                "customTags": {
                                    "additionalProperties": {
                                        "properties": {
                                            "environment": {
                                                "properties": {
                                                    "defaultValue": {"type": "string"},
                                                    "name": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "formatter": {
                                                "properties": {"value": {"type": "string"}},
                                                "type": "object",
                                            },
                                            "header": {
                                                "properties": {
                                                    "defaultValue": {"type": "string"},
                                                    "name": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "literal": {"properties": {"value": {"type": "string"}}, "type": "object"},
                                        },
                                        "type": "object",
                                    },
                                    "type": "object",
                                },
                                "disableContextPropagation": {"type": "boolean"},
                                "disableSpanReporting": {"type": "boolean"},
                                "enableIstioTags": {"type": "boolean"},
                                "match": {
                                    "properties": {
                                        "mode": {"enum": ["CLIENT_AND_SERVER", "CLIENT", "SERVER"], "type": "string"}
                                    },
                                    "type": "object",
                                },
                                "providers": {
                                    "items": {"properties": {"name": {"type": "string"}}, "type": "object"},
                                    "type": "array",
                                },
                                "randomSamplingPercentage": {"maximum": 100, "minimum": 0, "type": "number"},
                                "useRequestIdForTraceSampling": {"type": "boolean"},
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                },
                "type": "object",
            },
            "status": {
                "properties": {
                    "conditions": {
                        "items": {
                            "properties": {
                                "lastProbeTime": {"type": "string"},
                                "lastTransitionTime": {"type": "string"},
                                "message": {"type": "string"},
                                "observedGeneration": {"x-kubernetes-int-or-string": True},
                                "reason": {"type": "string"},
                                "status": {"type": "string"},
                                "type": {"type": "string"},
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "observedGeneration": {"x-kubernetes-int-or-string": True},
                    "validationMessages": {
                        "items": {
                            "properties": {
                                "documentationUrl": {"type": "string"},
                                "level": {"enum": ["UNKNOWN", "ERROR", "WARNING", "INFO"], "type": "string"},
                                "type": {
                                    "properties": {"code": {"type": "string"}, "name": {"type": "string"}},
                                    "type": "object",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                },
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
        "type": "object",
    },
    "VirtualService": {
        "properties": {
            "spec": {
                "properties": {
                    "exportTo": {"items": {"type": "string"}, "type": "array"},
                    "gateways": {"items": {"type": "string"}, "type": "array"},
                    "hosts": {"items": {"type": "string"}, "type": "array"},
                    "http": {
                        "items": {
                            "properties": {
                                "corsPolicy": {
                                    "properties": {
                                        "allowCredentials": {"type": "boolean"},
                                        "allowHeaders": {"items": {"type": "string"}, "type": "array"},
                                        "allowMethods": {"items": {"type": "string"}, "type": "array"},
                                        "allowOrigin": {"items": {"type": "string"}, "type": "array"},
                                        "allowOrigins": {
                                            "items": {
                                                "properties": {
                                                    "exact": {"type": "string"},
                                                    "prefix": {"type": "string"},
                                                    "regex": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "type": "array",
                                        },
                                        "exposeHeaders": {"items": {"type": "string"}, "type": "array"},
                                        "maxAge": {"type": "string"},
                                        "unmatchedPreflights": {
                                            "enum": ["UNSPECIFIED", "FORWARD", "IGNORE"],
                                            "type": "string",
                                        },
                                    },
                                    "type": "object",
                                },
                                "delegate": {
                                    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
                                    "type": "object",
                                },
                                "directResponse": {
                                    "properties": {
                                        "body": {
                                            "properties": {"bytes": {"type": "string"}, "string": {"type": "string"}},
                                            "type": "object",
                                        },
                                        "status": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                    },
                                    "type": "object",
                                },
                                "fault": {
                                    "properties": {
                                        "abort": {
                                            "properties": {
                                                "grpcStatus": {"type": "string"},
                                                "http2Error": {"type": "string"},
                                                "httpStatus": {"type": "integer"},
                                                "percentage": {
                                                    "properties": {"value": {"type": "number"}},
                                                    "type": "object",
                                                },
                                            },
                                            "type": "object",
                                        },
                                        "delay": {
                                            "properties": {
                                                "exponentialDelay": {"type": "string"},
                                                "fixedDelay": {"type": "string"},
                                                "percent": {"type": "integer"},
                                                "percentage": {
                                                    "properties": {"value": {"type": "number"}},
                                                    "type": "object",
                                                },
                                            },
                                            "type": "object",
                                        },
                                    },
                                    "type": "object",
                                },
                                "headers": {
                                    "properties": {
                                        "request": {
                                            "properties": {
                                                "add": {"additionalProperties": {"type": "string"}, "type": "object"},
                                                "remove": {"items": {"type": "string"}, "type": "array"},
                                                "set": {"additionalProperties": {"type": "string"}, "type": "object"},
                                            },
                                            "type": "object",
                                        },
                                        "response": {
                                            "properties": {
                                                "add": {"additionalProperties": {"type": "string"}, "type": "object"},
                                                "remove": {"items": {"type": "string"}, "type": "array"},
                                                "set": {"additionalProperties": {"type": "string"}, "type": "object"},
                                            },
                                            "type": "object",
                                        },
                                    },
                                    "type": "object",
                                },
                                "match": {
                                    "items": {
                                        "properties": {
                                            "authority": {
                                                "properties": {
                                                    "exact": {"type": "string"},
                                                    "prefix": {"type": "string"},
                                                    "regex": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "gateways": {"items": {"type": "string"}, "type": "array"},
                                            "headers": {
                                                "additionalProperties": {
                                                    "properties": {
                                                        "exact": {"type": "string"},
                                                        "prefix": {"type": "string"},
                                                        "regex": {"type": "string"},
                                                    },
                                                    "type": "object",
                                                },
                                                "type": "object",
                                            },
                                            "ignoreUriCase": {"type": "boolean"},
                                            "method": {
                                                "properties": {
                                                    "exact": {"type": "string"},
                                                    "prefix": {"type": "string"},
                                                    "regex": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "name": {"type": "string"},
                                            "port": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                            "queryParams": {
                                                "additionalProperties": {
                                                    "properties": {
                                                        "exact": {"type": "string"},
                                                        "prefix": {"type": "string"},
                                                        "regex": {"type": "string"},
                                                    },
                                                    "type": "object",
                                                },
                                                "type": "object",
                                            },
                                            "scheme": {
                                                "properties": {
                                                    "exact": {"type": "string"},
                                                    "prefix": {"type": "string"},
                                                    "regex": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "sourceLabels": {
                                                "additionalProperties": {"type": "string"},
                                                "type": "object",
                                            },
                                            "sourceNamespace": {"type": "string"},
                                            "statPrefix": {"type": "string"},
                                            "uri": {
                                                "properties": {
                                                    "exact": {"type": "string"},
                                                    "prefix": {"type": "string"},
                                                    "regex": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "withoutHeaders": {
                                                "additionalProperties": {
                                                    "properties": {
                                                        "exact": {"type": "string"},
                                                        "prefix": {"type": "string"},
                                                        "regex": {"type": "string"},
                                                    },
                                                    "type": "object",
                                                },
                                                "type": "object",
                                            },
                                        },
                                        "type": "object",
                                    },
                                    "type": "array",
                                },
                                "mirror": {
                                    "properties": {
                                        "host": {"type": "string"},
                                        "port": {
                                            "properties": {
                                                "number": {"maximum": 4294967295, "minimum": 0, "type": "integer"}
                                            },
                                            "type": "object",
                                        },
                                        "subset": {"type": "string"},
                                    },
                                    "type": "object",
                                },
                                "mirrorPercent": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                "mirrorPercentage": {"properties": {"value": {"type": "number"}}, "type": "object"},
                                "mirror_percent": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                "mirrors": {
                                    "items": {
                                        "properties": {
                                            "destination": {
                                                "properties": {
                                                    "host": {"type": "string"},
                                                    "port": {
                                                        "properties": {
                                                            "number": {
                                                                "maximum": 4294967295,
                                                                "minimum": 0,
                                                                "type": "integer",
                                                            }
                                                        },
                                                        "type": "object",
                                                    },
                                                    "subset": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "percentage": {
                                                "properties": {"value": {"type": "number"}},
                                                "type": "object",
                                            },
                                        },
                                        "type": "object",
                                    },
                                    "type": "array",
                                },
                                "name": {"type": "string"},
                                "redirect": {
                                    "properties": {
                                        "authority": {"type": "string"},
                                        "derivePort": {
                                            "enum": ["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"],
                                            "type": "string",
                                        },
                                        "port": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                        "prefixRewrite": {"type": "string"},
                                        "redirectCode": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                        "scheme": {"type": "string"},
                                        "uri": {"type": "string"},
                                    },
                                    "type": "object",
                                },
                                "retries": {
                                    "properties": {
                                        "attempts": {"type": "integer"},
                                        "backoff": {"type": "string"},
                                        "perTryTimeout": {"type": "string"},
                                        "retryIgnorePreviousHosts": {"type": "boolean"},
                                        "retryOn": {"type": "string"},
                                        "retryRemoteLocalities": {"type": "boolean"},
                                    },
                                    "type": "object",
                                },
                                "rewrite": {
                                    "properties": {
                                        "authority": {"type": "string"},
                                        "uri": {"type": "string"},
                                        "uriRegexRewrite": {
                                            "properties": {"match": {"type": "string"}, "rewrite": {"type": "string"}},
                                            "type": "object",
                                        },
                                    },
                                    "type": "object",
                                },
                                "route": {
                                    "items": {
                                        "properties": {
                                            "destination": {
                                                "properties": {
                                                    "host": {"type": "string"},
                                                    "port": {
                                                        "properties": {
                                                            "number": {
                                                                "maximum": 4294967295,
                                                                "minimum": 0,
                                                                "type": "integer",
                                                            }
                                                        },
                                                        "type": "object",
                                                    },
                                                    "subset": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "headers": {
                                                "properties": {
                                                    "request": {
                                                        "properties": {
                                                            "add": {
                                                                "additionalProperties": {"type": "string"},
                                                                "type": "object",
                                                            },
                                                            "remove": {"items": {"type": "string"}, "type": "array"},
                                                            "set": {
                                                                "additionalProperties": {"type": "string"},
                                                                "type": "object",
                                                            },
                                                        },
                                                        "type": "object",
                                                    },
                                                    "response": {
                                                        "properties": {
                                                            "add": {
                                                                "additionalProperties": {"type": "string"},
                                                                "type": "object",
                                                            },
                                                            "remove": {"items": {"type": "string"}, "type": "array"},
                                                            "set": {
                                                                "additionalProperties": {"type": "string"},
                                                                "type": "object",
                                                            },
                                                        },
                                                        "type": "object",
                                                    },
                                                },
                                                "type": "object",
                                            },
                                            "weight": {"type": "integer"},
                                        },
                                        "type": "object",
                                    },
                                    "type": "array",
                                },
                                "timeout": {"type": "string"},
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "tcp": {
                        "items": {
                            "properties": {
                                "match": {
                                    "items": {
                                        "properties": {
                                            "destinationSubnets": {"items": {"type": "string"}, "type": "array"},
                                            "gateways": {"items": {"type": "string"}, "type": "array"},
                                            "port": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                            "sourceLabels": {
                                                "additionalProperties": {"type": "string"},
                                                "type": "object",
                                            },
                                            "sourceNamespace": {"type": "string"},
                                            "sourceSubnet": {"type": "string"},
                                        },
                                        "type": "object",
                                    },
                                    "type": "array",
                                },
                                "route": {
                                    "items": {
                                        "properties": {
                                            "destination": {
                                                "properties": {
                                                    "host": {"type": "string"},
                                                    "port": {
                                                        "properties": {
                                                            "number": {
                                                                "maximum": 4294967295,
                                                                "minimum": 0,
                                                                "type": "integer",
                                                            }
                                                        },
                                                        "type": "object",
                                                    },
                                                    "subset": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "weight": {"type": "integer"},
                                        },
                                        "type": "object",
                                    },
                                    "type": "array",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "tls": {
                        "items": {
                            "properties": {
                                "match": {
                                    "items": {
                                        "properties": {
                                            "destinationSubnets": {"items": {"type": "string"}, "type": "array"},
                                            "gateways": {"items": {"type": "string"}, "type": "array"},
                                            "port": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                            "sniHosts": {"items": {"type": "string"}, "type": "array"},
                                            "sourceLabels": {
                                                "additionalProperties": {"type": "string"},
                                                "type": "object",
                                            },
                                            "sourceNamespace": {"type": "string"},
                                        },
                                        "type": "object",
                                    },
                                    "type": "array",
                                },
                                "route": {
                                    "items": {
                                        "properties": {
                                            "destination": {
                                                "properties": {
                                                    "host": {"type": "string"},
                                                    "port": {
                                                        "properties": {
                                                            "number": {
                                                                "maximum": 4294967295,
                                                                "minimum": 0,
                                                                "type": "integer",
                                                            }
                                                        },
                                                        "type": "object",
                                                    },
                                                    "subset": {"type": "string"},
                                                },
                                                "type": "object",
                                            },
                                            "weight": {"type": "integer"},
                                        },
                                        "type": "object",
                                    },
                                    "type": "array",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                },
                "type": "object",
            },
            "status": {
                "properties": {
                    "conditions": {
                        "items": {
                            "properties": {
                                "lastProbeTime": {"type": "string"},
                                "lastTransitionTime": {"type": "string"},
                                "message": {"type": "string"},
                                "observedGeneration": {"x-kubernetes-int-or-string": True},
                                "reason": {"type": "string"},
                                "status": {"type": "string"},
                                "type": {"type": "string"},
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "observedGeneration": {"x-kubernetes-int-or-string": True},
                    "validationMessages": {
                        "items": {
                            "properties": {
                                "documentationUrl": {"type": "string"},
                                "level": {"enum": ["UNKNOWN", "ERROR", "WARNING", "INFO"], "type": "string"},
                                "type": {
                                    "properties": {"code": {"type": "string"}, "name": {"type": "string"}},
                                    "type": "object",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                },
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
        "type": "object",
    },
    "WorkloadEntry": {
        "properties": {
            "spec": {
                "properties": {
                    "address": {"maxLength": 256, "type": "string"},
                    "labels": {"additionalProperties": {"type": "string"}, "maxProperties": 256, "type": "object"},
                    "locality": {"maxLength": 2048, "type": "string"},
                    "network": {"maxLength": 2048, "type": "string"},
                    "ports": {
                        "additionalProperties": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                        "maxProperties": 128,
                        "type": "object",
                    },
                    "serviceAccount": {"maxLength": 253, "type": "string"},
                    "weight": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                },
                "type": "object",
            },
            "status": {
                "properties": {
                    "conditions": {
                        "items": {
                            "properties": {
                                "lastProbeTime": {"type": "string"},
                                "lastTransitionTime": {"type": "string"},
                                "message": {"type": "string"},
                                "observedGeneration": {"x-kubernetes-int-or-string": True},
                                "reason": {"type": "string"},
                                "status": {"type": "string"},
                                "type": {"type": "string"},
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "observedGeneration": {"x-kubernetes-int-or-string": True},
                    "validationMessages": {
                        "items": {
                            "properties": {
                                "documentationUrl": {"type": "string"},
                                "level": {"enum": ["UNKNOWN", "ERROR", "WARNING", "INFO"], "type": "string"},
                                "type": {
                                    "properties": {"code": {"type": "string"}, "name": {"type": "string"}},
                                    "type": "object",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                },
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
        "type": "object",
    },
    "WorkloadGroup": {
        "properties": {
            "spec": {
                "properties": {
                    "metadata": {
                        "properties": {
                            "annotations": {
                                "additionalProperties": {"type": "string"},
                                "maxProperties": 256,
                                "type": "object",
                            },
                            "labels": {
                                "additionalProperties": {"type": "string"},
                                "maxProperties": 256,
                                "type": "object",
                            },
                        },
                        "type": "object",
                    },
                    "probe": {
                        "properties": {
                            "exec": {
                                "properties": {"command": {"items": {"type": "string"}, "type": "array"}},
                                "type": "object",
                            },
                            "failureThreshold": {"minimum": 0, "type": "integer"},
                            "grpc": {
                                "properties": {
                                    "port": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                    "service": {"type": "string"},
                                },
                                "type": "object",
                            },
                            "httpGet": {
                                "properties": {
                                    "host": {"type": "string"},
                                    "httpHeaders": {
                                        "items": {
                                            "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
                                            "type": "object",
                                        },
                                        "type": "array",
                                    },
                                    "path": {"type": "string"},
                                    "port": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                    "scheme": {"type": "string"},
                                },
                                "type": "object",
                            },
                            "initialDelaySeconds": {"minimum": 0, "type": "integer"},
                            "periodSeconds": {"minimum": 0, "type": "integer"},
                            "successThreshold": {"minimum": 0, "type": "integer"},
                            "tcpSocket": {
                                "properties": {
                                    "host": {"type": "string"},
                                    "port": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                },
                                "type": "object",
                            },
                            "timeoutSeconds": {"minimum": 0, "type": "integer"},
                        },
                        "type": "object",
                    },
                    "template": {
                        "properties": {
                            "address": {"maxLength": 256, "type": "string"},
                            "labels": {
                                "additionalProperties": {"type": "string"},
                                "maxProperties": 256,
                                "type": "object",
                            },
                            "locality": {"maxLength": 2048, "type": "string"},
                            "network": {"maxLength": 2048, "type": "string"},
                            "ports": {
                                "additionalProperties": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                                "maxProperties": 128,
                                "type": "object",
                            },
                            "serviceAccount": {"maxLength": 253, "type": "string"},
                            "weight": {"maximum": 4294967295, "minimum": 0, "type": "integer"},
                        },
                        "type": "object",
                    },
                },
                "type": "object",
            },
            "status": {
                "properties": {
                    "conditions": {
                        "items": {
                            "properties": {
                                "lastProbeTime": {"type": "string"},
                                "lastTransitionTime": {"type": "string"},
                                "message": {"type": "string"},
                                "observedGeneration": {"x-kubernetes-int-or-string": True},
                                "reason": {"type": "string"},
                                "status": {"type": "string"},
                                "type": {"type": "string"},
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                    "observedGeneration": {"x-kubernetes-int-or-string": True},
                    "validationMessages": {
                        "items": {
                            "properties": {
                                "documentationUrl": {"type": "string"},
                                "level": {"enum": ["UNKNOWN", "ERROR", "WARNING", "INFO"], "type": "string"},
                                "type": {
                                    "properties": {"code": {"type": "string"}, "name": {"type": "string"}},
                                    "type": "object",
                                },
                            },
                            "type": "object",
                        },
                        "type": "array",
                    },
                },
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
        "type": "object",
    },
}
