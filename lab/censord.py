"""The censor daemon: runs lab.censor on packets queued by iptables NFQUEUE in cs-censor.

In-path (default): forged packets are sent *before* the original is released or dropped, so
the forgery always wins. On-path: the original is always released (an on-path injector only
sees a copy: it cannot drop a query, a request or the server's answer) and the forgery races
it, as a real on-path injector does. Delayed verdicts (faults.delay_ms, the on-path delay) are
kept in a heap and released by the same single-threaded loop.

Run as `python -m lab.censord --scenario FILE --queue N --stats FILE` inside cs-censor.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lab import scenario as scenario_mod
from lab.censor import Censor, Decision
from lab.packets import RawSender


class _Stop(Exception):
    """Raised by the signal handler to leave the loop."""


class Daemon:
    def __init__(self, censor: Censor, sender: RawSender, stats_path: Path | None) -> None:
        self.censor = censor
        self.sender = sender
        self.stats_path = stats_path
        self.on_path = censor.s.censor.mode == "on-path"
        self.held: list[tuple[float, int, Any, bool]] = []
        self.counter = itertools.count()
        self.stopping = False

    def _verdict(self, pkt: Any, accept: bool) -> None:
        if accept:
            pkt.accept()
        else:
            pkt.drop()

    def _send(self, decision: Decision) -> None:
        for forged in decision.forged:
            self.sender.send(forged)

    def on_packet(self, pkt: Any) -> None:
        now = time.monotonic()
        decision = self.censor.decide(pkt.get_payload(), now)
        if self.on_path and not decision.in_path:
            # Release first, then race: the forgery may lose, as on a real network.
            decision.accept = decision.accept or not decision.in_path
            if decision.delay_s > 0 and decision.accept:
                pkt.retain()
                heapq.heappush(self.held, (now + decision.delay_s, next(self.counter), pkt, True))
            else:
                self._verdict(pkt, decision.accept)
            self._send(decision)
            return
        self._send(decision)
        if decision.delay_s > 0 and decision.accept:
            pkt.retain()
            heapq.heappush(self.held, (now + decision.delay_s, next(self.counter), pkt, True))
        else:
            self._verdict(pkt, decision.accept)

    def release_due(self) -> float | None:
        """Release held packets whose time has come; seconds until the next one (or None)."""
        now = time.monotonic()
        while self.held and self.held[0][0] <= now:
            _, _, pkt, accept = heapq.heappop(self.held)
            self._verdict(pkt, accept)
        return max(0.0, self.held[0][0] - now) if self.held else None

    def write_stats(self) -> None:
        if self.stats_path is None:
            return
        data = {
            "decisions": self.censor.stats,
            "send_failures": self.sender.failures,
            "flows": len(self.censor.flows),
            "tainted": len(self.censor.residual),
        }
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        tmp.replace(self.stats_path)

    def run(self, queue_num: int) -> None:
        from netfilterqueue import NetfilterQueue  # imported here: only the daemon needs it

        nfq = NetfilterQueue()
        nfq.bind(queue_num, self.on_packet, max_len=8192)
        fd = nfq.get_fd()
        print("censord: ready", flush=True)
        last_stats = 0.0
        try:
            while not self.stopping:
                wait = self.release_due()
                timeout = 0.5 if wait is None else min(wait, 0.5)
                try:
                    readable, _, _ = select.select([fd], [], [], timeout)
                except InterruptedError:
                    continue
                if readable:
                    nfq.run(block=False)
                now = time.monotonic()
                if now - last_stats > 0.5:
                    self.write_stats()
                    last_stats = now
        finally:
            while self.held:
                _, _, pkt, accept = heapq.heappop(self.held)
                self._verdict(pkt, accept)
            self.write_stats()
            nfq.unbind()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.censord")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--stats", default=None)
    args = parser.parse_args(argv)
    try:
        scen = scenario_mod.load(args.scenario)
    except scenario_mod.ScenarioError as exc:
        print(f"censord: {exc}", file=sys.stderr)
        return 2
    daemon = Daemon(Censor(scen), RawSender(), Path(args.stats) if args.stats else None)

    def stop(_sig: int, _frame: object) -> None:
        daemon.stopping = True
        # Raising breaks out of select() at once (PEP 475 would otherwise resume it).
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with contextlib.suppress(_Stop):
        daemon.run(args.queue)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
