"""The cloud side of a config: credential providers, HTTP, a politeness gate, a client per project.

Every project's :class:`~notifier.dcs.client.DcsClient` shares one :class:`~notifier.net.session.Http`
(the long-lived aiohttp session with the ``api.`` TLS settings and proxy; IAM token requests use it too)
and the gate (concurrency per region and overall, an adaptive rate limit per endpoint). Projects of one
account share its credential provider (one IAM token cache, one watched credentials file).
"""

from __future__ import annotations

from datetime import timedelta

from notifier.cloudeye.client import CloudEyeClient
from notifier.config.env import require_credentials
from notifier.config.models import (
    AkSkCredentialsConfig,
    Config,
    FileCredentialsConfig,
    IamCredentialsConfig,
)
from notifier.dcs import credentials as providers
from notifier.dcs.client import DcsClient
from notifier.dcs.credentials import CredentialProvider
from notifier.dcs.endpoint import ApiEndpoint
from notifier.dcs.limits import ApiGate
from notifier.net.session import make_http


def credential_provider(
    config: AkSkCredentialsConfig | FileCredentialsConfig | IamCredentialsConfig, region: str, timeout: float
) -> CredentialProvider:
    """The provider for one ``credentials`` entry (``region`` picks the default IAM endpoint)."""
    if isinstance(config, FileCredentialsConfig):
        return providers.FileCredentials(config.path)
    if isinstance(config, IamCredentialsConfig):
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
        self.http = make_http(
            setting="api",
            ca_bundle=api.ca_bundle,
            insecure_hosts=api.insecure_endpoints,
            proxy=api.proxy.get_secret_value() if api.proxy else None,
        )
        self.gate = ApiGate(
            max_concurrency=api.max_concurrency,
            region_concurrency=api.region_concurrency,
            rate=api.rate_limit,
            min_rate=api.min_rate,
        )
        shared: dict[tuple[int, str], CredentialProvider] = {}
        self.clients: dict[str, DcsClient] = {}
        #: Each project's Cloud Eye client (``cloud_eye.enabled``).
        self.cloud_eye: dict[str, CloudEyeClient] = {}
        for spec in config.projects():
            # One provider per credentials entry (and per region, for the IAM endpoint).
            cache_key = (
                id(spec.credentials),
                spec.region if isinstance(spec.credentials, IamCredentialsConfig) else "",
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
                http=self.http,
                gate=self.gate,
            )
            if config.cloud_eye.enabled:
                # Cloud Eye with the same credentials, session and gate (its own rate limit: another host).
                self.cloud_eye[spec.project_id] = CloudEyeClient(
                    ApiEndpoint(
                        endpoint=spec.ces_endpoint,
                        project_id=spec.project_id,
                        credentials=provider,
                        region=spec.region,
                        timeout=api.timeout,
                        http=self.http,
                        gate=self.gate,
                        service="Cloud Eye",
                    )
                )

    async def aclose(self) -> None:
        await self.http.aclose()
