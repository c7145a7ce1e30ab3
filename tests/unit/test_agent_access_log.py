"""The agent's access log settings: meshConfig ``accessLogFile`` / ``accessLogEncoding``
in mesh.yaml (Istio's defaults: off, TEXT), the CLI flags over them, a bad encoding
named by file and key, and ``--dry-run`` showing what is configured. The lines
themselves are tested on live connections in tests/netns/test_relay_mtls.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pymesh.agent import AgentOptions, BootstrapError, load_bootstrap
from pymesh.agent.config import plan, resolve
from support.agent import write_vm_files


def files(d: Path, **mesh: str) -> Path:
    vm = write_vm_files(d, 15012)
    doc = yaml.safe_load((vm / "mesh.yaml").read_text())
    doc.update(mesh)
    (vm / "mesh.yaml").write_text(yaml.safe_dump(doc))
    return vm


def access_log(d: Path, options: AgentOptions | None = None) -> object:
    return plan(resolve(load_bootstrap(d), options or AgentOptions(extra_ips=[])))["access_log"]


def test_off_by_default_and_from_mesh_config(tmp_path: Path) -> None:
    assert access_log(files(tmp_path / "a")) is None
    vm = files(tmp_path / "b", accessLogFile="/dev/stdout", accessLogEncoding="json")
    assert access_log(vm) == {"file": "/dev/stdout", "encoding": "JSON"}
    assert access_log(files(tmp_path / "c", accessLogFile="/var/log/a.log")) == {
        "file": "/var/log/a.log",
        "encoding": "TEXT",
    }


def test_flags_win_and_an_empty_file_turns_it_off(tmp_path: Path) -> None:
    vm = files(tmp_path, accessLogFile="/dev/stdout")
    opts = AgentOptions(extra_ips=[], access_log_file="/tmp/x.log", access_log_encoding="JSON")
    assert access_log(vm, opts) == {"file": "/tmp/x.log", "encoding": "JSON"}
    assert access_log(vm, AgentOptions(extra_ips=[], access_log_file="")) is None


def test_a_bad_encoding_names_the_file_and_key(tmp_path: Path) -> None:
    vm = files(tmp_path, accessLogFile="/dev/stdout", accessLogEncoding="yaml")
    with pytest.raises(BootstrapError, match=r"mesh.yaml: key accessLogEncoding: 'YAML' is not TEXT or JSON"):
        access_log(vm)
