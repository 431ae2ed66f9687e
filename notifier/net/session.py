"""The one way to make an HTTP session: :func:`make_http` builds an :class:`Http` — the aiohttp session,
its TLS policy and its proxy decision, made together and handed around as one value.

Every caller gets its session here: the DCS client and IAM token requests (one ``Http`` for the cloud
side, from ``api.ca_bundle`` / ``api.insecure_endpoints`` / ``api.proxy``) and each channel (its own, from
the channel's ``ca_bundle`` / ``proxy`` and its capped answers, refused redirects and timeout). Each
session:

* verifies TLS certificates against the system trust store plus ``ca_bundle`` (see
  :mod:`notifier.net.tls`); hosts listed as insecure are not verified, for requests made with
  ``ssl=http.ssl_for(url)`` only — every other request is verified;
* goes through ``proxy`` when one is configured (its credentials sent as ``Proxy-Authorization`` and
  kept out of every URL aiohttp could quote in an exception), else through ``HTTPS_PROXY`` /
  ``HTTP_PROXY`` from the environment minus ``NO_PROXY`` — looked up per request by aiohttp, so only when
  some ``*_proxy`` variable is set at all (the variables do not change while the process runs);
* keeps no cookies, and sends ``User-Agent: dcs-notifier/<version>``.

Keep redirects off (``allow_redirects=False``): aiohttp would carry the ``ssl=`` of the first host over
to the host a redirect points to. No URL is ever logged or put into an error message here: name hosts
with :func:`~notifier.net.errors.describe_client_error` / :func:`~notifier.redaction.redact_url`.
"""

from __future__ import annotations

import logging
import ssl
import urllib.request
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from notifier.errors import ConfigError
from notifier.net import USER_AGENT
from notifier.net.tls import TlsPolicy
from notifier.redaction import redact_url

log = logging.getLogger(__name__)

#: ``ProxyChoice.setting`` of proxies taken from the environment.
ENVIRONMENT = "environment (HTTPS_PROXY / HTTP_PROXY / NO_PROXY)"


@dataclass(frozen=True)
class ProxyChoice:
    """Where requests go through: a configured proxy, or the environment's proxies."""

    #: ``api.proxy``, ``channels.<name>.proxy``, or :data:`ENVIRONMENT`.
    setting: str
    #: The configured proxy without its credentials; None for the environment's (chosen per destination).
    url: URL | None = None
    with_credentials: bool = False

    def __str__(self) -> str:
        if self.url is None:
            return self.setting
        return redact_url(self.url, path=False) + (" (with credentials)" if self.with_credentials else "")


@dataclass(frozen=True, eq=False)
class Http:
    """An aiohttp session with the TLS policy and the proxy decision it was made with.

    Make it with :func:`make_http` inside the running event loop; ``aclose()`` it when done.
    """

    session: aiohttp.ClientSession
    tls: TlsPolicy
    #: None: requests go straight to their destination.
    proxy: ProxyChoice | None

    def ssl_for(self, url: str | URL) -> ssl.SSLContext | bool:
        """The ``ssl=`` argument for a request to ``url``: the verifying context, or False (listed host)."""
        return self.tls.ssl_for(url)

    @property
    def closed(self) -> bool:
        return self.session.closed

    async def aclose(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Http:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def check_proxy_url(proxy: str) -> None:
    """Raise ValueError (naming the scheme at most: the URL may hold a password) unless ``proxy`` is an
    ``http://`` or ``https://`` URL with a host."""
    _split_proxy(proxy)


def _split_proxy(proxy: str) -> tuple[URL, aiohttp.BasicAuth | None]:
    """The proxy URL without credentials (nor path or query), and the credentials apart."""
    try:
        url = URL(proxy)
        host = url.host
    except (ValueError, TypeError):
        raise ValueError("not a URL") from None
    if url.scheme not in ("http", "https") or not host:
        # The URL itself may hold a password: name only its scheme.
        raise ValueError(f"need an http:// or https:// URL with a host, got scheme {url.scheme!r}")
    bare = url.with_user(None).with_password(None).with_path("").with_query(None).with_fragment(None)
    if url.user is None and url.password is None:
        return bare, None
    with warnings.catch_warnings():
        # aiohttp 3.13+ deprecates BasicAuth and proxy_auth (for aiohttp 4) in favour of per-request
        # proxy_headers, which reach CONNECT tunnels only. A session-wide proxy_auth is still the one way to
        # authenticate both plain requests and tunnels while keeping the password out of the proxy URL,
        # which aiohttp quotes in ClientHttpProxyError messages.
        warnings.filterwarnings("ignore", message=r".*BasicAuth.* deprecated", category=DeprecationWarning)
        return bare, aiohttp.BasicAuth(url.user or "", url.password or "")


def environment_has_proxies() -> bool:
    """Whether ``*_proxy`` variables name a proxy (``NO_PROXY`` alone names none)."""
    return any(scheme != "no" for scheme in urllib.request.getproxies())


def environment_proxy_problems() -> list[str]:
    """What is wrong with the environment's ``HTTP_PROXY`` / ``HTTPS_PROXY`` (never quoting them): a value
    without ``http://`` (``proxy.corp:3128``, which curl accepts) fails every request sent through it."""
    problems = []
    for scheme, value in sorted(urllib.request.getproxies().items()):
        if scheme in ("http", "https"):
            try:
                _split_proxy(value)
            except ValueError:  # not even its scheme is quoted: without "://" it is the user name
                problems.append(f"{scheme.upper()}_PROXY is not an http:// or https:// URL with a host")
    return problems


def make_http(
    *,
    setting: str = "api",
    ca_bundle: Path | None = None,
    insecure_hosts: Collection[str] = (),
    proxy: str | None = None,
    trust_env: bool = True,
    timeout: float | None = None,
    limit: int = 100,
    response_class: type[aiohttp.ClientResponse] | None = None,
    middlewares: Sequence[aiohttp.ClientMiddlewareType] = (),
    user_agent: str = USER_AGENT,
) -> Http:
    """The session, TLS policy and proxy decision for the settings at ``setting`` (``api``,
    ``channels.<name>``: errors name its keys). Call it inside the running event loop.

    ``proxy`` overrides the environment's proxies (and ``NO_PROXY``); ``trust_env=False`` ignores the
    environment's. ``timeout``: seconds per request (aiohttp's default when None). ``response_class`` and
    ``middlewares`` go to the session as they are.
    """
    policy = TlsPolicy.build(ca_bundle, insecure_hosts, setting=setting)
    proxy_url: URL | None = None
    proxy_auth: aiohttp.BasicAuth | None = None
    if proxy:
        try:
            proxy_url, proxy_auth = _split_proxy(proxy)
        except ValueError as exc:
            raise ConfigError(f"{setting}.proxy: {exc}") from None
    # aiohttp looks the environment's proxies up on every request (a thread hop each): only when some
    # *_proxy variable is set is that worth it.
    from_env = trust_env and proxy_url is None and environment_has_proxies()
    choice: ProxyChoice | None = None
    if proxy_url is not None:
        choice = ProxyChoice(f"{setting}.proxy", proxy_url, proxy_auth is not None)
    elif from_env:
        choice = ProxyChoice(ENVIRONMENT)
    options: dict[str, Any] = {}
    if timeout is not None:
        options["timeout"] = aiohttp.ClientTimeout(total=timeout)
    if response_class is not None:
        options["response_class"] = response_class
    if middlewares:
        options["middlewares"] = tuple(middlewares)
    with warnings.catch_warnings():
        # See _split_proxy: the session-wide proxy_auth is deprecated in aiohttp 3.13+. (No await here.)
        warnings.filterwarnings("ignore", message=r".*proxy_auth.* deprecated", category=DeprecationWarning)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=policy.context),
            headers={"User-Agent": user_agent},
            proxy=proxy_url,
            proxy_auth=proxy_auth,
            trust_env=from_env,
            cookie_jar=aiohttp.DummyCookieJar(),  # nothing we call sets cookies worth keeping
            **options,
        )
    if policy.insecure_hosts:
        log.warning(
            "%s: TLS certificate verification is OFF for: %s",
            setting,
            ", ".join(sorted(policy.insecure_hosts)),
        )
    if choice is not None and choice.url is not None:
        log.info("%s: HTTP proxy %s", setting, choice)
    elif choice is not None:
        log.debug("%s: HTTP proxy from the %s", setting, ENVIRONMENT)
        for problem in environment_proxy_problems():
            log.warning(
                "%s: unusable proxy in the environment (requests through it fail): %s", setting, problem
            )
    return Http(session, policy, choice)
