"""The pymesh VM agent: reads Istio's VM bootstrap files, joins the mesh
over ADS (auto-registration, health), and keeps the DNS proxy's name table
and the lbtable/redirection tables the outbound proxy reads in step with
the control plane. See :mod:`pymesh.agent.agent` for the data-path interface.

Run it with ``pymesh agent`` (systemd: ``pymesh-agent.service`` beside this
file) or embed :class:`Agent`.
"""

from __future__ import annotations

from pymesh.agent.agent import Agent, AgentOptions, Route, Tables
from pymesh.agent.bootstrap import Bootstrap, CaptureSettings, capture_settings, load_bootstrap
from pymesh.agent.errors import AgentError, BootstrapError, ProbeError, StateError, XdsClientError
from pymesh.agent.node import NodeInfo, build_node
from pymesh.agent.persist import StateDir, default_state_dir
from pymesh.agent.probes import Probe, Prober, ProbeSpec, parse_probe
from pymesh.agent.xds_client import XdsClient

__all__ = [
    "Agent",
    "AgentError",
    "AgentOptions",
    "Bootstrap",
    "BootstrapError",
    "CaptureSettings",
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
    "capture_settings",
    "default_state_dir",
    "load_bootstrap",
    "parse_probe",
]
