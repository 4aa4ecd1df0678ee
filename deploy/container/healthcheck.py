"""HEALTHCHECK for the image: grpc.health.v1 Check on the daemon's own port; exit 0 only when
SERVING (loading and draining are NOT_SERVING). Kubernetes uses its native gRPC probe
instead; this serves `podman healthcheck run` and Docker."""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

port = os.environ.get("EDGERANK_LISTEN", "0.0.0.0:50051").rpartition(":")[2]
service = sys.argv[1] if len(sys.argv) > 1 else "edgerank.v1.Reranker"
try:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
except grpc.RpcError as exc:
    print(f"unhealthy: {exc.code().name}", file=sys.stderr)
    sys.exit(1)
status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
print(status)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
