"""edgerank.client over several replicas: gRPC's round_robin, health checking and retries.

The failover test runs three real daemons on loopback port 0 and SIGTERMs one while a client
is mid-run: every request must come back, right, and every daemon must have served a share.
Each daemon's count comes from the daemon itself (Info while it runs, its last log line once
it has stopped), so the counts add up to the requests sent only if nothing ran twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgerank import client, errors
from edgerank.backends.onnx import OnnxBackend
from edgerank.cli.main import main
from edgerank.engine.rank import score_documents
from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc
from edgerank.testing import tiny_models

ROOT = Path(__file__).resolve().parent.parent
CORPUS = tiny_models.corpus(200, seed=5)
REQUESTS, CONCURRENCY, KILL_AFTER = 240, 4, 80


# -- targets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:5001", "127.0.0.1:5001"),
        ("edgerank-headless.ns.svc:50051", "edgerank-headless.ns.svc:50051"),
        ("dns:///edgerank:50051", "dns:///edgerank:50051"),
        ("unix:/run/edgerank/edgerank.sock", "unix:/run/edgerank/edgerank.sock"),
        ("127.0.0.1:5001, 127.0.0.2:5002", "ipv4:127.0.0.1:5001,127.0.0.2:5002"),
        ("[::1]:5001,[::1]:5002", "ipv6:[::1]:5001,[::1]:5002"),
        ("127.0.0.1:5001,127.0.0.1:5001", "ipv4:127.0.0.1:5001"),
    ],
)
def test_targets(address: str, expected: str) -> None:
    assert client.target(address) == expected


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("", "no server address"),
        ("127.0.0.1:1,unix:/x.sock", "give several HOST:PORT"),
        ("127.0.0.1,127.0.0.2:2", "is not HOST:PORT"),
        ("127.0.0.1:1,[::1]:2", "one family"),
        ("127.0.0.1:1,no-such-host.invalid:2", "cannot resolve"),
    ],
)
def test_bad_targets_are_one_clear_error(address: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidInput, match=re.escape(fragment)):
        client.target(address)


def test_service_config_asks_grpc_for_balancing_health_and_retries() -> None:
    cfg = json.loads(client.service_config())
    assert cfg["loadBalancingConfig"] == [{"round_robin": {}}]
    assert cfg["healthCheckConfig"]["serviceName"] == "edgerank.v1.Reranker"
    (method,) = cfg["methodConfig"]
    assert {"service": "edgerank.v1.Reranker"} in method["name"]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert dict(client.channel_options())["grpc.enable_retries"] == 1


# -- three daemons, one SIGTERMed mid-run --------------------------------------------------


class Daemon:
    def __init__(self, model_dir: Path, log: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGERANK_", "NOTIFY_"))}
        cmd = [sys.executable, "-m", "edgerank.server.daemon", "--model", str(model_dir)]
        cmd += ["--listen", "127.0.0.1:0", "--threads", "1", "--drain-timeout-s", "30"]
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=err)
        self.address = ""
        self.terminated = False

    def wait_serving(self, deadline: float) -> None:
        while not self.address:
            m = re.search(r"listening on tcp port (\d+)", self.log.read_text())
            if m:
                self.address = f"127.0.0.1:{m.group(1)}"
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon did not start:\n{self.log.read_text()}")
            else:
                time.sleep(0.05)
        with grpc.insecure_channel(self.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            req = health_pb2.HealthCheckRequest(service=client.HEALTH_SERVICE)
            while health.Check(req, timeout=30).status != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.05)

    def completed(self) -> int:
        with grpc.insecure_channel(self.address) as ch:
            return (
                pb_grpc.RerankerStub(ch).Info(pb.InfoRequest(), timeout=30).load.completed_requests
            )

    def terminate(self) -> None:
        """SIGTERM once: a second one during the interpreter's own teardown (after the
        loop's handlers are gone) would turn a clean drain's exit 0 into -15."""
        if not self.terminated and self.proc.poll() is None:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def daemons(tiny_onnx_dir, tmp_path):
    started = [Daemon(tiny_onnx_dir, tmp_path / f"daemon{i}.log") for i in range(3)]
    try:
        deadline = time.monotonic() + 180
        for d in started:
            d.wait_serving(deadline)
        yield started
    finally:
        for d in started:
            d.stop()


def _requests() -> list[tuple[str, list[str]]]:
    return [
        (" ".join(CORPUS[i % 200].split()[:3]), CORPUS[(7 * i) % 190 : (7 * i) % 190 + 6])
        for i in range(REQUESTS)
    ]


async def _run(address: str, victim: Daemon, work) -> tuple[dict, dict, int]:
    """Send every request (CONCURRENCY at a time); SIGTERM the victim once KILL_AFTER answers
    are in and it has answered at least one itself. Returns answers, failures and how many
    answers had come back when the signal went."""
    answers: dict[int, pb.RerankResponse] = {}
    failures: dict[int, str] = {}
    queue = list(range(len(work)))
    killed_at: list[int] = []

    async with (
        client.aio_channel(address) as chan,
        grpc.aio.insecure_channel(victim.address) as direct,
    ):
        stub = pb_grpc.RerankerStub(chan)

        async def worker() -> None:
            while queue:
                i = queue.pop(0)
                q, docs = work[i]
                try:
                    answers[i] = await stub.Rerank(
                        pb.RerankRequest(query=q, documents=docs), timeout=120
                    )
                except grpc.aio.AioRpcError as exc:
                    failures[i] = f"{exc.code().name}: {exc.details()}"

        async def killer() -> None:
            victim_stub = pb_grpc.RerankerStub(direct)
            while queue:
                if len(answers) >= KILL_AFTER:
                    info = await victim_stub.Info(pb.InfoRequest(), timeout=30)
                    if info.load.completed_requests >= 1:
                        killed_at.append(len(answers))
                        victim.terminate()
                        return
                await asyncio.sleep(0.01)

        await asyncio.gather(killer(), *(worker() for _ in range(CONCURRENCY)))
    assert killed_at, "the victim never served a request before the run ended"
    return answers, failures, killed_at[0]


def test_failover_when_a_replica_is_sigtermed_mid_run(daemons, tiny_onnx_dir) -> None:
    victim, survivors = daemons[0], daemons[1:]
    address = ",".join(d.address for d in daemons)
    work = _requests()
    before = [d.completed() for d in daemons]  # the warm-up counts as one

    answers, failures, killed_at = asyncio.run(_run(address, victim, work))
    assert victim.stop() == 0, victim.log.read_text()
    after = [d.completed() for d in survivors]

    assert failures == {}, victim.log.read_text()  # zero lost
    assert sorted(answers) == list(range(REQUESTS))
    direct = OnnxBackend.from_dir(tiny_onnx_dir, threads=1)
    for i, (q, docs) in enumerate(work):  # zero wrong
        raw = score_documents(direct, q, docs).raw
        got = [r.raw_score for r in sorted(answers[i].results, key=lambda r: r.index)]
        np.testing.assert_allclose(got, raw, rtol=0, atol=1e-4, err_msg=f"request {i}")

    m = re.search(r"stopped after answering \d+ requests \(.*grpc OK (\d+)", victim.log.read_text())
    assert m, victim.log.read_text()
    served = [int(m.group(1))]  # the requests it answered (neither the warm-up nor Info)
    served += [a - b for a, b in zip(after, before[1:], strict=True)]
    print(f"\nper-daemon completed requests (victim first): {served}; SIGTERM after {killed_at}")
    assert all(n > 0 for n in served), served  # every daemon served a share while up
    # the survivors carried the rest: all but the victim's in-flight calls it drained
    assert sum(served[1:]) >= REQUESTS - killed_at - CONCURRENCY, (served, killed_at)
    assert sum(served) == REQUESTS, served  # nothing lost, nothing ran twice

    # the CLI's --server takes the same list (the victim is gone: its address fails over)
    q, docs = work[0]
    r = CliRunner().invoke(main, ["score", "--server", address, "--json", q, *docs])
    assert r.exit_code == 0, r.output
    via_cli = {x["index"]: x["raw_score"] for x in json.loads(r.stdout)["results"]}
    want = {x.index: x.raw_score for x in answers[0].results}
    assert via_cli.keys() == want.keys()
    np.testing.assert_allclose([via_cli[k] for k in want], list(want.values()), atol=1e-4)
    r = CliRunner().invoke(
        main, ["bench", "--server", address, "--clients", "2", "--requests", "8", "--json"]
    )
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.output)
    assert row["failed"] == 0 and row["requests"] == 8
