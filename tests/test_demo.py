from __future__ import annotations

import pytest

from notifier.devtools.demo import render_slack, run_demo


async def test_demo_shows_switchover_start_and_finish(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The built-in scenario at double speed: the switchover starts at 0.5 s and finishes at 3 s.
    assert await run_demo(redis_url=redis_url, duration=5, speed=2) == 0
    out = capsys.readouterr().out
    assert "[slack → #oncall] 🔄 Master/standby switchover started on orders-cache" in out
    # One living card per task: the end of the switchover edits its card, and is said in its thread.
    assert (
        "✎ card 1 (orders-cache · Master/standby switchover) now: ✅ Master/standby switchover succeeded"
        in out
    )
    assert "↳ thread (card 1):   ✅ Master/standby switchover succeeded on orders-cache" in out
    assert "[slack → #oncall] ✅" not in out
    # An automatic failover, from Cloud Eye: a card of its own, pinging the on-call group.
    assert "[slack → #oncall] 🚨 Automatic master/standby failover on sessions-cache" in out
    assert "[webhook → audit] instance.failover  Automatic master/standby failover on sessions-cache" in out
    assert "[webhook → audit] task.succeeded  Master/standby switchover succeeded on orders-cache" in out
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
