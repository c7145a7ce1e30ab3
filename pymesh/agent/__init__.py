"""The pymesh VM agent: reads Istio's VM bootstrap files, joins the mesh
over ADS (auto-registration, health), and keeps the DNS proxy's name table
and the lbtable/redirection tables the outbound proxy reads in step with
the control plane. See :mod:`pymesh.agent.agent` for the parts.

Run it with ``pymesh agent`` (systemd: ``pymesh-agent.service`` beside this
file) or embed :class:`Agent`. It never imports the control plane: what both
sides agree on is :mod:`pymesh.mesh`.
"""

from __future__ import annotations

from pymesh.agent.agent import Agent, Route
from pymesh.agent.bootstrap import Bootstrap, load_bootstrap
from pymesh.agent.config import AgentConfig, AgentOptions, plan, resolve
from pymesh.agent.errors import AgentError, BootstrapError, ProbeError, StateError, XdsClientError
from pymesh.agent.node import NodeInfo, build_node
from pymesh.agent.persist import StateDir, default_state_dir
from pymesh.agent.probes import Probe, Prober, ProbeSpec, parse_probe
from pymesh.agent.state import MeshState, Tables
from pymesh.agent.xds_client import XdsClient

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentOptions",
    "Bootstrap",
    "BootstrapError",
    "MeshState",
    "NodeInfo",
    "Probe",
    "ProbeError",
    "ProbeSpec",
    "Prober",
    "Route",
    "StateDir",
    "StateError",
    "Tables",
    "XdsClient",
    "XdsClientError",
    "build_node",
    "default_state_dir",
    "load_bootstrap",
    "parse_probe",
    "plan",
    "resolve",
]
