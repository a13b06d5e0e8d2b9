"""The Jinja2 templates of every page (``service/web/templates``, one base layout), in a
module of its own: the sign-in page (:mod:`service.auth`) renders them too, and
:mod:`service.web` depends on :mod:`service.auth`, not the other way."""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi.templating import Jinja2Templates

TEMPLATES_DIR = Path(__file__).parent / "web" / "templates"

templates = Jinja2Templates(directory=TEMPLATES_DIR)
# plotly's version is in its bundle's address: a new plotly gets past browsers' week-long cache.
templates.env.globals["plotly_version"] = plotly.__version__
