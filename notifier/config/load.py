"""Loading a config: read the YAML (refusing a key given twice), replace ``${VAR}``, rewrite the short form,
validate, and report every problem at once, naming the file and each key as the file writes it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from notifier.config.env import interpolate, with_env_credentials
from notifier.config.messages import describe
from notifier.config.models import Config
from notifier.config.normalise import normalise
from notifier.config.source import report
from notifier.errors import ConfigError

_MERGE = "tag:yaml.org,2002:merge"
_NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1's base-60 numbers: ``end_time: 17:00`` (written so in
    Alertmanager's examples) and ``days_of_month: [1:5]`` stay the text they are, not 1020 and 65.
    (YAML 1.2 dropped them; nothing in the config is a number written with a colon.)"""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, re.compile(r"(?=[^:]*\Z)" + rx.pattern, rx.flags) if tag in _NUMBERS else rx)
        for tag, rx in resolvers
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _refuse_duplicate_keys(document: yaml.Node | None) -> None:
    """Raise when a key is given twice in one mapping: PyYAML keeps the last silently, so a second
    ``poll:`` or channel would replace the first without a word.

    Checked on the composed document, as written: once constructed, keys merged in with ``<<`` (which
    may be overridden on purpose) can no longer be told from keys written twice.
    """
    seen: set[int] = set()
    stack = [document] if document is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:  # an alias: the same node again
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for key, value in node.value:
                stack.append(value)
                if key.tag == _MERGE or not isinstance(key, yaml.ScalarNode):
                    continue
                earlier = first.setdefault((key.tag, key.value), key)
                if earlier is not key:
                    shown = repr(key.value) if len(key.value) <= 60 else repr(key.value[:57] + "...")
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {shown}: set on line {earlier.start_mark.line + 1} "
                        f"and again on line {key.start_mark.line + 1} (keep one)",
                        key.start_mark,
                    )


def read_yaml(text: str, file: str) -> dict[str, Any]:
    """The file's top-level mapping; errors name the line (and both lines of a key given twice)."""
    try:
        _refuse_duplicate_keys(yaml.compose(text, Loader=_Loader))
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader (see _Loader)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{file}:{where}: not valid YAML: {problem}") from None
    if raw is None:
        raise ConfigError(f"{file}: the file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of keys (cloud, instances, ...)")
    return raw


def parse_config(text: str, source: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Parse YAML text into a validated Config; raises ConfigError naming ``source`` and the keys."""
    env_map = dict(os.environ if environ is None else environ)
    form = normalise(interpolate(read_yaml(text, source), env_map, source), source)
    problems = list(form.problems)  # the short form's own: told with the validation's, all at once
    config: Config | None = None
    try:
        config = Config.model_validate(form.data, context={"source": form.source})
    except ValidationError as exc:
        problems += describe(exc, Config, form.source, form.also_known)
    if config is None or problems:
        raise ConfigError(report(source, problems))
    return with_env_credentials(config, env_map)


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the config from ``path``, or from $DCS_NOTIFIER_CONFIG, or ``./config.yaml``."""
    env_map = dict(os.environ if environ is None else environ)
    if path is None:
        path = env_map.get("DCS_NOTIFIER_CONFIG") or "config.yaml"
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: config file not found (pass --config PATH or set DCS_NOTIFIER_CONFIG)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    return parse_config(text, str(p), env_map)
