"""``python -m notifier.devtools.simulator``: serve the simulator, playing the demo scenario in a loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from notifier.devtools.simulator.app import Simulator
from notifier.devtools.simulator.scenario import default_demo_scenario, install_instances


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m notifier.devtools.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--project-id", default=os.environ.get("DCS_PROJECT_ID", "demo-project"))
    parser.add_argument("--ak", default=os.environ.get("CLOUD_SDK_AK"), help="default: $CLOUD_SDK_AK")
    parser.add_argument("--sk", default=os.environ.get("CLOUD_SDK_SK"), help="default: $CLOUD_SDK_SK")
    parser.add_argument("--scenario", choices=["demo", "none"], default="demo")
    parser.add_argument("--once", action="store_true", help="play the scenario once instead of looping")
    parser.add_argument("--speed", type=float, default=1.0)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    sim = Simulator(project_id=args.project_id, credentials={args.ak: args.sk})
    scenario = default_demo_scenario()
    install_instances(sim, scenario)
    url = await sim.start(args.host, args.port)
    print(f"DCS simulator on {url} (project {args.project_id}, AK {args.ak})", flush=True)
    for instance in sim.instances.values():
        print(f"  instance {instance.name}: {instance.instance_id}", flush=True)
    if args.scenario == "demo":
        sim.play(scenario, speed=args.speed, repeat=not args.once)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.ak or not args.sk:
        print("AK/SK required: --ak/--sk or CLOUD_SDK_AK/CLOUD_SDK_SK", file=sys.stderr)
        return 2
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
