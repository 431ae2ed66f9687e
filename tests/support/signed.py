"""A test's own signed call to the simulator (what a client of the DCS or Cloud Eye API would send)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from notifier.dcs.signer import canonical_query, sign
from notifier.devtools.simulator import Simulator


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


async def call(
    session: aiohttp.ClientSession,
    sim: Simulator,
    path: str,
    params: Sequence[tuple[str, str]] = (),
    *,
    ak: str,
    sk: str,
    project_header: str,
    now: datetime | None = None,
    within: float = 5.0,
) -> Answer:
    """``GET path?params`` signed with ``ak``/``sk`` (SDK-HMAC-SHA256), the query canonical as signed."""
    assert sim.base_url is not None
    query = canonical_query(params)
    url = f"{sim.base_url}{path}" + (f"?{query}" if query else "")
    headers = {
        "Content-Type": "application/json",
        "X-Project-Id": project_header,
        "Host": urlsplit(sim.base_url).netloc,
        "User-Agent": "dcs-notifier-tests",
    }
    signed = sign("GET", url, headers, ak=ak, sk=sk, now=now)
    client_timeout = aiohttp.ClientTimeout(total=within)
    async with session.get(URL(url, encoded=True), headers=signed, timeout=client_timeout) as resp:
        return Answer(resp.status, CIMultiDict(resp.headers), await resp.text())
