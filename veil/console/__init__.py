"""The web console: audit explorer, data-subject requests, reports and policies, in a browser.

Server-rendered HTML (Starlette and Jinja2), no JavaScript, nothing fetched from elsewhere. It is
served by ``veil console --config veil.yaml`` or mounted under ``/console`` by ``veil serve
--http``; either way it authenticates with the gateway's identities (``veil.auth``), needs an
``admin``, ``security`` or ``compliance`` role, and records every request in the audit trail.
"""

from veil.console.app import create_app
from veil.console.services import ConsoleServices

__all__ = ["ConsoleServices", "create_app"]
