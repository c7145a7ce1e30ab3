"""istio-agent's merged metrics page: the app's own metrics (``ISTIO_PROMETHEUS_ANNOTATIONS``)
fetched at each scrape and appended after the agent's and the proxy's families, a failing app
counted in ``istio_agent_scrape_failures_total{type="application"}`` without failing the scrape,
and the settings checked (bad JSON or port named) and shown by ``--dry-run``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pymesh.agent import BootstrapError
from pymesh.agent.status import Scrapes, metrics
from support.agent import make_agent, write_vm_files
from support.ports import free_port

APP_TEXT = """# HELP orders_total Orders taken.
# TYPE orders_total counter
orders_total{kind="online"} 42
# EOF
"""


@pytest.fixture
def app() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = APP_TEXT.encode() if self.path == "/custom" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/openmetrics-text; version=1.0.0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    t.join(5)


def agent_with(tmp_path: Path, annotations: Any) -> Any:
    env = {"ISTIO_PROMETHEUS_ANNOTATIONS": annotations if isinstance(annotations, str) else json.dumps(annotations)}
    vm = write_vm_files(tmp_path / "vm", 15012, extra_env=env)
    return make_agent(vm, tmp_path / "state", free_port("127.0.0.1"))


def test_the_apps_metrics_are_merged_after_the_agents(tmp_path: Path, app: int) -> None:
    agent = agent_with(tmp_path, {"scrape": "true", "port": str(app), "path": "/custom"})
    assert agent.plan()["app_metrics"] == [f"http://127.0.0.1:{app}/custom"]
    scrapes = Scrapes()
    text = metrics(agent, scrapes)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["orders"].samples[0].value == 42  # the app's, as it served them
    assert text.index("pymesh_agent_xds_connected") < text.index("istio_tcp_connections_opened_total")
    assert text.index("istio_tcp_connections_opened_total") < text.index("orders_total")
    assert "# EOF" not in text
    assert families["istio_agent_scrapes"].samples[0].value == 1
    assert families["istio_agent_scrape_failures"].samples[0].value == 0


def test_an_app_that_does_not_answer_is_counted_and_the_scrape_still_succeeds(tmp_path: Path, app: int) -> None:
    agent = agent_with(tmp_path, [{"scrape": "true", "port": str(free_port("127.0.0.1"))}, {"scrape": "false"}])
    scrapes = Scrapes()
    metrics(agent, scrapes)
    text = metrics(agent, scrapes)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["istio_agent_scrapes"].samples[0].value == 2
    fail = families["istio_agent_scrape_failures"].samples[0]
    assert fail.labels == {"type": "application"} and fail.value == 2


@pytest.mark.parametrize(
    ("value", "text"),
    [("{not json", "not valid JSON"), ({"scrape": "true", "port": "http"}, "not a port number"), ("[1]", "expected")],
)
def test_bad_annotations_name_the_variable(tmp_path: Path, value: Any, text: str) -> None:
    with pytest.raises(BootstrapError, match=f"ISTIO_PROMETHEUS_ANNOTATIONS.*{text}"):
        agent_with(tmp_path, value)
