import psycopg

from backbone.testing import NatsServer, eventually


async def test_nats_fixture_has_jetstream(nats_client):
    js = nats_client.jetstream()
    info = await js.account_info()
    assert info.limits is not None


async def test_nats_server_restart_keeps_stream(nats_server: NatsServer, nats_client):
    js = nats_client.jetstream()
    await js.add_stream(name="T", subjects=["t.>"])
    ack = await js.publish("t.a", b"x")
    nats_server.restart()
    # The first request after a restart may be lost on the dead socket; retry until reconnected.
    info = await eventually(lambda: js.stream_info("T"))
    assert info.state.messages == 1
    assert ack.seq == 1


def test_postgres_dsn_is_a_fresh_database(postgres_dsn):
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            "select count(*) from information_schema.tables where table_schema='public'"
        ).fetchone()
    assert rows == (0,)


def test_nats_server_picks_other_ports_when_its_port_is_taken(tmp_path, monkeypatch):
    import socket  # noqa: PLC0415

    from backbone import testing  # noqa: PLC0415

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real = testing.free_port
        ports = iter([taken])
        monkeypatch.setattr(testing, "free_port", lambda: next(ports, None) or real())
        with NatsServer(tmp_path / "nats") as server:
            assert server.running
            assert server.port != taken
