"""A stand-in inference server: the real opentelemetry-sdk and OTLP exporter.

It serves REQUESTS requests on a pool of 2 worker threads, alternating a "big" request
that burns 2 x UNIT seconds of its thread's CPU and a "small" one that burns UNIT. Each
request is a SERVER span "chat tiny-llama" with gen_ai attributes, token counts in the
same 2:1 ratio, and the worker's OS thread id (thread.native_id); each has an INTERNAL
child span ("decode") that must not be enriched. Spans go to the agent over OTLP (over TLS
for an https:// ENDPOINT, with the OTEL_EXPORTER_OTLP_* variables the exporter reads:
CERTIFICATE, CLIENT_CERTIFICATE, CLIENT_KEY, HEADERS).

With --cuda LIB (a CUDA driver library: the tests' stand-in), each request drives the
"GPU" from its worker thread instead of burning CPU: 10 x factor kernel launches, then
a stream synchronisation that blocks UNIT x factor seconds, so GPU-driver activity is
2:1 instead.

With --sleep, each request sleeps UNIT x factor seconds instead (wall time, next to no
CPU). With --claim-pid N, the resource's process.pid is N instead of its own pid (a
sender lying about which process it is).

usage: inference_server.py ENDPOINT grpc|http REQUESTS UNIT [--no-pid] [--claim-pid N]
       [--sleep] [--cuda LIB]
Prints one JSON object: pid and the requests (span id, type, and cpu_s: the CPU time
the worker thread used within the request, from the kernel's thread clock).
"""
import ctypes
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def exporter(endpoint, protocol):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        if endpoint.startswith("https://"):
            # TLS, client certificate and headers from the OTEL_EXPORTER_OTLP_* variables.
            return OTLPSpanExporter(endpoint=endpoint)
        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def burn(seconds):
    start = time.thread_time()
    x = 0
    while time.thread_time() - start < seconds:
        for i in range(2000):
            x = (x * 6364136223846793005 + i) & 0xFFFFFFFFFFFFFFFF
    return x


def gpu_work(cuda, launches, seconds):
    for _ in range(launches):
        cuda.cuLaunchKernel(None, 1, 1, 1, 1, 1, 1, 0, None, None, None)
    # The stand-in blocks for as many microseconds as the stream handle says.
    cuda.cuStreamSynchronize(ctypes.c_void_p(int(seconds * 1e6)))


def main():
    endpoint, protocol, requests, unit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    cuda = None
    if "--cuda" in sys.argv:
        cuda = ctypes.CDLL(sys.argv[sys.argv.index("--cuda") + 1])
        cuda.cuInit(0)
    resource = {"service.name": "llm-server", "service.instance.id": "test-1"}
    if "--claim-pid" in sys.argv:
        resource["process.pid"] = int(sys.argv[sys.argv.index("--claim-pid") + 1])
    elif "--no-pid" not in sys.argv:
        resource["process.pid"] = os.getpid()
    sleep = "--sleep" in sys.argv
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(BatchSpanProcessor(exporter(endpoint, protocol), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("inference")
    served = []
    lock = threading.Lock()

    def serve(i):
        kind = "big" if i % 2 == 0 else "small"
        factor = 2 if kind == "big" else 1
        with tracer.start_as_current_span("chat tiny-llama", kind=trace.SpanKind.SERVER) as span:
            cpu_start = time.thread_time_ns()
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.request.model", "tiny-llama")
            span.set_attribute("gen_ai.usage.input_tokens", 100 * factor)
            span.set_attribute("gen_ai.usage.output_tokens", 50 * factor)
            span.set_attribute("thread.native_id", threading.get_native_id())
            span.set_attribute("request.type", kind)
            span.add_event("queued")
            with tracer.start_as_current_span("decode", kind=trace.SpanKind.INTERNAL):
                if cuda is not None:
                    gpu_work(cuda, 10 * factor, unit * factor)
                elif sleep:
                    time.sleep(unit * factor)
                else:
                    burn(unit * factor)
            span_id = format(span.get_span_context().span_id, "016x")
            cpu_ns = time.thread_time_ns() - cpu_start
        with lock:
            served.append({"span_id": span_id, "type": kind, "cpu_s": cpu_ns / 1e9})

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(serve, range(requests)))
    provider.force_flush()
    provider.shutdown()
    print(json.dumps({"pid": os.getpid(), "requests": served}), flush=True)


if __name__ == "__main__":
    main()
