from __future__ import annotations

import re

import pytest

from notifier.devtools.demo import render_slack, run_demo


async def test_demo_shows_switchovers_a_grouped_burst_and_a_stuck_task(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The built-in scenario (24 s) at triple speed: groups wait 2/3 s, AddReplica is stuck after 2 s.
    assert await run_demo(redis_url=redis_url, duration=9.5, speed=3) == 0
    out = capsys.readouterr().out
    assert "[slack → #oncall] 🔄 Master/standby switchover started on orders-cache" in out
    # One living card per task: the end of the switchover edits its card, and is said in its thread.
    card = re.search(r"on orders-cache  \(card (\d+)\)", out)
    assert card is not None
    n = card.group(1)
    assert (
        f"✎ card {n} (orders-cache · Master/standby switchover) now: ✅ Master/standby switchover succeeded"
        in out
    )
    assert f"↳ thread (card {n}):   ✅ Master/standby switchover succeeded on orders-cache" in out
    # An automatic failover, from Cloud Eye: a card of its own, pinging the on-call group.
    assert "[slack → #oncall] 🚨 Automatic master/standby failover on sessions-cache" in out
    assert "[webhook → audit] instance.failover  Automatic master/standby failover on sessions-cache" in out
    # A zone's burst of 8 switchovers: one card that ends "8 of 8 succeeded" (webhooks: one POST each).
    # (At this speed a zone member's start may fall between two polls: its end is then told alone.)
    ends = re.findall(r"✅ Master/standby switchover on (\d) instances: (\d) of (\d) succeeded", out)
    assert any(a == b == c and int(a) >= 6 for a, b, c in ends), ends
    assert len(re.findall(r"\[slack → #oncall\] Master/standby switchover on \d+ instances", out)) == 1
    assert (
        out.count("[webhook → audit] task.succeeded  Master/standby switchover succeeded on az1-cache") == 8
    )
    # A replica addition past its watchdog limit: said once, loudly; its end says how long it was stuck.
    assert out.count("[webhook → audit] task.stuck  Add replicas on orders-cache is stuck") == 1
    assert "was stuck for" in out
    assert "signature verified ✓" in out
    assert "SIGNATURE INVALID" not in out


def test_render_slack_reads_like_the_message() -> None:
    payload = {
        "text": "x",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": ":white_check_mark: Scale succeeded"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Started by*\nops_alice"}]},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "<!date^1^{time}|08:00 UTC> &lt;a&gt;"}],
            },
        ],
    }
    assert render_slack(payload) == "✅ Scale succeeded\n  Started by: ops_alice\n  08:00 UTC <a>"
