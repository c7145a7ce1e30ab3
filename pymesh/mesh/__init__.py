"""The mesh's conventions: what the control plane, the VM agent and the data
path agree on, each written once.

Istio keeps the same things in ``pkg/model`` (``xds.go``, ``proxy.go``),
``pkg/spiffe`` and ``pkg/config/constants``; linkerd in its ``addr`` and
``identity`` crates. Modules:

- :mod:`.defaults` ports, domains, trust domain, default addresses;
- :mod:`.xds` type URLs, short names, ``Any`` unpacking;
- :mod:`.clusters` ``outbound|port|subset|host`` and its SNI form;
- :mod:`.node` node id and metadata keys, Istio's string booleans;
- :mod:`.identity` SPIFFE identities; :mod:`.pki` certificates and keys;
- :mod:`.inbound` the ``virtualInbound`` listener contract;
- :mod:`.probe` the WorkloadGroup readiness probe;
- :mod:`.addr` host:port; :mod:`.values` booleans and durations;
- :mod:`.files` durable atomic writes, data and state directories;
- :mod:`.errors` the errors the conventions raise.

The rule (an import-linter contract in ``pyproject.toml``): this package
imports only the standard library, protobuf/Envoy message modules,
``cryptography`` and ``pymesh._native``; it never imports a process
(``pymesh.controlplane``, ``pymesh.agent``, ``pymesh.up``) nor a data-path
library, and it loads no gRPC. Importing ``pymesh.mesh`` loads nothing but
this docstring: import the module you need.
"""
