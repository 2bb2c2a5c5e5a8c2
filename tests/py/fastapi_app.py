"""A FastAPI app on uvicorn, traced only by zero-code instrumentation: run it under
`opentelemetry-instrument` with the OTLP exporter set by OTEL_* variables. Nothing
here touches OpenTelemetry except to read the current span's id for the test's report.

  GET /health               "ok"
  GET /work?cpu=S           a plain `def` endpoint: Starlette runs it on its thread
                            pool, which burns S seconds of CPU
  GET /wait?s=S             likewise, sleeping S seconds
  GET /async_work?cpu=S     an `async def` endpoint on the event loop that hands the
                            burn to a thread pool (run_in_executor) and awaits it
  GET /async_wait?s=S       on the event loop, awaiting asyncio.sleep

Each answer is JSON: the server span's id, and cpu_s, the CPU time the thread doing the
work used within the request (time.thread_time in that thread).

usage: fastapi_app.py PORT   (prints "ready" once listening)
"""
import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from fastapi import FastAPI
from opentelemetry import trace

from inference_server import burn

app = FastAPI()
pool = ThreadPoolExecutor(max_workers=4)


def span_id():
    return format(trace.get_current_span().get_span_context().span_id, "016x")


def timed(work):
    start = time.thread_time()
    work()
    return time.thread_time() - start


@app.get("/health")
def health():
    return "ok"


@app.get("/work")
def work(cpu: float):
    return {"span_id": span_id(), "cpu_s": timed(lambda: burn(cpu))}


@app.get("/wait")
def wait(s: float):
    return {"span_id": span_id(), "cpu_s": timed(lambda: time.sleep(s))}


@app.get("/async_work")
async def async_work(cpu: float):
    loop = asyncio.get_running_loop()
    cpu_s = await loop.run_in_executor(pool, timed, lambda: burn(cpu))
    return {"span_id": span_id(), "cpu_s": cpu_s}


@app.get("/async_wait")
async def async_wait(s: float):
    await asyncio.sleep(s)
    # It burns nothing itself (the loop's CPU meanwhile is other requests').
    return {"span_id": span_id(), "cpu_s": 0.0}


def main():
    config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    server = uvicorn.Server(config)

    def announce():
        while not server.started:
            time.sleep(0.02)
        print("ready", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.run()


if __name__ == "__main__":
    main()
