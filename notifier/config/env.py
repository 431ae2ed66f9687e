"""What the process environment adds to a config: ``${VAR}`` values, and AK/SK from CLOUD_SDK_AK/SK.

Also what is still missing after both: a project whose AK/SK credentials have no ``ak`` or ``sk``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from notifier.config.models import AkSkCredentialsConfig, Config
from notifier.config.source import report
from notifier.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(tree: Any, environ: Mapping[str, str], file: str = "<config>") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree.

    Every variable that is not set is reported in one error, with the keys that use it: a first run
    should not find them one at a time.
    """
    missing: dict[str, list[str]] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            missing.setdefault(name, []).append(path or "<root>")
            return ""

        return _VAR.sub(repl, value)

    out = walk(tree, "")
    if missing:
        count = f"{len(missing)} environment variable" + (" is" if len(missing) == 1 else "s are")
        lines = [f"  {name}: used at {', '.join(dict.fromkeys(paths))}" for name, paths in missing.items()]
        raise ConfigError(
            "\n".join([f"{file}: {count} not set (export, or write ${{VAR:-default}} in the file):", *lines])
        )
    return out


def with_env_credentials(config: Config, environ: Mapping[str, str]) -> Config:
    """Fill AK/SK from CLOUD_SDK_AK / CLOUD_SDK_SK (as in Huawei's own samples) wherever AK/SK credentials
    leave them out; an empty variable is no credential."""
    ak, sk = (SecretStr(v) if (v := environ.get(name)) else None for name in ("CLOUD_SDK_AK", "CLOUD_SDK_SK"))

    def fill(c: Any) -> Any:
        if isinstance(c, AkSkCredentialsConfig):
            return c.model_copy(update={"ak": c.ak or ak, "sk": c.sk or sk})
        return c

    accounts = [
        a.model_copy(
            update={
                "credentials": fill(a.credentials),
                "projects": [p.model_copy(update={"credentials": fill(p.credentials)}) for p in a.projects],
            }
        )
        for a in config.cloud
    ]
    return config.model_copy(update={"cloud": accounts})


def credential_problems(config: Config) -> list[str]:
    """What is missing from the credentials, one line per project, naming where to put it."""
    problems = []
    for a, account in enumerate(config.cloud):
        for p, project in enumerate(account.projects):
            c = project.credentials or account.credentials
            if not isinstance(c, AkSkCredentialsConfig) or (c.ak is not None and c.sk is not None):
                continue
            missing = "/".join(n for n, v in (("ak", c.ak), ("sk", c.sk)) if v is None)
            at = ("cloud", a, "projects", p) if project.credentials is not None else ("cloud", a)
            problems.append(
                f"{config.source.key((*at, 'credentials'))}.{missing}: no credentials for project "
                f"{project.project_id}; set them in the config or the environment variables "
                "CLOUD_SDK_AK/CLOUD_SDK_SK"
            )
    return problems


def require_credentials(config: Config) -> None:
    """Raise a ConfigError naming the file and every project that has no usable credentials."""
    problems = credential_problems(config)
    if problems:
        raise ConfigError(report(config.source.file, problems))
