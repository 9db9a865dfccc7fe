"""The leukoscope web app: upload page, history, JSON API (FastAPI + SQLite).

`create_app(settings, predictor=None)` builds the ASGI app; `leukoscope serve` runs it with uvicorn.
"""

from __future__ import annotations

from leukoscope.serve.app import create_app
from leukoscope.serve.settings import Settings, check_exposure

__all__ = ["Settings", "check_exposure", "create_app"]
