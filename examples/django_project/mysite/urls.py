"""Django's own routes. The upload routes (``/files/``) never reach Django: asgi.py sends them to pytusd."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("uploads/stats", views.stats),
]
