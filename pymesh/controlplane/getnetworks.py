"""``pymesh get networks``: istiod's meshNetworks, as the control plane uses them.

meshNetworks are not configuration objects and are not in the store: the control plane
reads them from its ``--mesh-networks FILE`` (istiod's ``--networksConfig``), watched
for changes (:mod:`pymesh.controlplane.networks`). So this command reads, in order:

- ``--mesh-networks FILE``: that file, parsed and validated as the control plane does;
- else the running control plane's monitoring port (``--control-plane URL``, else
  ``$PYMESH_CONTROL_PLANE``, else ``http://127.0.0.1:15014``, as ``pymesh proxy-status``):
  its ``/debug/status`` names the file it was given, the error of its last read
  (the last good networks keep serving) and the gateways it uses, which also come from
  Services labelled ``topology.istio.io/network``. The file is then read from this host.

The table is one row per network: where its workloads come from (``fromCidr``,
``fromRegistry``), the gateways configured, and the gateways in use (``-o wide``: where the
network is defined). ``-o yaml|json`` print the meshNetworks document itself (istio/api
``mesh/v1alpha1/network.proto``), which ``--mesh-networks`` reads back.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from pymesh.controlplane.errors import ControlPlaneError
from pymesh.controlplane.networks import MeshNetworks, NetworkSpec, load_mesh_networks
from pymesh.controlplane.proxystatus import control_planes, fetch

NAMES = ("networks", "network", "meshnetworks")
HEADER = ["NAME", "FROM", "GATEWAYS", "IN USE"]


@dataclass
class View:
    mesh: MeshNetworks
    file: str | None  # the meshNetworks file read (None: the control plane has none)
    in_use: dict[str, list[str]] | None = None  # network -> ["ADDR:PORT"]; None: not asked
    notes: list[str] = field(default_factory=list)


def spec_doc(n: NetworkSpec) -> dict[str, Any]:
    """One network in meshNetworks' own shape."""
    eps: list[dict[str, Any]] = [{"fromCidr": str(c)} for c in n.cidrs]
    eps += [{"fromRegistry": r} for r in n.registries]
    gws = [
        {"address": g.address, "port": g.port}
        if g.address
        else {"registryServiceName": g.registry_service_name, "port": g.port}
        for g in n.gateways
    ]
    out: dict[str, Any] = {}
    if eps:
        out["endpoints"] = eps
    if gws:
        out["gateways"] = gws
    return out


def _in_use(gateways: list[str]) -> dict[str, list[str]]:
    """``/debug/status``'s ``networks.gateways`` (``NETWORK=ADDR:PORT``) by network."""
    out: dict[str, list[str]] = {}
    for g in gateways:
        net, _, addr = str(g).partition("=")
        out.setdefault(net, []).append(addr)
    return out


def read(args: argparse.Namespace) -> View:
    if args.mesh_networks:
        return View(load_mesh_networks(args.mesh_networks), args.mesh_networks)
    urls = control_planes(args.control_plane)
    try:
        status = fetch(urls[0], "/debug/status")
    except ControlPlaneError as e:
        raise ControlPlaneError(
            f"meshNetworks are not in the store (the control plane reads them from its --mesh-networks file) "
            f"and {e}; give --mesh-networks FILE, or --control-plane URL of a control plane with --monitoring-listen"
        ) from None
    nets = status.get("networks") or {}
    in_use = _in_use(nets.get("gateways") or [])
    mn = nets.get("mesh_networks")
    if not mn:
        view = View(MeshNetworks(), None, in_use)
        view.notes.append(f"the control plane at {urls[0]} was started without --mesh-networks")
        return view
    view = View(load_mesh_networks(mn["file"]), mn["file"], in_use)
    if mn.get("error"):
        view.notes.append(
            f"the control plane's last read of {mn['file']} failed (it keeps its last good networks): {mn['error']}"
        )
    return view


def rows(view: View, wide: bool) -> list[list[str]]:
    out: list[list[str]] = []
    known = {n.name for n in view.mesh.networks}
    for n in view.mesh.networks:
        frm = [str(c) for c in n.cidrs] + [f"registry:{r}" for r in n.registries]
        gws = [f"{g.address or g.registry_service_name}:{g.port}" for g in n.gateways]
        used = "-" if view.in_use is None else ",".join(view.in_use.get(n.name, [])) or "<none>"
        out.append([n.name, ",".join(frm) or "-", ",".join(gws) or "<none>", used, *([str(view.file)] if wide else [])])
    # A network named only by a gateway Service's topology.istio.io/network label.
    for name, addrs in sorted((view.in_use or {}).items()):
        if name not in known:
            out.append([name, "-", "<none>", ",".join(addrs), *(["Service label"] if wide else [])])
    return out


def cmd_get_networks(args: argparse.Namespace) -> int:
    import yaml

    from pymesh.controlplane.cli import render_table

    view = read(args)
    for note in view.notes:
        print(f"warning: {note}", file=sys.stderr)
    wide = args.output == "wide"
    table = rows(view, wide)
    if args.name:
        table = [r for r in table if r[0] == args.name]
        if not table:
            print(f'Error from server (NotFound): network "{args.name}" not found', file=sys.stderr)
            return 1
    if args.output in ("json", "yaml"):
        body = {"networks": {n.name: spec_doc(n) for n in view.mesh.networks if args.name in (None, n.name)}}
        if args.output == "json":
            print(json.dumps(body, indent=4, sort_keys=True))
        else:
            print(yaml.safe_dump(body, sort_keys=True, default_flow_style=False), end="")
        return 0
    if not table:
        print("No networks found.", file=sys.stderr)
        return 0
    print(render_table([*HEADER, *(["SOURCE"] if wide else [])], table))
    return 0
