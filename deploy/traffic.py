#!/usr/bin/env python3
"""Steady rerank traffic on a daemon while it is reloaded or stopped, and what became of
every call: the deploy checks (systemd, kube play) count a request as lost when it failed
in any way other than a refusal the client can retry elsewhere.

    traffic.py run ADDR --out calls.jsonl [--clients 4] [--docs 16] [--until FILE]
    traffic.py summary calls.jsonl [--mark FILE]

`run` keeps CLIENTS callers busy, each sending Rerank calls back to back on its own
channel with no retries (so every outcome is seen), until FILE exists or (--until-error)
each caller's first call that is not OK (the daemon refused it, or it was lost); it stops
by itself after --max-calls or --max-s.
`summary` prints one JSON line: calls, ok, refused (refused_draining: by the daemon's drain
rather than a connection that could not be made), lost (with their errors), the longest
time a caller took from an answer to its next call (next_call_s_max: the daemon's
drain_quiet_s must outlast it, or that next call races the listener's close), and, given
the time a reload or stop was issued (--mark: a file holding epoch seconds), how many
calls were in flight then and how many of those came back answered.

A refusal is UNAVAILABLE carrying the daemon's drain message, or a connection that could
not be made (the listener is closed): the call was never accepted. Everything else that is
not OK (a reset mid-call, CANCELLED, INTERNAL, a timeout) is lost.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time

WORDS = (
    "router password reset button label default credentials network cable firmware "
    "update light modem wireless channel signal office printer driver install queue "
    "paper tray budget council road repair tuesday banana potassium breakfast river "
    "bridge train station ticket refund delay weather forecast rain wind garden soil"
).split()
#: the details of the daemon's refusal while it drains (engine/drain.py)
DRAINING = "draining"
#: connection-level failures: the call never reached a listener
NOT_CONNECTED = ("failed to connect", "connection refused", "no such file", "connect failed")


def documents(n: int, words: int = 60) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words)) for i in range(n)]


def _caller(k, stub, pb, args, docs, stop, out, lock, budget) -> None:
    import grpc

    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    while not stop.is_set() and not (args.until and os.path.exists(args.until)):
        with lock:
            if budget[0] <= 0:
                return
            budget[0] -= 1
            n = budget[0]
        # fresh documents each call: the daemon's score cache would answer repeats at once
        fresh = [f"call {n}: {d}" for d in docs]
        start = time.time()
        try:
            reply = stub.Rerank(
                pb.RerankRequest(query="how do I reset my router password", documents=fresh),
                timeout=args.call_timeout,
                metadata=metadata,
            )
            record = {"code": "OK", "results": len(reply.results)}
        except grpc.RpcError as exc:
            record = {"code": exc.code().name, "details": exc.details() or ""}
        record.update(caller=k, start=start, end=time.time())
        with lock:
            out.write(json.dumps(record) + "\n")
            out.flush()
        if record["code"] != "OK" and args.until_error:
            return


def run(args: argparse.Namespace) -> int:
    import grpc

    from edgerank.proto.edgerank.v1 import reranker_pb2 as pb
    from edgerank.proto.edgerank.v1 import reranker_pb2_grpc as pb_grpc

    docs = documents(args.docs)
    stop, lock, budget = threading.Event(), threading.Lock(), [args.max_calls]
    channels = [grpc.insecure_channel(args.address) for _ in range(args.clients)]
    with open(args.out, "a") as out:
        threads = [
            threading.Thread(
                target=_caller,
                args=(k, pb_grpc.RerankerStub(ch), pb, args, docs, stop, out, lock, budget),
                daemon=True,
            )
            for k, ch in enumerate(channels)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + args.max_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(args.call_timeout + 5)
    for ch in channels:
        ch.close()
    return 0


def _refused(record: dict) -> bool:
    details = record.get("details", "").lower()
    return record["code"] == "UNAVAILABLE" and (
        DRAINING in details or any(s in details for s in NOT_CONNECTED)
    )


def _next_call_gaps(calls: list[dict]) -> list[float]:
    """Each caller's time from an answer to its next call, as the caller measured it."""
    by_caller: dict[int, list[dict]] = {}
    for c in calls:
        by_caller.setdefault(c["caller"], []).append(c)
    gaps = []
    for own in by_caller.values():
        own.sort(key=lambda c: c["start"])
        gaps += [b["start"] - a["end"] for a, b in itertools.pairwise(own)]
    return gaps


def summary(args: argparse.Namespace) -> int:
    with open(args.calls) as f:
        calls = [json.loads(line) for line in f if line.strip()]
    ok = [c for c in calls if c["code"] == "OK"]
    refused = [c for c in calls if c["code"] != "OK" and _refused(c)]
    lost = [c for c in calls if c["code"] != "OK" and not _refused(c)]
    report = {"calls": len(calls), "ok": len(ok), "refused": len(refused), "lost": len(lost)}
    # of the refusals, those the daemon's drain answered (the rest could not connect)
    report["refused_draining"] = sum(DRAINING in c.get("details", "").lower() for c in refused)
    if lost:
        report["lost_errors"] = sorted({f"{c['code']}: {c.get('details', '')}" for c in lost})
    if args.mark:
        with open(args.mark) as f:
            mark = float(f.read().split()[0])
        spanning = [c for c in calls if c["start"] < mark < c["end"]]
        report["in_flight_at_mark"] = len(spanning)
        report["in_flight_answered"] = sum(c["code"] == "OK" for c in spanning)
        report["ok_after_mark"] = sum(c["code"] == "OK" and c["start"] > mark for c in calls)
    gaps = _next_call_gaps(calls)
    if gaps:
        report["next_call_s_max"] = round(max(gaps), 4)
    if ok:
        report["call_s_median"] = round(sorted(c["end"] - c["start"] for c in ok)[len(ok) // 2], 3)
    print(json.dumps(report))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("address", help="gRPC target: unix:/path or HOST:PORT")
    r.add_argument("--out", required=True)
    r.add_argument("--clients", type=int, default=4)
    r.add_argument("--docs", type=int, default=16, help="documents per call")
    r.add_argument("--until", help="stop once this file exists")
    r.add_argument(
        "--until-error", action="store_true", help="a caller ends at its first call not OK"
    )
    r.add_argument("--token", default=os.environ.get("EDGERANK_TOKEN", ""))
    r.add_argument("--max-calls", type=int, default=5000)
    r.add_argument("--max-s", type=float, default=900.0)
    r.add_argument("--call-timeout", type=float, default=300.0, help="hang guard per call")
    s = sub.add_parser("summary")
    s.add_argument("calls")
    s.add_argument("--mark")
    args = ap.parse_args()
    return run(args) if args.cmd == "run" else summary(args)


if __name__ == "__main__":
    sys.exit(main())
