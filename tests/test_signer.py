"""Our signer against the official huaweicloudsdkcore signer, byte for byte, and the verifier."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials  # type: ignore[import-untyped]
from huaweicloudsdkcore.http.http_client import HttpClient  # type: ignore[import-untyped]
from huaweicloudsdkcore.http.http_config import HttpConfig  # type: ignore[import-untyped]
from huaweicloudsdkcore.sdk_request import SdkRequest  # type: ignore[import-untyped]
from huaweicloudsdkcore.signer.signer import Signer  # type: ignore[import-untyped]

from notifier.dcs.signer import (
    SignatureError,
    SignatureProblem,
    canonical_query,
    canonical_uri,
    sign,
    verify,
)

AK = "HPUAEXAMPLEAK0000001"
SK = "sk-Example/Secret+Key=0123456789abcdef"
PROJECT = "a4d31cb63d724fdc8ec96e3a41e47f71"
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
SDK_DATE = "20240102T030405Z"
BASE_HEADERS = {
    "Content-Type": "application/json",
    "X-Project-Id": PROJECT,
    "User-Agent": "huaweicloud-usdk-python/3.0; dcs-notifier/0.1",
}


@dataclass(frozen=True)
class Case:
    id: str
    method: str = "GET"
    schema: str = "http"
    host: str = "127.0.0.1:8080"
    path: str = f"/v2/{PROJECT}/instances/5560df16-cebf-4473-95c4-d1b573c16e79/tasks"
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=lambda: dict(BASE_HEADERS))
    body: bytes = b""
    host_header: bool = True


CASES = [
    Case("plain-get-no-query"),
    Case(
        "paging-and-times",
        query=[
            ("offset", "0"),
            ("limit", "100"),
            ("start_time", "20200609160000"),
            ("end_time", "20200617155959"),
        ],
    ),
    Case("repeated-keys-sorted-by-value", query=[("tag", "b"), ("tag", "a"), ("a", "2"), ("a", "10")]),
    Case("empty-value", query=[("name", ""), ("offset", "5")]),
    Case("query-needing-encoding", query=[("na me", "x y/z+1&=2~ok"), ("é", "ünï")]),
    Case("path-needing-encoding", path=f"/v2/{PROJECT}/instances/a%20b~c%2Bd%C3%A9/tasks"),
    Case("path-trailing-slash", path=f"/v2/{PROJECT}/instances/"),
    Case(
        "security-token-and-underscore-header",
        headers={**BASE_HEADERS, "X-Security-Token": "tok en==", "X_Custom_Thing": "not-signed"},
    ),
    Case("header-values-trimmed", headers={**BASE_HEADERS, "X-Extra": "  padded value \t"}),
    Case("host-without-port", schema="https", host="dcs.cn-north-4.myhuaweicloud.com"),
    Case("host-from-url-when-absent", host="127.0.0.1:18443", host_header=False),
    Case(
        "post-with-json-body",
        method="POST",
        path=f"/v2/{PROJECT}/instances/iid/whitelist",
        body=b'{"enable_whitelist": true, "whitelist": [{"group_name": "g1"}]}',
        query=[("x", "1")],
    ),
    Case(
        "put-non-json-body-unsigned-payload",
        method="PUT",
        path="/v2/objects/o",
        headers={**BASE_HEADERS, "Content-Type": "text/plain"},
        body=b"hello",
    ),
    Case("lowercase-method", method="get", query=[("offset", "1")]),
]


def _official(case: Case) -> SdkRequest:
    headers = dict(case.headers)
    if case.host_header:
        headers["Host"] = case.host
    headers["X-Sdk-Date"] = SDK_DATE
    request = SdkRequest(
        method=case.method,
        schema=case.schema,
        host=case.host,
        resource_path=case.path,
        query_params=list(case.query),
        header_params=headers,
        body=case.body or None,
    )
    return Signer(BasicCredentials(AK, SK, PROJECT)).sign(request)


def _ours(case: Case) -> tuple[str, dict[str, str]]:
    headers = dict(case.headers)
    if case.host_header:
        headers["Host"] = case.host
    query = canonical_query(case.query)
    url = f"{case.schema}://{case.host}{case.path}" + (f"?{query}" if query else "")
    return url, sign(case.method, url, headers, case.body, ak=AK, sk=SK, now=NOW)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_authorization_identical_to_official_signer(case: Case) -> None:
    official = _official(case)
    url, ours = _ours(case)
    assert ours["Authorization"] == official.header_params["Authorization"]
    assert ours["X-Sdk-Date"] == SDK_DATE
    # The full header set we send is the one the SDK sends (values trimmed, Host added when absent).
    assert ours == dict(official.header_params)
    # The URL we send is the URL the SDK sends, so what is signed is what goes on the wire.
    assert url == official.url


def test_signature_changes_with_every_input() -> None:
    base = Case("base", query=[("offset", "0")])
    _, reference = _ours(base)
    variants = [
        Case("q", query=[("offset", "1")]),
        Case("m", method="DELETE", query=[("offset", "0")]),
        Case("p", path="/v2/other/instances/x/tasks", query=[("offset", "0")]),
        Case("h", query=[("offset", "0")], headers={**BASE_HEADERS, "X-Project-Id": "other"}),
        Case("b", query=[("offset", "0")], body=b"{}"),
    ]
    for variant in variants:
        assert _ours(variant)[1]["Authorization"] != reference["Authorization"], variant.id


def test_authorization_header_shape() -> None:
    _, headers = _ours(CASES[0])
    assert headers["Authorization"].startswith(
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, "
        "Signature="
    )
    assert len(headers["Authorization"].rsplit("Signature=", 1)[1]) == 64


def test_sign_returns_new_dict_and_defaults_to_now() -> None:
    original = {"Host": "127.0.0.1:1", "Content-Type": "application/json"}
    before = datetime.now(UTC).replace(microsecond=0)
    out = sign("GET", "http://127.0.0.1:1/v2/p/instances", original, ak=AK, sk=SK)
    after = datetime.now(UTC)
    assert original == {"Host": "127.0.0.1:1", "Content-Type": "application/json"}
    stamped = datetime.strptime(out["X-Sdk-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert before <= stamped <= after


def test_sign_requires_keys_and_never_leaks_sk() -> None:
    with pytest.raises(ValueError, match="required") as excinfo:
        sign("GET", "http://127.0.0.1/", {}, ak=AK, sk="")
    assert SK not in str(excinfo.value)
    out = sign("GET", "http://127.0.0.1/", {}, ak=AK, sk=SK, now=NOW)
    assert all(SK not in value for value in out.values())


def test_canonical_helpers() -> None:
    assert canonical_query({"limit": "10", "offset": "0"}) == "limit=10&offset=0"
    assert canonical_query([("b", "2"), ("a", "z"), ("a", "y")]) == "a=y&a=z&b=2"
    assert canonical_query([("k", "a b+c/~")]) == "k=a%20b%2Bc%2F~"
    assert canonical_query([]) == ""
    assert canonical_uri("/v2/p/instances/a%20b") == "/v2/p/instances/a%20b/"
    assert canonical_uri("/v2/p/instances/a b") == "/v2/p/instances/a%20b/"
    assert canonical_uri("/") == "/"


# --- verify ---------------------------------------------------------------------------------------------


def _received(case: Case) -> tuple[str, str, list[tuple[str, str]], dict[str, str], bytes]:
    """What a server sees: method, path, decoded query pairs, headers, body."""
    url, headers = _ours(case)
    parts = urlsplit(url)
    return case.method, parts.path, parse_qsl(parts.query, keep_blank_values=True), headers, case.body


def _lookup(ak: str) -> str | None:
    return {AK: SK}.get(ak)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_verify_accepts_what_sign_produced(case: Case) -> None:
    method, path, query, headers, body = _received(case)
    result = verify(method, path, query, headers, body, _lookup)
    assert result.ak == AK
    assert result.signed_at == NOW
    assert "host" in result.signed_headers
    assert "x_custom_thing" not in result.signed_headers


def test_verify_accepts_official_sdk_signature() -> None:
    case = CASES[1]
    official = _official(case)
    verify(case.method, case.path, case.query, official.header_params, case.body, _lookup)


def _problem(*args: object, **kwargs: object) -> SignatureProblem:
    with pytest.raises(SignatureError) as excinfo:
        verify(*args, **kwargs)  # type: ignore[arg-type]
    assert SK not in str(excinfo.value)
    assert SK not in repr(excinfo.value)
    return excinfo.value.problem


def test_verify_rejects_wrong_sk() -> None:
    method, path, query, headers, body = _received(CASES[1])
    assert (
        _problem(method, path, query, headers, body, lambda ak: "another-secret") is SignatureProblem.MISMATCH
    )


def test_verify_rejects_unknown_ak() -> None:
    method, path, query, headers, body = _received(CASES[1])
    assert _problem(method, path, query, headers, body, lambda ak: None) is SignatureProblem.UNKNOWN_AK


def test_verify_rejects_tampered_query_path_header_body() -> None:
    method, path, query, headers, body = _received(CASES[1])
    tampered_query = [(k, "999" if k == "limit" else v) for k, v in query]
    assert _problem(method, path, tampered_query, headers, body, _lookup) is SignatureProblem.MISMATCH
    assert _problem(method, path + "x", query, headers, body, _lookup) is SignatureProblem.MISMATCH
    assert _problem("DELETE", path, query, headers, body, _lookup) is SignatureProblem.MISMATCH
    other = {**headers, "X-Project-Id": "someone-else"}
    assert _problem(method, path, query, other, body, _lookup) is SignatureProblem.MISMATCH
    assert _problem(method, path, query, headers, b"{}", _lookup) is SignatureProblem.MISMATCH


def test_verify_rejects_missing_or_malformed_headers() -> None:
    method, path, query, headers, body = _received(CASES[1])
    no_auth = {k: v for k, v in headers.items() if k != "Authorization"}
    assert _problem(method, path, query, no_auth, body, _lookup) is SignatureProblem.MISSING
    no_date = {k: v for k, v in headers.items() if k != "X-Sdk-Date"}
    assert _problem(method, path, query, no_date, body, _lookup) is SignatureProblem.MISSING
    no_signed_header = {k: v for k, v in headers.items() if k != "X-Project-Id"}
    assert _problem(method, path, query, no_signed_header, body, _lookup) is SignatureProblem.MALFORMED
    garbled = {**headers, "Authorization": "Bearer abc"}
    assert _problem(method, path, query, garbled, body, _lookup) is SignatureProblem.MALFORMED
    bad_date = {**headers, "X-Sdk-Date": "2024-01-02T03:04:05Z"}
    assert _problem(method, path, query, bad_date, body, _lookup) is SignatureProblem.MALFORMED


def test_verify_clock_skew() -> None:
    method, path, query, headers, body = _received(CASES[1])
    skew = timedelta(minutes=15)
    verify(method, path, query, headers, body, _lookup, now=NOW + timedelta(minutes=14), max_skew=skew)
    late = {"now": NOW + timedelta(minutes=16), "max_skew": skew}
    assert _problem(method, path, query, headers, body, _lookup, **late) is SignatureProblem.EXPIRED


# --- temporary credentials (X-Security-Token) -----------------------------------------------------------

SECURITY_TOKEN = "gQpjbi1ub3J0aC00+temporary/Security=Token_0123456789"


def test_security_token_identical_to_official_temporary_credentials() -> None:
    """``BasicCredentials(...).with_security_token(t).process_auth_request(request, http_client)``."""
    case = CASES[1]  # a GET with a query
    headers = {**case.headers, "Host": case.host, "X-Sdk-Date": SDK_DATE}
    request = SdkRequest(
        method=case.method,
        schema=case.schema,
        host=case.host,
        resource_path=case.path,
        query_params=list(case.query),
        header_params=dict(headers),
        body=None,
    )
    credentials = BasicCredentials(AK, SK, PROJECT).with_security_token(SECURITY_TOKEN)
    http_client = HttpClient(HttpConfig.get_default_config(), None, None, logging.getLogger("sdk-peer"))
    try:
        official = credentials.process_auth_request(request, http_client).result(timeout=10)
    finally:
        http_client.close()
        http_client.executor.shutdown(wait=True)

    query = canonical_query(case.query)
    url = f"{case.schema}://{case.host}{case.path}?{query}"
    ours = sign(case.method, url, headers, b"", ak=AK, sk=SK, security_token=SECURITY_TOKEN)
    for name in ("Authorization", "X-Sdk-Date", "X-Security-Token"):
        assert ours[name].encode() == official.header_params[name].encode(), name
    assert ours == dict(official.header_params)
    assert "x-security-token" in ours["Authorization"].split("SignedHeaders=", 1)[1].split(",", 1)[0]
    assert url == official.url


def test_security_token_is_signed_and_replaces_a_given_one() -> None:
    url = "http://127.0.0.1:8080/v2/p/instances?limit=1"
    given = {**BASE_HEADERS, "x-security-token": "stale"}
    out = sign("GET", url, given, ak=AK, sk=SK, now=NOW, security_token=SECURITY_TOKEN)
    assert [k for k in out if k.lower() == "x-security-token"] == ["X-Security-Token"]
    assert out["X-Security-Token"] == SECURITY_TOKEN
    result = verify("GET", "/v2/p/instances", [("limit", "1")], out, b"", _lookup)
    assert "x-security-token" in result.signed_headers
    tampered = {**out, "X-Security-Token": SECURITY_TOKEN + "x"}
    assert _problem("GET", "/v2/p/instances", [("limit", "1")], tampered, b"", _lookup) is (
        SignatureProblem.MISMATCH
    )
    without = sign("GET", url, BASE_HEADERS, ak=AK, sk=SK, now=NOW)
    assert "X-Security-Token" not in without
    assert without["Authorization"] != out["Authorization"]
    with pytest.raises(ValueError, match="security_token") as excinfo:
        sign("GET", url, BASE_HEADERS, ak=AK, sk=SK, security_token="")
    assert SK not in str(excinfo.value)


def test_a_canonical_query_is_signed_as_it_is() -> None:
    query = canonical_query([("start_time", "20240101000000"), ("offset", "0"), ("na me", "x/y")])
    url = f"http://127.0.0.1:8080/v2/{PROJECT}/instances/i%20d/tasks?{query}"
    headers = {**BASE_HEADERS, "X-Sdk-Date": SDK_DATE}
    fast = sign("GET", url, headers, ak=AK, sk=SK, query_is_canonical=True)
    assert fast == sign("GET", url, headers, ak=AK, sk=SK)
