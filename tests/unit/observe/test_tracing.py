"""OpenTelemetry tracing (pytusd.observe.tracing): one span per request with store and hook children, failures
marked, nothing without a provider."""

from __future__ import annotations

import pytest

from pytusd.hooks import Hooks, HttpHookBackend, PythonHookBackend
from pytusd.observe import tracing

from tests.conftest import TUS, create, patch
from tests.unit.hooks.test_http import HookServer


# -- tracing ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def spans():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def test_one_span_per_request_with_store_and_hook_children(client_factory, spans):
    provider, exporter = spans
    server = HookServer()
    try:
        hooks = Hooks(HttpHookBackend(server.url, backoff=0.01), ("pre-create", "pre-finish"))
        client = client_factory(tracer_provider=provider, hooks=hooks)
        parent_trace = "0af7651916cd43dd8448eb211c80319c"
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "5",
                                                  "traceparent": f"00-{parent_trace}-b7ad6b7169203331-01"})
        url = r.headers["location"]
        upload_id = url.rsplit("/", 1)[1]
        await patch(client, url, 0, b"hello")
        await client.head("/files/nope")
    finally:
        server.close()
    finished = exporter.get_finished_spans()
    by_name: dict[str, list] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    [post] = by_name["POST /files/"]
    [patch_span] = by_name["PATCH /files/{id}"]
    [head] = by_name["HEAD /files/{id}"]
    assert format(post.context.trace_id, "032x") == parent_trace  # the incoming traceparent is continued
    assert post.attributes["http.method"] == "POST" and post.attributes["http.route"] == "/files/"
    assert post.attributes["http.status_code"] == 201 and post.attributes["tus.upload_id"] == upload_id
    assert patch_span.attributes["tus.upload_id"] == upload_id and patch_span.attributes["tus.offset"] == 5
    assert patch_span.attributes["http.status_code"] == 204
    assert head.attributes["http.status_code"] == 404

    def children(span):
        return sorted(s.name for s in finished if s.parent is not None and s.parent.span_id == span.context.span_id)

    assert children(post) == ["hook pre-create", "store.create"]
    assert children(patch_span) == ["hook pre-finish", "lock.acquire", "store.finish", "store.get", "store.write"]
    [write] = by_name["store.write"]
    assert write.attributes["tus.store.operation"] == "write" and write.attributes["tus.upload_id"] == upload_id
    # the HTTP hook got its span's context
    hook_span = by_name["hook pre-finish"][0]
    traceparents = [h.get("traceparent") for h, body in server.requests if body["Type"] == "pre-finish"]
    context = f"00-{format(hook_span.context.trace_id, '032x')}-{format(hook_span.context.span_id, '016x')}-"
    assert len(traceparents) == 1 and traceparents[0].startswith(context)


async def test_failed_requests_mark_the_span(client_factory, spans):
    provider, exporter = spans

    async def hook(hook_type, request):
        raise RuntimeError("down")

    client = client_factory(tracer_provider=provider, hooks=Hooks(PythonHookBackend(hook), ("pre-create",)))
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "1"})).status_code == 500
    [span] = [s for s in exporter.get_finished_spans() if s.name == "POST /files/"]
    assert not span.status.is_ok and span.attributes["http.status_code"] == 500


async def test_no_spans_without_a_provider(client, monkeypatch):
    assert not client.app.tracing.active  # no tracer provider given and no global one set
    # and without opentelemetry at all, everything still works
    monkeypatch.setattr(tracing, "trace", None)
    assert tracing.Tracing().tracer() is None
    assert tracing.Tracing().span("x") is tracing.NOTHING
    url = await create(client, 1)
    assert (await patch(client, url, 0, b"x")).status_code == 204
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}


def test_a_request_resolves_its_tracer_once_and_only_for_its_own_tracing(spans, monkeypatch):
    """for_request resolves the tracer once for the request's context: the request's spans use it, another
    Tracing in the same context still asks its own provider, and after request_done nothing is left behind."""
    provider, _ = spans
    traced, untraced = tracing.Tracing(provider), tracing.Tracing()
    assert untraced.tracer() is None and traced.tracer() is not None

    calls = []
    resolve = tracing.Tracing._resolve

    def counting(self):
        calls.append(self)
        return resolve(self)

    monkeypatch.setattr(tracing.Tracing, "_resolve", counting)
    token = traced.for_request()
    for _ in range(5):
        assert traced.tracer() is not None
    assert calls == [traced]  # once, at the start of the request
    assert untraced.tracer() is None and calls == [traced, untraced]  # not the request's Tracing: its own
    traced.request_done(token)
    traced.tracer()
    assert calls == [traced, untraced, traced]  # outside the request: asked again
