"""``pymesh lb``: operator commands over the lbtable.

``pymesh lb pick --clusters FILE [--assignments FILE] --cluster NAME [--count N] [--hash-key K] [--json]``
loads Envoy clusters (and, with ``--assignments``, EDS
``ClusterLoadAssignment``s for them, as an xDS client receives endpoints
separately), makes N picks and shows where they land: a table of endpoint,
picks and share, or with ``--json`` an object mapping each endpoint's
``address:port`` to its number of picks.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pymesh._native import PymeshError
from pymesh.lbtable import load_assignments, load_clusters

EXIT_OK = 0
EXIT_NO_ENDPOINT = 3  # some picks found no endpoint that may take a request


def cmd_lb_pick(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise PymeshError(f"--count must be at least 1, got {args.count}")
    table = load_clusters(args.clusters, seed=args.seed)
    if args.assignments:
        load_assignments(args.assignments, table=table)
    counts = table.pick_counts(args.cluster, args.count, args.hash_key)
    failed = counts.pop(None, 0)
    picks = {str(k): v for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))}
    if args.json:
        out: dict[str, Any] = dict(picks)
        print(json.dumps(out, indent=2))
    else:
        info = table.cluster_info(args.cluster)
        print(f"cluster {args.cluster} ({info['policy']}, {info['endpoints']} endpoints): {args.count} picks")
        width = max([len(k) for k in picks] + [8])
        for addr, n in picks.items():
            print(f"  {addr:<{width}}  {n:>8}  {100.0 * n / args.count:6.2f}%")
        if failed:
            print(f"  {'(none)':<{width}}  {failed:>8}  {100.0 * failed / args.count:6.2f}%  no healthy upstream")
    return EXIT_NO_ENDPOINT if failed else EXIT_OK


def add_commands(sub: Any) -> None:
    """Adds ``lb`` and its subcommands to the top-level parser's subparsers."""
    lb = sub.add_parser("lb", help="endpoint selection (the lbtable)")
    lb_sub = lb.add_subparsers(dest="lb_command", required=True)
    pk = lb_sub.add_parser("pick", help="make picks from a cluster and show where they land")
    pk.add_argument("--clusters", required=True, help="Envoy clusters: JSON, or YAML (.yaml/.yml); list or bootstrap")
    pk.add_argument(
        "--assignments",
        default=None,
        help="EDS ClusterLoadAssignments for clusters in --clusters: JSON, or YAML (.yaml/.yml); "
        "a list, one, or an xDS response",
    )
    pk.add_argument("--cluster", required=True, help="the cluster to pick from")
    pk.add_argument("--count", type=int, default=1, help="number of picks (default: %(default)s)")
    pk.add_argument("--hash-key", default=None, help="request hash key (RING_HASH and MAGLEV)")
    pk.add_argument("--seed", type=int, default=None, help="seed the random choices (reproducible output)")
    pk.add_argument("--json", action="store_true", help='print {"address:port": picks} as JSON')
    pk.set_defaults(func=cmd_lb_pick)
