"""Kernel thread ids on OpenTelemetry spans, for energy-agent's per-request split.

``ThreadIdSpanProcessor`` sets ``thread.native_id`` (the kernel's id of the thread that
starts the span, ``threading.get_native_id()``) on every span when it starts. With it,
energy-agent gives each request span the CPU time of its own thread instead of
inferring the thread from timelines (``energy.split`` = ``thread``).

Zero code: installed next to ``opentelemetry-instrument``, the package adds the
processor to the global tracer provider after instrumentation (the
``opentelemetry_post_instrument`` entry point); ``ENERGY_OTEL_THREAD_ID=false`` turns
that off. With a tracer provider of your own::

    provider.add_span_processor(energy_otel.ThreadIdSpanProcessor())
"""

import os
import threading

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor

__all__ = ["ThreadIdSpanProcessor", "instrument", "THREAD_NATIVE_ID"]

#: The attribute energy-agent reads (``thread.id`` is the runtime's, not the kernel's).
THREAD_NATIVE_ID = "thread.native_id"


class ThreadIdSpanProcessor(SpanProcessor):
    """Sets ``thread.native_id`` on each span as it starts (a span that already has
    one keeps it)."""

    def on_start(self, span, parent_context=None):
        attributes = getattr(span, "attributes", None) or {}
        if THREAD_NATIVE_ID not in attributes:
            span.set_attribute(THREAD_NATIVE_ID, threading.get_native_id())

    def on_end(self, span):
        pass

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30000):
        return True


def instrument(*_args, **_kwargs):
    """Adds the processor to the global tracer provider (called by
    ``opentelemetry-instrument``); does nothing when ``ENERGY_OTEL_THREAD_ID`` is
    false or the provider takes no processors."""
    if os.environ.get("ENERGY_OTEL_THREAD_ID", "true").strip().lower() in ("0", "false", "no", "off"):
        return False
    add = getattr(trace.get_tracer_provider(), "add_span_processor", None)
    if add is None:
        return False
    add(ThreadIdSpanProcessor())
    return True
