"""The web app (``defectwatch serve``): pages and /api over the record; see ``app``."""

from defectwatch.service.web.app import create_app
from defectwatch.service.web.server import serve

__all__ = ["create_app", "serve"]
