"""A local stand-in of Slack: incoming webhooks (``POST /services/…``) and the Web API methods a "living card"
needs: ``chat.postMessage`` (top-level messages and thread replies), ``chat.update`` and ``chat.delete``.

It answers like Slack does: webhooks answer ``200 ok`` or an error code as a text body (``400
invalid_payload``, ``404 no_service``...); the Web API answers HTTP 200 with ``{"ok": false, "error": ...}``
for application errors, and 429 with ``Retry-After`` (whole seconds) and ``ratelimited`` when rate limited.
Faults are programmed with :meth:`~notifier.devtools.standins.StandInServer.enqueue` (canned answers, see
:meth:`SlackStandIn.webhook_error` and :meth:`SlackStandIn.api_error`) or a policy such as ``every_nth(3,
SlackStandIn.webhook_error(429, "rate_limited", retry_after=2))``; canned answers come before everything
below, including the rate limits.

What was posted is kept as Slack keeps it, one :class:`Conversation` per channel id, so a test reads the
channel as a person would see it::

    async with SlackStandIn(post_rate=SLACK_POST_RATE) as slack:
        ...  # the daemon posts a card, updates it, replies in its thread
        [card] = await slack.wait_until(lambda: slack.cards("#ops"))
        assert [v.text for v in card.edits] == ["started"] and card.text == "succeeded"
        assert [r.text for r in slack.replies("#ops", card.ts)] == ["took 4 s"]
        assert slack.ratelimited == 0

Channels: Slack's Web API takes a channel id (``C0123ABCD``) or, for ``chat.postMessage`` only, a name
(``#ops`` or ``ops``), and always answers with the id. Here a name's id is derived from the name
(:func:`channel_id`), so ``#ops`` and ``ops`` are one channel; ``channels=`` limits which exist.

Incoming-webhook posts land in the conversation named ``webhook_channel`` (a webhook posts to one fixed
channel). Slack answers them with a bare ``ok``, no ``ts``: they cannot be updated or deleted by the poster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar
from urllib.parse import parse_qs

from aiohttp import web
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

from notifier.devtools.standins import CannedResponse, OnMessage, Policy, StandInServer

log = logging.getLogger(__name__)

DEFAULT_WEBHOOK_PATH = "T000/B000/XXXXXXXX"
#: The conversation incoming-webhook posts land in, unless told otherwise.
DEFAULT_WEBHOOK_CHANNEL = "incoming-webhook"

#: ``chat.postMessage``: about one message per second per channel, short bursts allowed (Slack's "special"
#: tier; there is also a workspace-wide cap, not modelled).
SLACK_POST_RATE: Final = 1.0
#: How many posts in a row the stand-in lets through before the per-second pace applies (Slack says only
#: "short bursts"; the number is the stand-in's choice).
SLACK_POST_BURST: Final = 3
#: ``chat.update``: Tier 3, 50+ calls per minute per workspace. Unconfirmed: from memory, not re-verified.
SLACK_UPDATE_RATE: Final = 50 / 60
#: Tier 3 burst: the stand-in's choice (Slack documents "occasional bursts").
SLACK_UPDATE_BURST: Final = 10

#: Slack truncates, or refuses with ``msg_too_long``, text longer than this.
MAX_TEXT: Final = 40_000
#: At most this many blocks in one message.
MAX_BLOCKS: Final = 50

#: The user and bot ids the stand-in's bot posts as.
BOT_USER: Final = "U0STANDIN"
BOT_ID: Final = "B0STANDIN"

#: A Slack conversation id: an uppercase letter (C public, G private/group, D direct) and uppercase
#: alphanumerics. Channel names are lowercase, so anything else is a name.
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,}")
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

T = TypeVar("T")

#: Who made a change: a Web API call, an incoming webhook, or a test acting as a person in the channel.
By = Literal["api", "webhook", "person"]
#: What happened to a message: a top-level post, a thread reply, an edit, a deletion.
ChangeKind = Literal["posted", "replied", "updated", "deleted"]


def channel_id(name_or_id: str) -> str:
    """The channel id for an id (returned as is: ``C0123ABCD``) or a name (``#ops`` and ``ops`` alike: ``C``
    and 10 uppercase alphanumerics derived from the name, the same on every run)."""
    text = name_or_id.strip()
    if _CHANNEL_ID.fullmatch(text):
        return text
    name = channel_name_of(text)
    if not name:
        raise ValueError(f"not a channel name or id: {name_or_id!r}")
    digest = hashlib.sha256(name.encode()).digest()
    return "C" + "".join(_ID_ALPHABET[b % len(_ID_ALPHABET)] for b in digest[:10])


def channel_name_of(name_or_id: str) -> str | None:
    """``ops`` for ``#ops`` or ``ops``; ``None`` for a channel id."""
    text = name_or_id.strip()
    if _CHANNEL_ID.fullmatch(text):
        return None
    return text.removeprefix("#").lower() or None


def is_channel_id(text: str) -> bool:
    """Whether ``text`` is written as a channel id (what ``chat.update`` and ``chat.delete`` require)."""
    return _CHANNEL_ID.fullmatch(text.strip()) is not None


@dataclass(frozen=True, slots=True)
class Version:
    """A message as it was before an edit replaced it; ``replaced_at`` is the ts of that edit."""

    text: str
    blocks: list[Any] | None
    replaced_at: str


@dataclass(eq=False, slots=True)
class Message:
    """One message as the channel holds it. ``thread_ts`` is ``None`` for a top-level message, the parent's
    ts for a thread reply; ``edits`` lists the previous versions, oldest first."""

    channel: str
    ts: str
    text: str
    blocks: list[Any] | None = None
    thread_ts: str | None = None
    #: A thread reply also shown in the channel (``reply_broadcast=true``).
    reply_broadcast: bool = False
    deleted: bool = False
    edits: list[Version] = field(default_factory=list)
    #: The ts of the last edit (Slack's ``edited.ts``), ``None`` if never edited.
    edited_ts: str | None = None
    #: ``False``: ``chat.update`` answers ``cant_update_message`` (see :meth:`SlackStandIn.mark_uneditable`).
    editable: bool = True
    by: By = "api"
    #: The stand-in's clock when it was posted (for ``edit_window``).
    posted_at: float = 0.0
    #: The arguments of the post that made it (channel, text, blocks, username...).
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None

    def as_api(self) -> dict[str, Any]:
        """The ``message`` object of an answer, shaped like Slack's."""
        out: dict[str, Any] = {"type": "message", "text": self.text, "ts": self.ts}
        if self.by == "api":
            out.update(user=BOT_USER, bot_id=BOT_ID)
        if self.blocks is not None:
            out["blocks"] = self.blocks
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
            if self.reply_broadcast:
                out["subtype"] = "thread_broadcast"
        if self.edited_ts is not None:
            out["edited"] = {"user": BOT_USER, "ts": self.edited_ts}
        return out


@dataclass(slots=True)
class Conversation:
    """One channel: its id, its name when known, and every message ever posted to it (deleted ones too),
    in ts order."""

    id: str
    name: str | None = None
    messages: dict[str, Message] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``#ops``, or the id when no name is known."""
        return f"#{self.name}" if self.name else self.id


@dataclass(frozen=True, slots=True)
class Change:
    """One change to a channel, as :attr:`SlackStandIn.changes` lists and ``on_change`` receives it.
    ``message`` is the live message (later edits show on it); for ``updated``, ``message.edits[-1]`` was the
    version before this change at the time it was reported."""

    kind: ChangeKind
    message: Message
    channel: str
    channel_name: str | None
    by: By

    @property
    def channel_label(self) -> str:
        return f"#{self.channel_name}" if self.channel_name else self.channel


#: Called (synchronously) with each change to a channel; the demo prints them.
OnChange = Callable[[Change], None]


@dataclass(slots=True)
class TokenBucket:
    """``rate`` calls per second on average, up to ``burst`` in a row."""

    rate: float
    burst: int
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """Take one call: 0.0 if allowed, else the seconds until one would be."""
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class _Refusal(Exception):
    """A Web API call refused: ``{"ok": false, "error": code}`` with ``status`` (and ``Retry-After``)."""

    def __init__(self, error: str, status: int = 200, retry_after: int | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.retry_after = retry_after


def _api_json(
    payload: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json", headers=headers
    )


def _flag(raw: Any) -> bool:
    """Slack's booleans: ``true``, ``"true"``, ``"1"``, ``1``."""
    if isinstance(raw, bool):
        return raw
    return str(raw).strip().lower() in {"true", "1"}


class SlackStandIn(StandInServer):
    """Fake Slack.

    ``token``: the bot token the Web API accepts (``None``: any bearer token). ``channels``: the channels that
    exist, by id or name (``None``: all); a public, mutable set. ``webhook_path``: the secret part of the
    incoming-webhook URL; ``webhook_channel``: the conversation its posts land in.

    Rate limits (``None``: unlimited, the default): ``post_rate`` calls per second per channel for
    ``chat.postMessage`` with up to ``post_burst`` in a row, ``update_rate``/``update_burst`` for
    ``chat.update`` across the workspace (see :data:`SLACK_POST_RATE`, :data:`SLACK_UPDATE_RATE` and
    :meth:`like_slack`). Calls over the limit are answered 429 and counted in :attr:`ratelimited`.

    ``edit_window``: seconds after which ``chat.update`` of a message answers ``edit_window_closed``
    (``None``: never). ``clock``: the time source of the rate limits and the edit window (a test may pass
    its own to move time without sleeping). ``on_change``: called with each :class:`Change`.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        channels: Iterable[str] | None = None,
        webhook_path: str = DEFAULT_WEBHOOK_PATH,
        webhook_channel: str = DEFAULT_WEBHOOK_CHANNEL,
        post_rate: float | None = None,
        post_burst: int = SLACK_POST_BURST,
        update_rate: float | None = None,
        update_burst: int = SLACK_UPDATE_BURST,
        edit_window: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        policy: Policy | None = None,
        on_message: OnMessage | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        super().__init__(policy=policy, on_message=on_message)
        for rate, burst in ((post_rate, post_burst), (update_rate, update_burst)):
            if rate is not None and (rate <= 0 or burst < 1):
                raise ValueError("a rate must be positive and its burst at least 1")
        self.token = token
        self.channels: set[str] | None = None if channels is None else set(channels)
        self.webhook_path = webhook_path.strip("/")
        self.webhook_channel = webhook_channel
        self.post_rate = post_rate
        self.post_burst = post_burst
        self.update_rate = update_rate
        self.update_burst = update_burst
        self.edit_window = edit_window
        self.clock = clock
        self.on_change = on_change
        #: Web API calls refused with 429 ``ratelimited`` so far.
        self.ratelimited = 0
        #: Every change to every channel, in order.
        self.changes: list[Change] = []
        self._conversations: dict[str, Conversation] = {}
        self._post_buckets: dict[str, TokenBucket] = {}
        self._update_bucket: TokenBucket | None = None
        self._stamps = 0

    @classmethod
    def like_slack(cls, **options: Any) -> SlackStandIn:
        """A stand-in with Slack's rate limits (:data:`SLACK_POST_RATE`, :data:`SLACK_UPDATE_RATE`) unless
        ``options`` say otherwise."""
        options.setdefault("post_rate", SLACK_POST_RATE)
        options.setdefault("update_rate", SLACK_UPDATE_RATE)
        return cls(**options)

    # --- canned answers ------------------------------------------------------------------------------------

    @staticmethod
    def webhook_error(
        status: int, error: str, *, retry_after: float | None = None, delay: float = 0.0
    ) -> CannedResponse:
        """An incoming-webhook error as Slack sends it: status + error code as the text body."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return CannedResponse(status, error, headers, delay)

    @staticmethod
    def api_error(
        error: str, *, status: int = 200, retry_after: float | None = None, delay: float = 0.0
    ) -> CannedResponse:
        """A Web API error: ``{"ok": false, "error": ...}`` (HTTP 200 unless told, 429 for rate limits)."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return CannedResponse(status, {"ok": False, "error": error}, headers, delay)

    # --- addresses -----------------------------------------------------------------------------------------

    @property
    def webhook_url(self) -> str:
        """The fake incoming-webhook URL, e.g. ``http://127.0.0.1:PORT/services/T000/B000/XXXXXXXX``."""
        return f"{self.base_url}/services/{self.webhook_path}"

    @property
    def api_base_url(self) -> str:
        """The Web API base URL for ``AsyncWebClient(base_url=...)``: ``http://127.0.0.1:PORT/api/``."""
        return f"{self.base_url}/api/"

    @property
    def messages(self) -> list[Any]:
        """The JSON of every post (incoming webhook or ``chat.postMessage``) answered 2xx, in order. A Web API
        refusal comes with HTTP 200 and is counted too: for what Slack kept, see :meth:`cards`."""
        return [
            r.json
            for r in self.requests
            if (r.path.startswith("/services/") or r.path == "/api/chat.postMessage")
            and 200 <= r.status < 300
            and r.verified is not False
        ]

    # --- the channels as a person sees them ----------------------------------------------------------------

    @staticmethod
    def channel_id(name_or_id: str) -> str:
        """See :func:`channel_id`: ``#ops`` and ``ops`` give the same id; an id is returned as is."""
        return channel_id(name_or_id)

    def conversation(self, channel: str) -> Conversation:
        """The conversation of ``channel`` (a name or an id); empty if nothing was posted there."""
        cid = channel_id(channel)
        found = self._conversations.get(cid)
        return found if found is not None else Conversation(cid, channel_name_of(channel))

    def history(self, channel: str) -> list[Message]:
        """Every message of ``channel``, replies and deleted ones included, in ts order."""
        return list(self.conversation(channel).messages.values())

    def message(self, channel: str, ts: str) -> Message:
        """One message by ts (deleted or not); ``KeyError`` if there is none."""
        return self.conversation(channel).messages[ts]

    def cards(self, channel: str) -> list[Message]:
        """The top-level messages of ``channel`` that were not deleted: what a person scrolling the channel
        sees as messages (broadcast thread replies not counted; see :meth:`broadcasts`)."""
        return [m for m in self.history(channel) if m.thread_ts is None and not m.deleted]

    def replies(self, channel: str, ts: str) -> list[Message]:
        """The thread replies under the message ``ts`` that were not deleted, oldest first."""
        return [m for m in self.history(channel) if m.thread_ts == ts and not m.deleted]

    def broadcasts(self, channel: str) -> list[Message]:
        """The thread replies of ``channel`` also sent to the channel (``reply_broadcast``), not deleted."""
        return [
            m
            for m in self.history(channel)
            if m.thread_ts is not None and m.reply_broadcast and not m.deleted
        ]

    async def wait_until(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:  # noqa: ASYNC109
        """Wait until ``predicate()`` is truthy and return its value; checked now and after every request
        handled. ``TimeoutError`` after ``timeout`` seconds."""
        async with self._changed:
            try:
                return await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"{type(self).__name__}: condition not met within {timeout} s "
                    f"({len(self.requests)} request(s) received)"
                ) from None

    # --- acting as a person in the channel -----------------------------------------------------------------

    def delete_message(self, channel: str, ts: str) -> Message:
        """Delete a message as a person would ("someone deleted the card"): later ``chat.update`` of it
        answers ``message_not_found``, and a reply to it ``thread_not_found``. ``KeyError`` if unknown."""
        message = self._live(channel_id(channel), ts)
        if message is None:
            raise KeyError(f"no message {ts} in {channel}")
        message.deleted = True
        self._changed_by("deleted", message, "person")
        return message

    def mark_uneditable(self, channel: str, ts: str) -> Message:
        """From now on ``chat.update`` of this message answers ``cant_update_message``. ``KeyError`` if
        unknown."""
        message = self.message(channel, ts)
        message.editable = False
        return message

    # --- routes --------------------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/services/{rest:.*}", self._webhook),
            web.post("/api/chat.postMessage", self._api(self._post_message)),
            web.post("/api/chat.update", self._api(self._update)),
            web.post("/api/chat.delete", self._api(self._delete)),
            web.post("/api/{method}", self._unknown_method),
        ]

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, self._webhook_normal)

    def _webhook_normal(self, request: web.Request, body: bytes, payload: Any) -> tuple[web.Response, None]:
        if request.match_info["rest"].strip("/") != self.webhook_path:
            return web.Response(status=404, text="no_service"), None
        if not isinstance(payload, dict):
            return web.Response(status=400, text="invalid_payload"), None
        if not payload.get("text") and not payload.get("blocks"):
            return web.Response(status=400, text="missing_text_or_fallback_or_attachments"), None
        if "blocks" in payload and not isinstance(payload["blocks"], list):
            return web.Response(status=400, text="invalid_blocks"), None
        conversation = self._conversation(
            channel_id(self.webhook_channel), channel_name_of(self.webhook_channel)
        )
        # Replying into a known thread through a webhook (``thread_ts``) reportedly works: unconfirmed. The
        # stand-in honours it when the parent exists, and posts top-level otherwise (Slack's answer unknown).
        parent = (
            self._thread_root(conversation.id, str(payload["thread_ts"]))
            if payload.get("thread_ts")
            else None
        )
        self._add(
            conversation,
            text=str(payload.get("text") or ""),
            blocks=payload.get("blocks") or None,
            parent=parent,
            broadcast=parent is not None and _flag(payload.get("reply_broadcast", False)),
            by="webhook",
            arguments=payload,
        )
        return web.Response(status=200, text="ok"), None

    def _api(
        self, method: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """A Web API route: recorded like any request; auth, arguments and refusals handled as Slack does."""

        def normal(request: web.Request, body: bytes, payload: Any) -> tuple[web.Response, None]:
            try:
                self._authorise(request)
                answer = method(self._arguments(request, body, payload))
            except _Refusal as refusal:
                headers = None if refusal.retry_after is None else {"Retry-After": str(refusal.retry_after)}
                return _api_json({"ok": False, "error": refusal.error}, refusal.status, headers), None
            return _api_json({"ok": True, **answer}), None

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.answer(request, normal)

        return handler

    async def _unknown_method(self, request: web.Request) -> web.Response:
        return _api_json({"ok": False, "error": "unknown_method"})

    # --- the Web API methods -------------------------------------------------------------------------------

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        conversation = self._target(args, names_allowed=True)
        self._throttle(self._post_bucket(conversation.id))
        text, blocks = self._content(args)
        parent = None
        if args.get("thread_ts"):
            parent = self._thread_root(conversation.id, str(args["thread_ts"]))
            if parent is None:
                # The error code Slack gives a reply to a missing or deleted parent is unconfirmed.
                raise _Refusal("thread_not_found")
        message = self._add(
            conversation,
            text=text or "",
            blocks=blocks or None,
            parent=parent,
            broadcast=parent is not None and _flag(args.get("reply_broadcast", False)),
            by="api",
            arguments=args,
        )
        return {"channel": conversation.id, "ts": message.ts, "message": message.as_api()}

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        conversation = self._target(args, names_allowed=False)
        self._throttle(self._update_bucket_now())
        text, blocks = self._content(args)
        message = self._live(conversation.id, str(args.get("ts") or ""))
        if message is None:
            raise _Refusal("message_not_found")
        if not message.editable or message.by != "api":
            raise _Refusal("cant_update_message")
        if self.edit_window is not None and self.clock() - message.posted_at > self.edit_window:
            raise _Refusal("edit_window_closed")
        stamp = self._next_ts()
        message.edits.append(Version(message.text, message.blocks, stamp))
        if text is not None:
            message.text = text
        # Omitted blocks stay, [] removes them: an older copy of Slack's chat.update reference says so, and
        # slack-sdk issue #523 (a text-only update of a blocks message showing no change) agrees.
        if blocks is not None:
            message.blocks = blocks or None
        message.edited_ts = stamp
        if message.thread_ts is not None and _flag(args.get("reply_broadcast", False)):
            message.reply_broadcast = True  # chat.update can broadcast an existing reply
        self._changed_by("updated", message, "api")
        return {
            "channel": conversation.id,
            "ts": message.ts,
            "text": message.text,
            "message": message.as_api(),
        }

    def _delete(self, args: dict[str, Any]) -> dict[str, Any]:
        conversation = self._target(args, names_allowed=False)
        message = self._live(conversation.id, str(args.get("ts") or ""))
        if message is None:
            raise _Refusal("message_not_found")
        if message.by != "api":
            raise _Refusal("cant_delete_message")
        message.deleted = True
        self._changed_by("deleted", message, "api")
        return {"channel": conversation.id, "ts": message.ts}

    # --- helpers -------------------------------------------------------------------------------------------

    def _authorise(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        given = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else ""
        if not given:
            raise _Refusal("not_authed")
        if self.token is not None and given != self.token:
            raise _Refusal("invalid_auth")

    @staticmethod
    def _arguments(request: web.Request, body: bytes, payload: Any) -> dict[str, Any]:
        """The call's arguments: the query string (slack-sdk sends ``chat.delete``'s there), then a JSON
        object body or a form body."""
        args: dict[str, Any] = dict(request.query)
        if isinstance(payload, dict):
            args.update(payload)
        elif body:
            form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
            args.update({k: v[-1] for k, v in form.items()})
        if isinstance(args.get("blocks"), str):
            try:
                args["blocks"] = json.loads(args["blocks"])
            except ValueError:
                raise _Refusal("invalid_blocks") from None
        return args

    def _exists(self, cid: str) -> bool:
        return self.channels is None or cid in {channel_id(c) for c in self.channels if c.strip()}

    def _target(self, args: dict[str, Any], *, names_allowed: bool) -> Conversation:
        """The conversation a call names. ``chat.postMessage`` takes a name or an id, ``chat.update`` and
        ``chat.delete`` an id only (a name: ``channel_not_found``)."""
        raw = args.get("channel")
        if not isinstance(raw, str) or not raw.strip():
            raise _Refusal("channel_not_found")
        if not names_allowed and not is_channel_id(raw):
            raise _Refusal("channel_not_found")
        cid = channel_id(raw)
        if not self._exists(cid):
            raise _Refusal("channel_not_found")
        return self._conversation(cid, channel_name_of(raw))

    @staticmethod
    def _content(args: dict[str, Any]) -> tuple[str | None, list[Any] | None]:
        """The text (``None``: not given or empty) and blocks (``None``: not given) of a post or an update,
        checked against Slack's limits; neither: ``no_text``."""
        raw_text = args.get("text")
        text = None if raw_text is None or raw_text == "" else str(raw_text)
        blocks = args.get("blocks")
        if blocks is not None and (
            not isinstance(blocks, list)
            or len(blocks) > MAX_BLOCKS
            or not all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in blocks)
        ):
            raise _Refusal("invalid_blocks")
        for raw in blocks or []:
            # Each block's own limits (a section's 3,000 characters, a header's 150...), as slack-sdk's
            # models know them: Slack refuses a message that breaks one.
            try:
                block = Block.parse(raw)
                if block is None:
                    raise SlackObjectFormationError(f"unknown block type {raw.get('type')!r}")
                block.validate_json()
            except (SlackObjectFormationError, KeyError, TypeError, ValueError):
                raise _Refusal("invalid_blocks") from None
        if text is not None and len(text) > MAX_TEXT:
            raise _Refusal("msg_too_long")
        if text is None and not blocks:
            raise _Refusal("no_text")
        return text, blocks

    def _conversation(self, cid: str, name: str | None) -> Conversation:
        conversation = self._conversations.get(cid)
        if conversation is None:
            conversation = self._conversations[cid] = Conversation(cid, name or self._known_name(cid))
        elif conversation.name is None and name:
            conversation.name = name
        return conversation

    def _known_name(self, cid: str) -> str | None:
        return next(
            (channel_name_of(c) for c in self.channels or () if c.strip() and channel_id(c) == cid), None
        )

    def _live(self, cid: str, ts: str) -> Message | None:
        """The message ``ts`` of the channel, unless unknown or deleted."""
        conversation = self._conversations.get(cid)
        message = None if conversation is None else conversation.messages.get(ts)
        return None if message is None or message.deleted else message

    def _thread_root(self, cid: str, ts: str) -> Message | None:
        """The message a reply to ``ts`` attaches to: ``ts`` itself, or, when ``ts`` is a reply, its parent
        (Slack's behaviour as remembered: unconfirmed). ``None`` if unknown or deleted."""
        message = self._live(cid, ts)
        if message is not None and message.thread_ts is not None:
            message = self._live(cid, message.thread_ts)
        return message

    def _add(
        self,
        conversation: Conversation,
        *,
        text: str,
        blocks: list[Any] | None,
        parent: Message | None,
        broadcast: bool,
        by: By,
        arguments: dict[str, Any],
    ) -> Message:
        message = Message(
            channel=conversation.id,
            ts=self._next_ts(),
            text=text,
            blocks=blocks,
            thread_ts=None if parent is None else parent.ts,
            reply_broadcast=broadcast,
            by=by,
            posted_at=self.clock(),
            arguments=dict(arguments),
        )
        conversation.messages[message.ts] = message
        self._changed_by("posted" if parent is None else "replied", message, by)
        return message

    def _changed_by(self, kind: ChangeKind, message: Message, by: By) -> None:
        conversation = self._conversations.get(message.channel)
        change = Change(
            kind, message, message.channel, None if conversation is None else conversation.name, by
        )
        self.changes.append(change)
        if self.on_change is not None:
            try:
                self.on_change(change)
            except Exception:
                log.exception("on_change callback failed")

    def _next_ts(self) -> str:
        """Unique and increasing, shaped like Slack's: ``1700000001.000001``."""
        self._stamps += 1
        return f"{1700000000 + self._stamps}.{self._stamps:06d}"

    def _post_bucket(self, cid: str) -> TokenBucket | None:
        if self.post_rate is None:
            return None
        bucket = self._post_buckets.get(cid)
        if bucket is None or bucket.rate != self.post_rate or bucket.burst != self.post_burst:
            bucket = self._post_buckets[cid] = TokenBucket(
                self.post_rate, self.post_burst, float(self.post_burst), self.clock()
            )
        return bucket

    def _update_bucket_now(self) -> TokenBucket | None:
        if self.update_rate is None:
            return None
        bucket = self._update_bucket
        if bucket is None or bucket.rate != self.update_rate or bucket.burst != self.update_burst:
            bucket = self._update_bucket = TokenBucket(
                self.update_rate, self.update_burst, float(self.update_burst), self.clock()
            )
        return bucket

    def _throttle(self, bucket: TokenBucket | None) -> None:
        if bucket is None:
            return
        wait = bucket.take(self.clock())
        if wait > 0:
            self.ratelimited += 1
            raise _Refusal("ratelimited", status=429, retry_after=max(1, math.ceil(wait)))
