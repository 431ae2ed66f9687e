"""The cloud side of a config: credential providers, HTTP, a politeness gate, a client per project.

Every project's :class:`~notifier.dcs.client.DcsClient` shares the transport (TLS settings, proxy,
kept-alive connections), the aiohttp session (IAM tokens; the transport's when a proxy is in effect)
and the gate (concurrency per region and overall, an adaptive rate limit per
endpoint). Projects of one account share its credential provider (one IAM token cache, one watched
credentials file).
"""

from __future__ import annotations

from datetime import timedelta

from notifier.config.models import (
    AkSkCredentials,
    Config,
    FileCredentials,
    IamCredentials,
    require_credentials,
)
from notifier.dcs import credentials as providers
from notifier.dcs.client import USER_AGENT, DcsClient
from notifier.dcs.credentials import CredentialProvider
from notifier.dcs.limits import ApiGate
from notifier.dcs.transport import transport_for
from notifier.net.session import make_session


def credential_provider(
    config: AkSkCredentials | FileCredentials | IamCredentials, region: str, timeout: float
) -> CredentialProvider:
    """The provider for one ``credentials`` entry (``region`` picks the default IAM endpoint)."""
    if isinstance(config, FileCredentials):
        return providers.FileCredentials(config.path)
    if isinstance(config, IamCredentials):
        return providers.IamPasswordCredentials(
            config.endpoint_for(region),
            config.domain,
            config.user,
            config.password.get_secret_value(),
            refresh_before=timedelta(seconds=config.refresh_before),
            timeout=timeout,
        )
    if config.ak is None or config.sk is None:
        raise ValueError("AK/SK credentials without ak or sk")  # require_credentials reports it first
    token = config.security_token.get_secret_value() if config.security_token else None
    return providers.AkSkCredentials(config.ak.get_secret_value(), config.sk.get_secret_value(), token)


class Cloud:
    """Clients for every project of a config. Create inside a running event loop; ``aclose()`` when done."""

    def __init__(self, config: Config) -> None:
        require_credentials(config)
        api = config.api
        self.session = make_session(
            ca_bundle=api.ca_bundle,
            insecure_hosts=api.insecure_endpoints,
            proxy=api.proxy.get_secret_value() if api.proxy else None,
            user_agent=USER_AGENT,
        )
        self.transport = transport_for(self.session)
        self.gate = ApiGate(
            max_concurrency=api.max_concurrency,
            region_concurrency=api.region_concurrency,
            rate=api.rate_limit,
            min_rate=api.min_rate,
        )
        shared: dict[tuple[int, str], CredentialProvider] = {}
        self.clients: dict[str, DcsClient] = {}
        for spec in config.projects():
            # One provider per credentials entry (and per region, for the IAM endpoint).
            cache_key = (
                id(spec.credentials),
                spec.region if isinstance(spec.credentials, IamCredentials) else "",
            )
            provider = shared.get(cache_key)
            if provider is None:
                provider = shared[cache_key] = credential_provider(spec.credentials, spec.region, api.timeout)
            self.clients[spec.project_id] = DcsClient(
                endpoint=spec.endpoint,
                project_id=spec.project_id,
                credentials=provider,
                region=spec.region,
                timeout=api.timeout,
                page_size=api.page_size,
                max_tasks=config.poll.max_tasks,
                session=self.session,
                transport=self.transport,
                gate=self.gate,
            )

    async def aclose(self) -> None:
        await self.transport.aclose()
        await self.session.close()
