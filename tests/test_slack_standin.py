"""The Slack stand-in behaves like Slack's Web API where a living card needs it, reached through slack-sdk
over real HTTP on 127.0.0.1: posts answer the channel id and a ts, updates and deletes want that id and an
existing ts, replies want an existing parent, and the rate limits answer 429 + Retry-After."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from notifier.devtools.demo import SlackPrinter
from notifier.devtools.standins.slack import (
    MAX_BLOCKS,
    MAX_TEXT,
    SLACK_POST_RATE,
    SLACK_UPDATE_RATE,
    Change,
    SlackStandIn,
    channel_id,
)

TOKEN = "xoxb-standin-test"
OPS_ID = "C0123ABCD"


class FakeClock:
    """The stand-in's clock, moved by the test: rate limits and edit windows without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_slack(clock: FakeClock) -> Callable[..., SlackStandIn]:
    def make(**options: Any) -> SlackStandIn:
        options.setdefault("token", TOKEN)
        options.setdefault("channels", {"#ops", OPS_ID})
        return SlackStandIn(clock=clock, **options)

    return make


@pytest.fixture
async def slack(make_slack: Callable[..., SlackStandIn]) -> AsyncIterator[SlackStandIn]:
    async with make_slack() as stand_in:
        yield stand_in


@pytest.fixture
def client(slack: SlackStandIn) -> AsyncWebClient:
    return AsyncWebClient(token=TOKEN, base_url=slack.api_base_url, retry_handlers=[], timeout=5)


async def refused(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        await call
    return info.value


BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*started*"}}]


# --- channels ----------------------------------------------------------------------------------------------


def test_channel_ids_are_derived_from_names_and_ids_kept() -> None:
    ops = channel_id("#ops")
    assert ops == channel_id("ops") == SlackStandIn.channel_id("#ops") == channel_id(ops)
    assert ops.startswith("C") and len(ops) == 11 and ops.isalnum() and ops.isupper()
    assert channel_id("#dba") != ops
    assert channel_id(OPS_ID) == OPS_ID
    with pytest.raises(ValueError, match="not a channel"):
        channel_id("#")


async def test_post_answers_the_channel_id_and_a_ts(slack: SlackStandIn, client: AsyncWebClient) -> None:
    by_name = await client.chat_postMessage(channel="#ops", text="one", blocks=BLOCKS)
    bare = await client.chat_postMessage(channel="ops", text="two")
    by_id = await client.chat_postMessage(channel=OPS_ID, text="three")
    ops = channel_id("#ops")
    assert (by_name["channel"], bare["channel"], by_id["channel"]) == (ops, ops, OPS_ID)
    stamps = [by_name["ts"], bare["ts"], by_id["ts"]]
    assert stamps == sorted(stamps, key=float) and len(set(stamps)) == 3
    assert all(len(ts.split(".")[1]) == 6 for ts in stamps)
    assert by_name["message"]["blocks"] == BLOCKS and by_name["message"]["text"] == "one"
    assert [m.text for m in slack.cards("#ops")] == ["one", "two"]
    assert slack.cards(ops) == slack.cards("ops")
    assert [m.text for m in slack.cards(OPS_ID)] == ["three"]
    assert slack.conversation("ops").label == "#ops"
    assert len(slack.messages) == 3


async def test_post_refusals(slack: SlackStandIn, client: AsyncWebClient) -> None:
    assert (await refused(client.chat_postMessage(channel="#nowhere", text="x"))).response["error"] == (
        "channel_not_found"
    )
    empty = client.api_call("chat.postMessage", json={"channel": "#ops", "text": ""})  # slack-sdk would warn
    assert (await refused(empty)).response["error"] == "no_text"
    too_many = [{"type": "divider"}] * (MAX_BLOCKS + 1)
    assert (await refused(client.chat_postMessage(channel="#ops", text="x", blocks=too_many))).response[
        "error"
    ] == "invalid_blocks"
    long = "x" * (MAX_TEXT + 1)
    assert (await refused(client.chat_postMessage(channel="#ops", text=long))).response[
        "error"
    ] == "msg_too_long"
    other = AsyncWebClient(token="xoxb-wrong", base_url=slack.api_base_url, retry_handlers=[])
    assert (await refused(other.chat_postMessage(channel="#ops", text="x"))).response[
        "error"
    ] == "invalid_auth"
    assert all(r.status == 200 for r in slack.requests)  # application errors come with HTTP 200
    assert slack.cards("#ops") == []


async def test_form_encoded_and_json_string_blocks_are_read(slack: SlackStandIn) -> None:
    form = {"channel": "#ops", "text": "form", "blocks": json.dumps(BLOCKS)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            slack.api_base_url + "chat.postMessage", data=form, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response,
    ):
        answer = await response.json()
    assert answer["ok"] is True and answer["channel"] == channel_id("#ops")
    [card] = slack.cards("#ops")
    assert (card.text, card.blocks) == ("form", BLOCKS)


# --- updates -----------------------------------------------------------------------------------------------


async def test_update_in_place_keeps_the_edit_history(slack: SlackStandIn, client: AsyncWebClient) -> None:
    posted = await client.chat_postMessage(channel="#ops", text="started", blocks=BLOCKS)
    cid, ts = posted["channel"], posted["ts"]
    done = [{"type": "section", "text": {"type": "mrkdwn", "text": "*succeeded*"}}]
    updated = await client.chat_update(channel=cid, ts=ts, text="succeeded", blocks=done)
    assert (updated["channel"], updated["ts"], updated["text"]) == (cid, ts, "succeeded")
    assert updated["message"]["blocks"] == done and "edited" in updated["message"]
    await client.chat_update(channel=cid, ts=ts, text="succeeded in 4 s")  # blocks omitted: kept
    [card] = slack.cards("#ops")
    assert (card.ts, card.text, card.blocks) == (ts, "succeeded in 4 s", done)
    assert [(v.text, v.blocks) for v in card.edits] == [("started", BLOCKS), ("succeeded", done)]
    assert card.edited_ts is not None and float(card.edited_ts) > float(ts)
    assert [c.kind for c in slack.changes] == ["posted", "updated", "updated"]
    assert len(slack.messages) == 1  # updates are not posts


async def test_update_wants_the_channel_id_and_an_existing_ts(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    posted = await client.chat_postMessage(channel="#ops", text="started")
    by_name = await refused(client.chat_update(channel="#ops", ts=posted["ts"], text="x"))
    assert by_name.response["error"] == "channel_not_found"
    unknown = await refused(client.chat_update(channel=posted["channel"], ts="1700009999.000999", text="x"))
    assert unknown.response["error"] == "message_not_found"
    elsewhere = await refused(client.chat_update(channel=OPS_ID, ts=posted["ts"], text="x"))
    assert elsewhere.response["error"] == "message_not_found"
    empty = await refused(
        client.api_call("chat.update", json={"channel": posted["channel"], "ts": posted["ts"]})
    )
    assert empty.response["error"] == "no_text"
    assert slack.cards("#ops")[0].edits == []


async def test_uneditable_messages_and_the_edit_window(
    make_slack: Callable[..., SlackStandIn], clock: FakeClock
) -> None:
    async with make_slack(edit_window=60) as slack:
        client = AsyncWebClient(token=TOKEN, base_url=slack.api_base_url, retry_handlers=[])
        first = await client.chat_postMessage(channel="#ops", text="one")
        second = await client.chat_postMessage(channel="#ops", text="two")
        slack.mark_uneditable("#ops", first["ts"])
        locked = await refused(client.chat_update(channel=first["channel"], ts=first["ts"], text="x"))
        assert locked.response["error"] == "cant_update_message"
        clock.now += 61
        late = await refused(client.chat_update(channel=second["channel"], ts=second["ts"], text="x"))
        assert late.response["error"] == "edit_window_closed"
        assert [m.text for m in slack.cards("#ops")] == ["one", "two"]


# --- threads -----------------------------------------------------------------------------------------------


async def test_thread_replies_and_broadcasts(slack: SlackStandIn, client: AsyncWebClient) -> None:
    card = await client.chat_postMessage(channel="#ops", text="card")
    cid, ts = card["channel"], card["ts"]
    reply = await client.chat_postMessage(channel=cid, thread_ts=ts, text="step 1")
    loud = await client.chat_postMessage(channel="#ops", thread_ts=ts, text="failed", reply_broadcast=True)
    assert reply["message"]["thread_ts"] == ts
    assert loud["message"]["subtype"] == "thread_broadcast"
    # A reply's ts given as the parent: the reply joins the thread of that reply's parent (unconfirmed).
    nested = await client.chat_postMessage(channel=cid, thread_ts=reply["ts"], text="step 2")
    assert nested["message"]["thread_ts"] == ts
    assert [m.text for m in slack.replies("#ops", ts)] == ["step 1", "failed", "step 2"]
    assert [m.text for m in slack.broadcasts("#ops")] == ["failed"]
    assert [m.text for m in slack.cards("#ops")] == ["card"]  # replies are not cards, broadcast or not
    flags = [(m.thread_ts, m.reply_broadcast) for m in slack.history("#ops")]
    assert flags == [(None, False), (ts, False), (ts, True), (ts, False)]


async def test_reply_broadcast_arrives_as_a_string_too(slack: SlackStandIn, client: AsyncWebClient) -> None:
    card = await client.chat_postMessage(channel="#ops", text="card")
    await client.api_call(
        "chat.postMessage",
        params={"channel": "#ops", "thread_ts": card["ts"], "text": "q", "reply_broadcast": "1"},
    )
    await client.api_call(
        "chat.postMessage",
        json={"channel": "#ops", "thread_ts": card["ts"], "text": "j", "reply_broadcast": "true"},
    )
    await client.api_call(
        "chat.postMessage",
        json={"channel": "#ops", "thread_ts": card["ts"], "text": "n", "reply_broadcast": "false"},
    )
    assert [m.text for m in slack.broadcasts("#ops")] == ["q", "j"]


async def test_reply_to_a_missing_parent_is_thread_not_found(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    missing = await refused(client.chat_postMessage(channel="#ops", thread_ts="1700009999.000999", text="x"))
    assert missing.response["error"] == "thread_not_found"
    card = await client.chat_postMessage(channel="#ops", text="card")
    elsewhere = await refused(client.chat_postMessage(channel=OPS_ID, thread_ts=card["ts"], text="x"))
    assert elsewhere.response["error"] == "thread_not_found"
    slack.delete_message(card["channel"], card["ts"])  # a person deleted the card
    gone = await refused(client.chat_postMessage(channel="#ops", thread_ts=card["ts"], text="x"))
    assert gone.response["error"] == "thread_not_found"
    assert slack.history("#ops")[0].deleted and slack.replies("#ops", card["ts"]) == []


# --- deletes -----------------------------------------------------------------------------------------------


async def test_delete_then_update_is_message_not_found(slack: SlackStandIn, client: AsyncWebClient) -> None:
    card = await client.chat_postMessage(channel="#ops", text="card")
    cid, ts = card["channel"], card["ts"]
    deleted = await client.chat_delete(channel=cid, ts=ts)  # slack-sdk sends these in the query string
    assert (deleted["channel"], deleted["ts"]) == (cid, ts)
    assert slack.cards("#ops") == [] and slack.message("#ops", ts).deleted
    assert (await refused(client.chat_update(channel=cid, ts=ts, text="x"))).response[
        "error"
    ] == "message_not_found"
    assert (await refused(client.chat_delete(channel=cid, ts=ts))).response["error"] == "message_not_found"


async def test_a_person_deleting_the_card(slack: SlackStandIn, client: AsyncWebClient) -> None:
    card = await client.chat_postMessage(channel="#ops", text="card")
    slack.delete_message("#ops", card["ts"])
    assert slack.changes[-1].kind == "deleted" and slack.changes[-1].by == "person"
    gone = await refused(client.chat_update(channel=card["channel"], ts=card["ts"], text="x"))
    assert gone.response["error"] == "message_not_found"
    with pytest.raises(KeyError):
        slack.delete_message("#ops", card["ts"])


# --- rate limits -------------------------------------------------------------------------------------------


async def test_post_rate_limit_is_per_channel_with_a_burst(
    make_slack: Callable[..., SlackStandIn], clock: FakeClock
) -> None:
    async with make_slack(post_rate=SLACK_POST_RATE, post_burst=2) as slack:
        client = AsyncWebClient(token=TOKEN, base_url=slack.api_base_url, retry_handlers=[])
        await client.chat_postMessage(channel="#ops", text="1")
        await client.chat_postMessage(channel="#ops", text="2")
        limited = await refused(client.chat_postMessage(channel="#ops", text="3"))
        assert limited.response.status_code == 429
        assert limited.response["error"] == "ratelimited"
        assert limited.response.headers["Retry-After"] == "1"
        await client.chat_postMessage(channel=OPS_ID, text="another channel has its own allowance")
        clock.now += 1.0
        await client.chat_postMessage(channel="#ops", text="3 again")
        assert slack.ratelimited == 1
        assert [m.text for m in slack.cards("#ops")] == ["1", "2", "3 again"]
        assert [r.status for r in slack.requests] == [200, 200, 429, 200, 200]


async def test_update_rate_limit(make_slack: Callable[..., SlackStandIn], clock: FakeClock) -> None:
    async with make_slack(update_rate=SLACK_UPDATE_RATE, update_burst=1) as slack:
        client = AsyncWebClient(token=TOKEN, base_url=slack.api_base_url, retry_handlers=[])
        card = await client.chat_postMessage(channel="#ops", text="0")
        await client.chat_update(channel=card["channel"], ts=card["ts"], text="1")
        limited = await refused(client.chat_update(channel=card["channel"], ts=card["ts"], text="2"))
        assert limited.response.status_code == 429
        assert limited.response.headers["Retry-After"] == "2"  # 1.2 s until the next call, in whole seconds
        clock.now += 1.5
        await client.chat_update(channel=card["channel"], ts=card["ts"], text="2")
        assert slack.ratelimited == 1 and slack.cards("#ops")[0].text == "2"


def test_like_slack_has_slacks_limits() -> None:
    slack = SlackStandIn.like_slack(update_rate=None)
    assert (slack.post_rate, slack.update_rate) == (SLACK_POST_RATE, None)
    with pytest.raises(ValueError, match="positive"):
        SlackStandIn(post_rate=0)


async def test_no_limits_by_default(slack: SlackStandIn, client: AsyncWebClient) -> None:
    for n in range(20):
        await client.chat_postMessage(channel="#ops", text=str(n))
    assert len(slack.cards("#ops")) == 20 and slack.ratelimited == 0


# --- webhooks, waiting, callbacks ---------------------------------------------------------------------------


async def test_webhook_posts_land_in_the_webhook_channel(make_slack: Callable[..., SlackStandIn]) -> None:
    seen: list[Change] = []
    async with make_slack(webhook_channel="oncall", on_change=seen.append) as slack:
        hook = AsyncWebhookClient(slack.webhook_url)
        assert (await hook.send(text="hello", blocks=BLOCKS)).body == "ok"
        [card] = slack.cards("#oncall")
        assert (card.text, card.blocks, card.by) == ("hello", BLOCKS, "webhook")
        assert [(c.kind, c.channel_label) for c in seen] == [("posted", "#oncall")]
        # A webhook's post cannot be updated through the Web API.
        client = AsyncWebClient(token=TOKEN, base_url=slack.api_base_url, retry_handlers=[])
        slack.channels = None
        bad = await refused(client.chat_update(channel=card.channel, ts=card.ts, text="x"))
        assert bad.response["error"] == "cant_update_message"


async def test_wait_until_wakes_on_requests_and_times_out(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    with pytest.raises(TimeoutError, match="condition not met"):
        await slack.wait_until(lambda: slack.cards("#ops"), timeout=0.05)
    task = asyncio.ensure_future(client.chat_postMessage(channel="#ops", text="card"))
    [card] = await slack.wait_until(lambda: slack.cards("#ops"), timeout=5)
    assert card.text == "card"
    await task


async def test_the_demo_prints_a_card_once_then_its_edits_and_replies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def card(header: str, status: str) -> list[dict[str, Any]]:
        fields = [("Instance", "orders-cache (`inst-1`)"), ("Task", "Scale (`EXTEND`)"), ("Status", status)]
        return [
            {"type": "header", "text": {"type": "plain_text", "text": header}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields]},
        ]

    printer = SlackPrinter()
    async with SlackStandIn(webhook_channel="oncall", on_change=printer) as slack:
        client = AsyncWebClient(token=TOKEN, base_url=slack.api_base_url, retry_handlers=[])
        posted = await client.chat_postMessage(
            channel="#oncall",
            text="started",
            blocks=card(":arrows_counterclockwise: Scale started", "`RUNNING`"),
        )
        await client.chat_update(
            channel=posted["channel"],
            ts=posted["ts"],
            text="succeeded",
            blocks=card(":white_check_mark: Scale succeeded", "`SUCCESS`"),
        )
        await client.chat_postMessage(channel="#oncall", thread_ts=posted["ts"], text="took 4 s")
        await client.chat_postMessage(
            channel="#oncall", thread_ts=posted["ts"], text=":x: then failed", reply_broadcast=True
        )
        await AsyncWebhookClient(slack.webhook_url).send(text="via webhook")
    out = capsys.readouterr().out
    assert out.count("[slack → #oncall]") == 2  # the card, and the webhook's post: a card of its own
    assert "[slack → #oncall] 🔄 Scale started  (card 1)\n  Instance: orders-cache (inst-1)" in out
    assert "  ✎ card 1 (orders-cache · Scale) now: ✅ Scale succeeded — Status: SUCCESS\n" in out
    assert "    ↳ thread (card 1): took 4 s\n" in out
    assert "    ↳ thread (card 1): ❌ then failed (also sent to the channel)\n" in out
    assert "[slack → #oncall] via webhook  (card 2)" in out
    assert printer.summary() == "2 Slack card(s), 1 edit(s), 2 thread repl(ies), 0 deletion(s)"
