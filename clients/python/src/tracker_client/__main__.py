"""`python -m tracker_client` (or `tracker-client`): the daemon's API from shell scripts and
batch-system hooks, with JSON on stdout.

Exit status, as the `tracker` command's: 0 done; 3 no such slot (NOT_FOUND); 4 a slot of that
name exists (ALREADY_EXISTS); 2 a usage error; 1 anything else, including a kill that left
survivors. Errors are one line on stderr, with the gRPC code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from typing import List, Optional

from .client import SOCKET_ENV, Client
from .errors import AlreadyExists, NotFound, TrackerError
from .types import Limits

EXIT_UNKNOWN_SLOT = 3
EXIT_SLOT_EXISTS = 4


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tracker_client",
        description="Call the tracker daemon's gRPC API; print JSON.",
    )
    p.add_argument("--socket", help=f"the daemon's socket [default: ${SOCKET_ENV}, else /run/tracker/tracker.sock]")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each call may take")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("slots", help="every slot and its state")
    c = sub.add_parser("create", help="an empty slot, to adopt processes into")
    c.add_argument("slot")
    c.add_argument("--owner", type=int, help="the owner's uid [default: the caller's]")
    c.add_argument("--memory-max", type=int, metavar="BYTES")
    c.add_argument("--tasks-max", type=int, metavar="N")
    c.add_argument("--cpu-weight", type=int, metavar="N")
    c.add_argument("--cpu-quota", type=float, metavar="PERCENT")
    c.add_argument("--deny-network", action="store_true")
    c.add_argument("--allow-connect", action="append", default=[], metavar="CIDR[:PORT]")
    c.add_argument("--deny-device", action="append", default=[], metavar="MAJOR:MINOR")
    c.add_argument("--exist-ok", action="store_true", help="succeed if the slot exists")
    a = sub.add_parser("adopt", help="tag a process and its descendants into a slot")
    a.add_argument("slot")
    a.add_argument("pid", type=int)
    u = sub.add_parser("usage", help="what a slot used, live and exited tasks together")
    u.add_argument("slot")
    ps = sub.add_parser("ps", help="the live processes of a slot")
    ps.add_argument("slot")
    ps.add_argument("--threads", action="store_true")
    s = sub.add_parser("signal", help="send a signal to every process of a slot")
    s.add_argument("slot")
    s.add_argument("signal", help="a name (TERM, SIGUSR1) or a number")
    k = sub.add_parser("kill", help="freeze and kill everything in a slot")
    k.add_argument("slot")
    k.add_argument("--timeout", dest="kill_timeout", type=float, metavar="SECONDS")
    r = sub.add_parser("release", help="forget an empty slot")
    r.add_argument("slot")
    w = sub.add_parser(
        "watch", help="events as JSON lines until interrupted; then what was lost, on stderr"
    )
    w.add_argument("slot", nargs="?", default="")
    return p.parse_args(argv)


def signal_number(s: str) -> int:
    if s.isdigit():
        return int(s)
    name = s.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise SystemExit(f"tracker_client: {s}: not a signal name or number") from None


def out(value) -> None:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    elif isinstance(value, list):
        value = [dataclasses.asdict(v) for v in value]
    print(json.dumps(value, indent=2))


def run(args: argparse.Namespace, t: Client) -> int:
    cmd = args.command
    if cmd == "slots":
        out(t.slots())
    elif cmd == "create":
        limits = Limits(
            memory_max_bytes=args.memory_max,
            tasks_max=args.tasks_max,
            cpu_weight=args.cpu_weight,
            cpu_quota_percent=args.cpu_quota,
            deny_network=args.deny_network,
            allow_connect=args.allow_connect,
            deny_devices=args.deny_device,
        )
        try:
            out(t.create(args.slot, owner_uid=args.owner, limits=limits))
        except AlreadyExists:
            if not args.exist_ok:
                raise
            out({"slot": {"name": args.slot}, "existed": True})
    elif cmd == "adopt":
        out(t.adopt(args.slot, args.pid))
    elif cmd == "usage":
        out(t.usage(args.slot))
    elif cmd == "ps":
        out(t.processes(args.slot, threads=args.threads))
    elif cmd == "signal":
        out({"processes": t.signal(args.slot, signal_number(args.signal))})
    elif cmd == "kill":
        report = t.kill(args.slot, timeout=args.kill_timeout)
        out(report)
        return 0 if report.complete else 1
    elif cmd == "release":
        t.release(args.slot)
        out({"released": args.slot})
    elif cmd == "watch":
        events = t.watch(args.slot)
        try:
            for e in events:
                print(json.dumps(dataclasses.asdict(e)), flush=True)
        except KeyboardInterrupt:
            pass
        finally:
            events.close()
            print(
                json.dumps({"received": events.received, "lost": events.lost}), file=sys.stderr
            )
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        with Client(args.socket, timeout=args.timeout) as t:
            return run(args, t)
    except TrackerError as e:
        print(f"tracker_client: {e}", file=sys.stderr)
        if isinstance(e, NotFound):
            return EXIT_UNKNOWN_SLOT
        if isinstance(e, AlreadyExists):
            return EXIT_SLOT_EXISTS
        return 1
    except BrokenPipeError:
        # `... | head`: the reader is gone; nothing more to say.
        return 1


if __name__ == "__main__":
    sys.exit(main())
