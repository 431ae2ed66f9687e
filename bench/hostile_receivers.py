"""What a hostile receiver costs the notifier: scrubbing adversarial text, and a Slack answer of 300 MB.

Scrubbing: the time :func:`notifier.redaction.scrub` takes over a run of letters (the input
that made the old URL pattern, kept below as ``OLD_URL_RE``, backtrack from every start position), uncapped
over 80 KB and 1 MB, capped (the default, as logs use it) over 1 MB, and the old pattern over 80 KB for the
ratio.

Memory: a fresh client process (``--client``) sends one notification through a real
:class:`~notifier.delivery.channels.slack.SlackChannel` (incoming webhook, then bot token) to a Slack
stand-in in this process that answers HTTP 200 with a 300 MB body made on the fly. Reported: the client's
peak RSS (``ru_maxrss``) against the same client answered normally, the outcome, the time, and how many
bytes the stand-in had written when the client hung up.

    .venv/bin/python -m bench.hostile_receivers            # prints a table, writes the results
    .venv/bin/python -m bench.hostile_receivers --before   # records the figures under "before" instead

Writes bench/results/hostile_receivers.json; a run without ``--before`` keeps the "before" figures
already in that file (measured on the code before the hardening, see its ``before.note``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import re
import resource
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from notifier.devtools.standins import CannedResponse, Flood, every_nth
from notifier.devtools.standins.slack import SlackStandIn

RESULTS = Path(__file__).parent / "results" / "hostile_receivers.json"
FLOOD_BYTES: Final = 300 * 2**20
TOKEN: Final = "xoxb-bench-0000-token"  # noqa: S105 - the stand-in takes any token
#: The URL pattern before the hardening (unbounded scheme: quadratic on a long run of letters).
OLD_URL_RE: Final = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\]\[,]+")


# --- scrubbing --------------------------------------------------------------------------------------------


def adversarial(size: int) -> str:
    """A run of letters with no ``://``: every start position looks like the beginning of a scheme."""
    return "a" * size


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def scrub_figures(old: bool) -> dict[str, float]:
    small, large = adversarial(80_000), adversarial(1_000_000)
    figures: dict[str, float] = {}
    if old:
        figures["old_regex_80kb_s"] = round(timed(lambda: OLD_URL_RE.sub("", small)), 4)
    try:
        from notifier.redaction import scrub
    except ImportError:  # the code before the hardening: no capped scrubber to time
        return figures
    figures["scrub_80kb_uncapped_s"] = round(timed(lambda: scrub(small, limit=None)), 5)
    figures["scrub_1mb_uncapped_s"] = round(timed(lambda: scrub(large, limit=None)), 5)
    figures["scrub_1mb_capped_s"] = round(timed(lambda: scrub(large)), 5)
    if old:
        figures["speedup_80kb"] = round(figures["old_regex_80kb_s"] / figures["scrub_80kb_uncapped_s"])
    return figures


# --- memory: the client process ---------------------------------------------------------------------------


def notification() -> Any:
    from notifier.dcs.models import Task
    from notifier.pipeline.events import Event, EventType, InstanceRef, Notification, event_id

    task = Task.model_validate(
        {
            "id": "8abf6e1e72c12e7c0172c15b508500aa",
            "name": "EXTEND",
            "user_name": "bench",
            "status": "SUCCESS",
            "created_at": "2020-06-17T08:18:06.597Z",
            "updated_at": "2020-06-17T08:18:10.106Z",
        }
    )
    instance = InstanceRef(id="inst-1", name="orders-cache", labels={})
    event = Event(
        id=event_id(instance.id, task.id, EventType.SUCCEEDED, task.status),
        type=EventType.SUCCEEDED,
        project_id="p1",
        region="ap-southeast-1",
        instance=instance,
        task=task,
        detected_at=datetime(2020, 6, 17, 8, 18, 11, tzinfo=UTC),
    )
    return Notification(event=event, channel="ops", rule="bench")


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def client(mode: str, base_url: str) -> dict[str, Any]:
    """Send one notification to the stand-in at ``base_url``; report outcome, time and peak RSS."""
    from notifier.delivery.channels import SlackChannelConfig, build_channel

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings: dict[str, Any] = {"type": "slack", "timeout": 120}
    if mode == "webhook":
        settings["webhook_url"] = f"{base_url}/services/T000/B000/XXXXXXXX"
    else:
        settings.update(token=TOKEN, channel="C0DCS", base_url=f"{base_url}/api/")
    channel = build_channel("bench", SlackChannelConfig.model_validate(settings))
    message = notification()
    rss_before = peak_rss_mib()
    start = time.perf_counter()
    try:
        await channel.send(message)
        outcome = "delivered"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        await channel.aclose()
    return {
        "seconds": round(time.perf_counter() - start, 3),
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_send_mib": rss_before,
        "outcome": outcome[:200],
    }


async def run_client(mode: str, base_url: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.hostile_receivers",
        "--client",
        mode,
        base_url,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"client {mode} exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def memory_figures() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for mode in ("webhook", "bot"):
        async with SlackStandIn() as normal:
            baseline = await run_client(mode, normal.base_url)
        head = b'{"ok": true, "pad": "' if mode == "bot" else b""
        flood = CannedResponse(200, Flood(FLOOD_BYTES, head=head, content_type="application/json"))
        async with SlackStandIn(policy=every_nth(1, flood)) as slack:
            hostile = await run_client(mode, slack.base_url)
            written = slack.floods[0].written if slack.floods else None
        rows.append(
            {
                "mode": mode,
                "answer_mib": FLOOD_BYTES // 2**20,
                "peak_rss_mib": hostile["peak_rss_mib"],
                "baseline_peak_rss_mib": baseline["peak_rss_mib"],
                "extra_rss_mib": round(hostile["peak_rss_mib"] - baseline["peak_rss_mib"], 1),
                "seconds": hostile["seconds"],
                "server_wrote_mib": None if written is None else round(written / 2**20, 1),
                "outcome": hostile["outcome"],
            }
        )
    return rows


# --- report -----------------------------------------------------------------------------------------------

COLUMNS: Final = [
    ("mode", "slack mode"),
    ("answer_mib", "answer MiB"),
    ("peak_rss_mib", "peak RSS MiB"),
    ("baseline_peak_rss_mib", "normal answer"),
    ("extra_rss_mib", "extra"),
    ("server_wrote_mib", "server wrote MiB"),
    ("seconds", "send s"),
]


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[title for _, title in COLUMNS], *([str(row[key]) for key, _ in COLUMNS] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells)


def report(label: str, figures: dict[str, Any]) -> None:
    print(f"{label}:")
    for key, value in figures["scrub"].items():
        print(f"  {key:24} {value}")
    print(table(figures["memory"]))
    for row in figures["memory"]:
        print(f"  {row['mode']}: {row['outcome']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", action="store_true", help="record the figures as the 'before' ones")
    parser.add_argument("--client", nargs=2, metavar=("MODE", "BASE_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(client(*args.client))))
        return
    figures = {"scrub": scrub_figures(old=True), "memory": asyncio.run(memory_figures())}
    previous: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result: dict[str, Any] = {"python": platform.python_version()}
    if args.before:
        figures["note"] = "measured on the code before the hardening (unbounded reads, old scrubber)"
        result["before"] = figures
        result["after"] = previous.get("after")
    else:
        result["before"] = previous.get("before")
        result["after"] = figures
    if result["before"] is not None and not args.before:
        report("before", result["before"])
    report("before (this run)" if args.before else "after", figures)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
