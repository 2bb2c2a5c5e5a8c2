"""An OTLP backend that answers each trace export as a script says: opentelemetry-proto,
grpcio and googleapis-common-protos, nothing of the agent's.

The script rides in the span names: a span named "case:REPLY,REPLY,..." gets the k-th
REPLY on the k-th attempt to export it, then OK. Over gRPC a REPLY is a status code name
(UNAVAILABLE), optionally with a RetryInfo delay in the status details
(RESOURCE_EXHAUSTED+retry=1500, in ms), or OK+partial=N (OK with partial_success
rejecting N spans). Over HTTP it is a status (503), optionally with Retry-After in
seconds (429+after=2), or 200+partial=N. Metrics and logs are always accepted.

Each trace export attempt is appended to OUT as one JSON line:
{"t": monotonic seconds, "name": the first span's name, "attempt": k (from 0),
 "reply": what was answered, "spans": spans in the request}.

usage: scripted_backend.py grpc|http PORT OUT
"""
import json
import sys
import threading
import time
from collections import defaultdict
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import accept_all

LOCK = threading.Lock()
ATTEMPTS = defaultdict(int)


def next_reply(request, out):
    """Records the attempt and returns (reply, option): the script's next step."""
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    name = spans[0].name if spans else ""
    with LOCK:
        attempt = ATTEMPTS[name]
        ATTEMPTS[name] += 1
        script = name.split(":", 1)[1].split(",") if ":" in name else []
        reply = script[attempt] if attempt < len(script) else "OK"
        out.write(json.dumps({"t": time.monotonic(), "name": name, "attempt": attempt,
                              "reply": reply, "spans": len(spans)}) + "\n")
        out.flush()
    code, _, option = reply.partition("+")
    return code, option


def partial(option):
    """The rejected-span count of a "partial=N" option, else 0."""
    return int(option.split("=", 1)[1]) if option.startswith("partial=") else 0


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        code, option = next_reply(request, self.out)
        if code == "OK":
            response = trace_service_pb2.ExportTraceServiceResponse()
            rejected = partial(option)
            if rejected:
                response.partial_success.rejected_spans = rejected
                response.partial_success.error_message = "scripted partial success"
            return response
        status = status_pb2.Status(code=grpc.StatusCode[code].value[0], message="scripted " + code)
        if option.startswith("retry="):
            ms = int(option.split("=", 1)[1])
            info = error_details_pb2.RetryInfo()
            info.retry_delay.seconds, info.retry_delay.nanos = ms // 1000, (ms % 1000) * 1_000_000
            detail = any_pb2.Any()
            detail.Pack(info)
            status.details.append(detail)
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        context.abort(grpc.StatusCode[code], status.message)


def serve_grpc(port, out):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(out), server)
    accept_all.add_to(server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def http_handler(out):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, body=b"", headers=()):
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/traces":
                self.answer(200)
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            code, option = next_reply(request, out)
            status = 200 if code == "OK" else int(code)
            if status == 200:
                response = trace_service_pb2.ExportTraceServiceResponse()
                rejected = partial(option)
                if rejected:
                    response.partial_success.rejected_spans = rejected
                    response.partial_success.error_message = "scripted partial success"
                self.answer(200, response.SerializeToString())
            elif option.startswith("after="):
                self.answer(status, headers=[("Retry-After", option.split("=", 1)[1])])
            else:
                self.answer(status)

    return Handler


def main():
    protocol, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out = open(path, "a", encoding="utf-8")
    if protocol == "grpc":
        serve_grpc(port, out)
    else:
        server = ThreadingHTTPServer(("127.0.0.1", port), http_handler(out))
        print("ready", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
