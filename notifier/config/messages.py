"""pydantic's validation errors in the words of the config file.

- A location names the keys as written: a union's tag (``channels.oncall.slack.chanel``) is left out, and
  keys that normalisation moved are named where the file has them (see :mod:`notifier.config.source`).
- "Extra inputs are not permitted" becomes ``unknown key `intervall` in poll; did you mean `interval`?``.
- A model's own check about one of its keys (:class:`~notifier.config.models.AtKey`) is placed at that key.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from notifier.config.models import AtKey
from notifier.config.source import Loc, Problem, SourceMap, did_you_mean, unknown_key


def describe(
    exc: ValidationError,
    root: type[BaseModel],
    source: SourceMap,
    also_known: Mapping[Loc, tuple[str, ...]] | None = None,
) -> list[Problem]:
    """One problem per error of ``exc`` (raised validating ``root``), located as the file writes it."""
    problems = []
    for err in exc.errors():
        place = _place(root, err["loc"])
        loc, message, ctx = place.loc, err["msg"], err.get("ctx") or {}
        if err["type"] == "extra_forbidden" and loc:
            known_keys = [*_names(place.owner), *(also_known or {}).get(loc[:-1], ())]
            problems.append(unknown_key(loc[-1], source.key(loc[:-1]), known_keys))
            continue
        if isinstance(ctx.get("error"), AtKey):
            loc, message = (*loc, *ctx["error"].key), ctx["error"].message
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found") and place.tag is not None:
            # The kind of a channel (or of credentials): said as a problem of its ``type`` key.
            loc, known = (*loc, place.tag), ", ".join(place.tags)
            if err["type"] == "union_tag_not_found":
                message = f"Field required: one of {known}"
            else:
                tag = str(ctx.get("tag"))
                hint = did_you_mean(tag, place.tags, quote=repr)
                message = f"unknown {place.tag} {tag!r}{hint} (known: {known})"
        problems.append(Problem(source.key(loc), message))
    return problems


@dataclass(frozen=True)
class _Place:
    #: The location without union tags.
    loc: Loc
    #: The model whose key the last element of ``loc`` is (None: not a model's).
    owner: type[BaseModel] | None
    #: Where ``loc`` holds a tagged union: the key that says which member, and its values.
    tag: str | None
    tags: tuple[str, ...]


def _place(root: type[BaseModel], loc: tuple[str | int, ...]) -> _Place:
    """What ``loc`` (a location pydantic reports, validating ``root``) is in the file.

    Follows the annotations from ``root`` down: a tagged union's tag picks the member; an untagged
    union's member label says nothing about the file, and what follows it is kept as pydantic wrote it.
    """
    kept: list[str | int] = []
    tp: Any = root
    tag: str | None = None
    owner: type[BaseModel] | None = None
    for part in loc:
        tp, tag = _unwrap(tp, tag)
        members = _members(tp)
        if members:  # ``part`` is a union's tag (or a member's label), not a key of the file
            tp = next((m for m in members if tag is not None and part in _tags(m, tag)), None)
            tag = None
            continue
        kept.append(part)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            owner = tp
            field = _field(tp, part)
            tp, tag = (field.annotation, _tag_key(field)) if field is not None else (None, None)
            continue
        owner, tag = None, None
        args = typing.get_args(tp)
        origin = typing.get_origin(tp)
        if origin in (list, tuple, set, frozenset) and args:
            tp = args[0]
        elif origin is dict and len(args) == 2:
            tp = args[1]
        else:
            tp = None
    tp, tag = _unwrap(tp, tag)
    members = _members(tp) or []
    tags = tuple(str(t) for m in members if tag is not None for t in _tags(m, tag))
    return _Place(tuple(kept), owner, tag if tags else None, tags)


def _unwrap(tp: Any, tag: str | None) -> tuple[Any, str | None]:
    """Strip ``Annotated`` (keeping a discriminator it declares) and ``X | None``."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp, *metadata = typing.get_args(tp)
            for m in metadata:
                if isinstance(m, FieldInfo) and isinstance(m.discriminator, str):
                    tag = m.discriminator
            continue
        members = _members(tp, all_of_them=True)
        if members is not None and len(members) == 1:
            tp = members[0]
            continue
        return tp, tag


def _members(tp: Any, *, all_of_them: bool = False) -> list[Any] | None:
    """A union's members other than None (None: not a union; with one member only if ``all_of_them``)."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    members = [m for m in typing.get_args(tp) if m is not type(None)]
    return members if all_of_them or len(members) > 1 else None


def _tags(member: Any, tag: str) -> tuple[Any, ...]:
    if isinstance(member, type) and issubclass(member, BaseModel) and tag in member.model_fields:
        return typing.get_args(member.model_fields[tag].annotation)
    return ()


def _tag_key(field: FieldInfo) -> str | None:
    return field.discriminator if isinstance(field.discriminator, str) else None


def _field(model: type[BaseModel], key: str | int) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias, field.validation_alias):
            return field
    return None


def _names(model: type[BaseModel] | None) -> list[str]:
    """The keys a model takes: its fields, by name and by alias."""
    if model is None:
        return []
    names = []
    for name, field in model.model_fields.items():
        names.append(name)
        names.extend(a for a in (field.alias, field.validation_alias) if isinstance(a, str) and a != name)
    return names
