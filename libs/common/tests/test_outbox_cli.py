import json

import psycopg
from typer.testing import CliRunner

from backbone.cli import app
from backbone.events import CloudEvent
from backbone.outbox import enqueue_sync

runner = CliRunner()


def invoke(dsn, *args):
    return runner.invoke(app, ["outbox", *args], env={"BACKBONE_POSTGRES__DSN": dsn})


def test_migrate_is_idempotent_and_status_reports_the_backlog(postgres_dsn):
    first = invoke(postgres_dsn, "migrate")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["applied"] == [{"version": 1, "name": "init"}]
    assert json.loads(invoke(postgres_dsn, "migrate").stdout)["applied"] == []
    with psycopg.connect(postgres_dsn) as conn:
        enqueue_sync(conn, CloudEvent.create(type="mcp.cli.test", source="/t", data={}))
    status = invoke(postgres_dsn, "status", "--json")
    assert status.exit_code == 0, status.output
    values = json.loads(status.stdout)
    assert values["backlog"] == 1
    assert values["relays"] == 0
    assert values["oldest_age_s"] >= 0


def test_dead_rows_are_listed_and_retried(postgres_dsn):
    assert invoke(postgres_dsn, "migrate").exit_code == 0
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(
            "INSERT INTO backbone_outbox_dead (id, ordering_key, subject, msg_id, event_id, "
            "event_source, event_type, headers, payload, created_at, attempts, error) VALUES "
            "(7, 'k', 'nowhere.x', 'm', 'e-7', '/t', 'nowhere.x', '{}', '', now(), 1, "
            "'NoStreamForSubjectError: x')"
        )
    listed = invoke(postgres_dsn, "dead", "list", "--json")
    assert listed.exit_code == 0, listed.output
    row = json.loads(listed.stdout.splitlines()[0])
    assert (row["id"], row["event_id"], row["error"]) == (7, "e-7", "NoStreamForSubjectError: x")
    assert invoke(postgres_dsn, "dead", "retry").exit_code != 0  # neither ids nor --all
    retried = invoke(postgres_dsn, "dead", "retry", "7")
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.stdout)["retried"] == 1
    assert invoke(postgres_dsn, "dead", "list", "--json").stdout == ""
    assert json.loads(invoke(postgres_dsn, "status", "--json").stdout)["backlog"] == 1


def test_unreachable_database_is_a_clean_error():
    result = invoke("postgresql://nobody@127.0.0.1:1/none", "status")
    assert result.exit_code == 1
    assert "cannot connect to PostgreSQL" in result.output
