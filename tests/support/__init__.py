"""What the test tiers share (see tests/README.md).

- ``paths``: the repository root, the case files, the shipped example mesh.
- ``wait``: ``wait_until``, the one polling helper.
- ``ports``: ``free_port``, a port free for TCP and UDP on every address given.
- ``procs``: ``reap`` (stop a subprocess and close its pipes) and ``Lines`` (its output, polled).
- ``system``: what a test needs from the host (root, capabilities, system tools); without it the
  test is skipped with the reason, or fails when PYMESH_REQUIRE_ROOT_TESTS is set (CI).
- ``cp``, ``agent``, ``dns``, ``sec``, ``lb``: real parts for the control-plane, agent, DNS,
  security and load-balancer tests (ADS streams, scripted xDS servers, VM files, resolvers, TLS
  channels, workload certificates, openssl s_client, clusters in the lbtable's dict form).
- ``netns``: the two-namespace lab (root), ``setns`` into a namespace, nftables namespaces.
- ``e2e``: the VM end-to-end mesh (its configuration and processes).
- ``peers``: programs the tests run as subprocesses, often inside a namespace (by path).
- ``oracles``: the pure-Python reference models (name table, load balancer).
- ``cases``: the reader of the shared case files (``tests/cases/*.cases``).

The package is importable as ``support``: pyproject's pytest ``pythonpath`` puts ``tests/`` on
``sys.path`` (for the benchmarks too).
"""
