"""One request to a TLS listener of the agent, as a client configured by the test: grpcio
(ssl_channel_credentials) for OTLP/gRPC, Python's urllib with an ssl context for
OTLP/HTTP and /metrics; opentelemetry-proto for the message, nothing of the agent's.

usage: tls_client.py grpc|http|metrics URL [--ca F] [--cert F --key F] [--token T]
Sends one trace export of one span (grpc, http) or GET /metrics and prints one JSON
object: {"outcome": "OK" | a gRPC status code name | "HTTP <status>" | "TLS" (the
handshake failed) | "CONNECTION" (refused or reset), "detail": "..."}.
"""
import json
import ssl
import sys
import urllib.error
import urllib.request

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def option(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


def request():
    req = trace_service_pb2.ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "tls-client"
    return req


def read(path):
    return open(path, "rb").read() if path else None


def via_grpc(url, ca, cert, key, token):
    target = url.split("://", 1)[1]
    if url.startswith("https://"):
        credentials = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(request(), timeout=5, metadata=metadata)
        return "OK", ""
    except grpc.RpcError as e:
        detail = e.details() or ""
        # grpcio reports a failed handshake as UNAVAILABLE with the SSL error in it.
        if e.code() == grpc.StatusCode.UNAVAILABLE and ("ssl" in detail.lower() or "handshake" in detail.lower()
                                                        or "tls" in detail.lower() or "certificate" in detail.lower()):
            return "TLS", detail
        return e.code().name, detail


def via_http(url, ca, cert, key, token, metrics):
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=ca)
        if cert:
            context.load_cert_chain(cert, key)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if metrics:
        req = urllib.request.Request(url.rstrip("/") + "/metrics", headers=headers)
    else:
        headers["Content-Type"] = "application/x-protobuf"
        req = urllib.request.Request(url.rstrip("/") + "/v1/traces", data=request().SerializeToString(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as resp:
            return ("OK" if resp.status == 200 else f"HTTP {resp.status}"), ""
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}", e.read().decode(errors="replace")
    except (ssl.SSLError, ssl.CertificateError) as e:
        return "TLS", str(e)
    except urllib.error.URLError as e:
        if isinstance(e.reason, (ssl.SSLError, ssl.CertificateError)):
            return "TLS", str(e.reason)
        return "CONNECTION", str(e.reason)
    except (ConnectionError, OSError) as e:
        return "CONNECTION", str(e)


def main():
    kind, url = sys.argv[1], sys.argv[2]
    ca, cert, key, token = option("--ca"), option("--cert"), option("--key"), option("--token")
    if kind == "grpc":
        outcome, detail = via_grpc(url, ca, cert, key, token)
    else:
        outcome, detail = via_http(url, ca, cert, key, token, kind == "metrics")
    print(json.dumps({"outcome": outcome, "detail": detail}), flush=True)


if __name__ == "__main__":
    main()
