"""Black box: `backbone up` starts everything; the CLI and the gateway work against it; a killed
service is restarted; SIGTERM stops it all cleanly. Real processes, real ports on loopback."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def port_free(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def pick_offset():
    for _ in range(20):
        offset = random.randrange(1000, 9000)
        ports = [4222, 8222, 54329, 8080, 8081, 8082, 8083]
        if all(port_free(p + offset) for p in ports):
            return offset
    pytest.skip("no free port range for a second stack")
    return 0


def cli(root, env, *args, check=True):
    proc = subprocess.run(
        [str(BIN / "backbone"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def wait(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_local_stack_end_to_end(tmp_path):
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "deploy", root / "deploy")
    offset = pick_offset()
    env = {
        **os.environ,
        "BACKBONE_STACK_PORT_OFFSET": str(offset),
        "BACKBONE_NATS__SERVERS": f"nats://127.0.0.1:{4222 + offset}",
    }
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [str(BIN / "backbone"), "up", "--no-live"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def all_ready():
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            proc = cli(root, env, "status", "--json", check=False)
            if proc.returncode != 0:
                return None
            status = json.loads(proc.stdout)
            rows = status["processes"]
            ok = rows and all(
                r["health"] in ("ok", "ready") and r["state"] == "RUNNING" for r in rows
            )
            return status if ok else None

        status = wait(all_ready, 120, "every process healthy")
        names = {r["name"] for r in status["processes"]}
        assert {"nats", "postgres", "schema-registry", "event-gateway", "outbox-relay"} <= names
        key = (root / ".backbone" / "gateway-dev-key").read_text().strip()
        assert oct((root / ".backbone" / "gateway-dev-key").stat().st_mode & 0o777) == "0o600"
        assert status["gateway-dev-key"] == key

        # The README's two commands.
        args = [
            "publish",
            "--type",
            "mcp.server.error",
            "--source",
            "/claude/mcp/filesystem",
            "--subject",
            "server-123",
            "--id",
            "e2e-1",
            "--data",
            '{"error": "Connection timeout", "severity": 0.8}',
        ]
        first = json.loads(cli(root, env, *args).stdout)
        assert (first["stream"], first["duplicate"]) == ("MCP_EVENTS", False)
        again = json.loads(cli(root, env, *args).stdout)
        assert (again["seq"], again["duplicate"]) == (first["seq"], True)
        tailed = cli(root, env, "tail", "mcp.>", "--from-start", "--count", "1", "--json").stdout
        event = json.loads(tailed.splitlines()[0])
        assert (event["id"], event["data"]["severity"]) == ("e2e-1", 0.8)

        # The gateway accepts a binary-mode POST with the dev key; 202 after the PubAck.
        request = urllib.request.Request(
            f"http://127.0.0.1:{8080 + offset}/v1/events",
            data=b'{"error": "disk full", "severity": 0.9}',
            method="POST",
            headers={
                "ce-specversion": "1.0",
                "ce-type": "mcp.server.error",
                "ce-source": "/claude/mcp/filesystem",
                "ce-id": "e2e-http-1",
                "content-type": "application/json",
                "authorization": f"Bearer {key}",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 202
            body = json.loads(resp.read())
        assert (body["stream"], body["duplicate"]) == ("MCP_EVENTS", False)

        # A service killed with SIGKILL is restarted by the stack.
        victim = next(r for r in status["processes"] if r["name"] == "schema-registry")
        os.kill(victim["pid"], signal.SIGKILL)

        def restarted():
            fresh = all_ready()
            if not fresh:
                return None
            row = next(r for r in fresh["processes"] if r["name"] == "schema-registry")
            return row["pid"] != victim["pid"]

        wait(restarted, 60, "schema-registry restarted")
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(90)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert cli(root, env, "status", check=False).returncode == 3
    # Nothing of the stack is left running.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(root / ".backbone")], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""
