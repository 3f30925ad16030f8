"""Django views next to the uploads: a page, and pytusd's numbers read in-process."""

from django.http import HttpRequest, HttpResponse, JsonResponse


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Django here. tus uploads go to /files/\n", content_type="text/plain")


def stats(request: HttpRequest) -> JsonResponse:
    from .asgi import tus  # the one TusApp of this process

    numbers = tus.metrics.snapshot()
    return JsonResponse({
        "uploads_created": numbers.uploads_created,
        "uploads_finished": numbers.uploads_finished,
        "bytes_received": numbers.bytes_received,
        "requests": dict(numbers.requests),
    })
