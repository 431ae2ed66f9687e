"""The short ways of writing ``cloud``, rewritten into the fleet form before validation.

- The one-project short form, the common case::

      cloud: {region, endpoint, ces_endpoint, project_id, ak, sk, security_token, timeout, page_size,
              max_concurrency}
      instances: [...]

  becomes one account (``region``) with AK/SK credentials and one project (``project_id``, ``endpoint``,
  ``instances``); ``timeout``, ``page_size`` and ``max_concurrency`` go to ``api``.
- One account written as a mapping (``cloud: {name, credentials, projects}``) becomes a list of one.

Each move is recorded in the :class:`~notifier.config.source.SourceMap` as it is made, so that validation
errors name the keys as written (``cloud.project_id``, not ``cloud.0.projects.0.project_id``). What only the
short form can get wrong (an unknown key in it, a key also set in ``api``) is found here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from notifier.config.models import AccountConfig
from notifier.config.source import Loc, Problem, SourceMap, unknown_key

_PROJECT_KEYS = ("project_id", "endpoint", "ces_endpoint")
_CREDENTIAL_KEYS = ("ak", "sk", "security_token")
_API_KEYS = ("timeout", "page_size", "max_concurrency")
_ACCOUNT_KEYS = tuple(k for k in AccountConfig.model_fields if k != "projects")
#: Every key of the short form's ``cloud``.
SHORT_FORM_KEYS = (*_ACCOUNT_KEYS, *_PROJECT_KEYS, *_CREDENTIAL_KEYS, *_API_KEYS)
#: Top-level keys that normalisation takes away, so that a misspelling of one still gets a suggestion.
_MOVED_TOP_LEVEL = ("instances",)


@dataclass(frozen=True)
class Normalised:
    data: dict[str, Any]
    source: SourceMap
    #: What is wrong with the short form itself; validation still runs, so every problem is told at once.
    problems: list[Problem] = field(default_factory=list)
    #: Keys accepted at a place (a normalised path) besides its model's fields: for "did you mean".
    also_known: Mapping[Loc, tuple[str, ...]] = field(default_factory=dict)


def normalise(raw: Mapping[str, Any], file: str) -> Normalised:
    """``raw`` (the file's top-level mapping) in the fleet form, with where each moved key was written."""
    cloud = raw.get("cloud")
    if isinstance(cloud, Mapping) and "projects" not in cloud:
        return _short_form(raw, cloud, file)
    data = dict(raw)
    moves: tuple[tuple[Loc, Loc], ...] = ()
    if isinstance(cloud, Mapping):
        data["cloud"] = [cloud]
        moves = ((("cloud", 0), ("cloud",)),)
    problems = []
    if "instances" in data:
        del data["instances"]
        problems.append(
            Problem(
                "instances",
                "with accounts and projects in cloud, list instances under cloud.N.projects.N.instances "
                "(or use discover: true)",
            )
        )
    return Normalised(data, SourceMap(file, moves), problems, {(): _MOVED_TOP_LEVEL})


def _short_form(raw: Mapping[str, Any], cloud: Mapping[str, Any], file: str) -> Normalised:
    data = {k: v for k, v in raw.items() if k not in ("cloud", "instances")}
    api = data.get("api")
    api = dict(api) if isinstance(api, Mapping) else api
    account: dict[str, Any] = {}
    project: dict[str, Any] = {"instances": raw.get("instances") or []}
    credentials: dict[str, Any] = {}
    problems: list[Problem] = []
    moves: list[tuple[Loc, Loc]] = [
        (("cloud", 0, "projects", 0, "instances"), ("instances",)),
        (("cloud", 0, "projects", 0), ("cloud",)),
        (("cloud", 0), ("cloud",)),
    ]
    for key, value in cloud.items():
        if key in _PROJECT_KEYS:
            project[key] = value
        elif key in _CREDENTIAL_KEYS:
            credentials[key] = value
        elif key in _API_KEYS and isinstance(api, dict) and key in api:
            problems.append(Problem("", f"cloud.{key} and api.{key} are both set: keep one (api.{key})"))
        elif key in _API_KEYS:
            api = {**(api if isinstance(api, dict) else {}), key: value}
            moves.append((("api", key), ("cloud", key)))
        elif key in _ACCOUNT_KEYS:
            account[key] = value
        else:
            problems.append(unknown_key(key, "cloud", SHORT_FORM_KEYS))
    if "credentials" not in account:
        # ak/sk (or none: the environment's) are the account's credentials, written in cloud itself.
        account["credentials"] = {"type": "aksk", **credentials}
        moves.append((("cloud", 0, "credentials"), ("cloud",)))
    elif credentials:
        keys = "/".join(credentials)
        problems.append(Problem("cloud.credentials", f"also given as cloud.{keys}: keep one"))
    if api is not None:
        data["api"] = api
    data["cloud"] = [{**account, "projects": [project]}]
    moves.sort(key=lambda move: -len(move[0]))
    return Normalised(data, SourceMap(file, tuple(moves)), problems, {(): _MOVED_TOP_LEVEL})
