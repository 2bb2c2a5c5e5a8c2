"""A threaded Flask app, traced only by zero-code instrumentation: run it under
`opentelemetry-instrument` with the OTLP exporter set by OTEL_* variables. Nothing
here touches OpenTelemetry except to read the current span's id for the test's report.

Werkzeug's threaded server serves each request on a thread of its own.

  GET /health            "ok"
  GET /work?cpu=S        burns S seconds of its thread's CPU
  GET /wait?s=S          sleeps S seconds (a request waiting on a backend or a GPU)

Each answer is JSON: the server span's id, and cpu_s, the CPU time the serving thread
used within the request (the kernel's thread clock, time.thread_time).

usage: flask_app.py PORT   (prints "ready" once listening)
"""
import sys
import time

from flask import Flask, jsonify, request
from opentelemetry import trace
from werkzeug.serving import make_server

from inference_server import burn

app = Flask(__name__)


def answer(work):
    start = time.thread_time()
    work()
    cpu_s = time.thread_time() - start
    span_id = format(trace.get_current_span().get_span_context().span_id, "016x")
    return jsonify({"span_id": span_id, "cpu_s": cpu_s})


@app.get("/health")
def health():
    return "ok"


@app.get("/work")
def work():
    return answer(lambda: burn(float(request.args["cpu"])))


@app.get("/wait")
def wait():
    return answer(lambda: time.sleep(float(request.args["s"])))


def main():
    server = make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True)
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
