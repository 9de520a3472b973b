"""The OpenAPI document fuzzed by schemathesis against the ASGI app on real PostgreSQL (a suite with a
queued run and an alert, so lookups find something): no request, valid or not, gives a 500. The
image root holds no images, so no generated submission reaches the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error

from gate.alerts.store import upsert_open_alert
from gate.api.app import create_app
from gate.settings import Settings
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from tests.integration.test_api import AUTH, WRITE


@pytest.fixture
def api_schema(pg_url: str, tmp_path: Path) -> schemathesis.BaseSchema:
    root = tmp_path / "images"
    (root / "ref").mkdir(parents=True)
    engine = make_engine(pg_url)
    with session_scope(engine) as session:
        run = repo.create_run(session, suite_name="fuzz", pairs=[("ref/a.png", "new/a.png")], net="alex",
                              version="0.1", precision="fp32", meta={"commit": "abc"})
        repo.record_error(session, comparison_id=repo.list_comparisons(session, run_id=run.id)[0].id,
                          reason="not computed: the fuzz test's store", final=True)  # nothing for the server to resume
        upsert_open_alert(session, rule="distance", suite_name="fuzz", labels={"suite": "fuzz"}, value=0.5,
                          threshold=0.1, run_id=run.id)
    engine.dispose()
    app = create_app(Settings(database_url=pg_url, image_root=root, broker_url=None, webhook_url=None,
                              api_token=SecretStr(WRITE)))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gives_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=AUTH, checks=[not_a_server_error])
