"""Which TLS certificates to trust, and which hosts not to verify at all.

Certificates are verified against the system trust store (OpenSSL's defaults, so ``SSL_CERT_FILE`` and
``SSL_CERT_DIR`` are honoured), plus a PEM bundle (``ca_bundle``) when one is configured. Verification is
off only for the hosts listed (``api.insecure_endpoints``), and only for requests made with
``ssl=policy.ssl_for(url)``: a request made without it is verified all the same, so forgetting it fails
safe.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator
from yarl import URL

from notifier.errors import ConfigError


def _host_key(host: str, port: int | None) -> str:
    host = host.strip().strip("[]").rstrip(".").lower()
    return host if port is None else f"{host}:{port}"


def _parse_host_entry(entry: str) -> str:
    """``host``, ``host:port``, ``[v6]:port``, bare ``v6`` or a URL -> ``host`` or ``host:port``."""
    text = entry.strip()
    if not text:
        raise ConfigError("api.insecure_endpoints: empty entry")
    if "://" in text:
        url = URL(text)
        if not url.host:
            raise ConfigError("api.insecure_endpoints: an entry is a URL without a host")
        return _host_key(url.host, url.explicit_port)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:  # a name, an IPv4 address or a bare IPv6 address
        host, port = text, ""
    if port and not port.isdigit():
        raise ConfigError(f"api.insecure_endpoints: bad port in {text!r}")
    return _host_key(host, int(port) if port else None)


def _existing_ca_bundle(path: Path) -> Path:
    """The file must hold PEM CA certificates now: a mistake is a config error, not a failed send later."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file (a PEM file of CA certificates)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except ssl.SSLError:
        raise ValueError(f"{path}: not a PEM file of CA certificates") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return path


#: A ``ca_bundle`` setting (``api.``, ``channels.<name>.``): a PEM file of CA certificates that exists.
CaBundle = Annotated[Path, AfterValidator(_existing_ca_bundle)]


def check_host_entry(entry: str) -> None:
    """Raise ValueError when an ``api.insecure_endpoints`` entry cannot be understood (config checks)."""
    try:
        _parse_host_entry(entry)
    except (ConfigError, ValueError) as exc:
        raise ValueError(str(exc).removeprefix("api.insecure_endpoints: ")) from None


def ca_hint(setting: str) -> str:
    """What fixes an untrusted certificate, for the settings at ``setting`` (``api``, ``channels.x``)."""
    if setting == "api":
        return "set api.ca_bundle, or list the endpoint in api.insecure_endpoints"
    return f"set {setting}.ca_bundle to a PEM file of the CA that signed it"


@dataclass(frozen=True)
class TlsPolicy:
    """Which certificates to trust, and which hosts not to verify at all.

    ``setting`` is where these come from in the config (``api``, ``channels.oncall``): errors about an
    untrusted certificate name the keys that fix it.
    """

    context: ssl.SSLContext
    insecure_hosts: frozenset[str]
    setting: str = "api"

    @classmethod
    def build(
        cls, ca_bundle: Path | None = None, insecure_hosts: Collection[str] = (), *, setting: str = "api"
    ) -> TlsPolicy:
        context = ssl.create_default_context()  # system store; SSL_CERT_FILE / SSL_CERT_DIR apply
        if ca_bundle is not None:
            key = f"{setting}.ca_bundle {ca_bundle}"
            try:
                context.load_verify_locations(cafile=str(ca_bundle))
            except FileNotFoundError:
                raise ConfigError(f"{key}: no such file") from None
            except OSError as exc:
                if isinstance(exc, ssl.SSLError):
                    msg = f"{key}: not a PEM file of CA certificates"
                else:
                    msg = f"{key}: cannot read it ({exc.strerror or exc})"
                raise ConfigError(msg) from None
        return cls(context, frozenset(_parse_host_entry(h) for h in insecure_hosts), setting)

    @property
    def hint(self) -> str:
        """What fixes an untrusted certificate (said in every such error)."""
        return ca_hint(self.setting)

    def verifies(self, host: str, port: int | None = None) -> bool:
        """Whether certificates of ``host`` (on ``port``) are verified."""
        if _host_key(host, None) in self.insecure_hosts:
            return False
        return port is None or _host_key(host, port) not in self.insecure_hosts

    def ssl_for(self, url: str | URL) -> ssl.SSLContext | bool:
        """The ``ssl=`` argument for a request to ``url``: the verifying context, or False."""
        u = url if isinstance(url, URL) else URL(url)
        if u.host is not None and not self.verifies(u.host, u.port):
            return False
        return self.context
