"""A minimal Django project serving tus uploads with pytusd next to its own views (see asgi.py)."""
