"""The ASGI entry point: pytusd serves ``/files/``, Django everything else.

Run it from examples/django_project::

    pip install pytusd django uvicorn
    uvicorn mysite.asgi:application        # or: uvicorn --app-dir examples/django_project mysite.asgi:application

Django's ASGI handler speaks HTTP only, so the ``lifespan`` events go to pytusd, which on shutdown lets open
uploads store what they received and answer 503 instead of being cut off.
"""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

from pytusd import Config, FileStore, TusApp
from pytusd.asgitypes import Receive, Scope, Send

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

django_application = get_asgi_application()  # sets Django up; settings are readable from here on

tus = TusApp(Config(store=FileStore(settings.TUS_UPLOAD_DIR), base_path=settings.TUS_BASE_PATH))
_tus_prefix = settings.TUS_BASE_PATH.rstrip("/")


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await tus(scope, receive, send)
    elif scope["type"] == "http" and (scope["path"] == _tus_prefix or scope["path"].startswith(_tus_prefix + "/")):
        await tus(scope, receive, send)
    else:
        await django_application(scope, receive, send)
