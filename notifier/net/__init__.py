"""HTTP for everything the notifier talks to: the DCS API, IAM, Slack and webhooks.

:mod:`notifier.net.session` is the one factory of sessions (:func:`~notifier.net.session.make_http`), with
the TLS policy (:mod:`notifier.net.tls`) and the proxy decision; :mod:`notifier.net.errors` words failed
calls for operators without quoting any URL.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final


def _version() -> str:
    try:
        return version("dcs-notifier")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return "0+unknown"


#: The installed package's version (``pyproject.toml``).
VERSION: Final = _version()

#: Sent with every request the notifier makes.
USER_AGENT: Final = f"dcs-notifier/{VERSION}"
