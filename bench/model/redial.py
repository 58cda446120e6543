#!/usr/bin/env python3
"""A model of a fleet coming back after an aggregator restart, to reason about admission constants before a
50,000-agent run (which takes minutes and is noisy on a shared machine). Not a benchmark: it has no QUIC, no
CPU, only the arithmetic of the reconnect.

N agents redial at uniformly random times over the announced window W = N / (HEADROOM * measured capacity). The
aggregator serves at a capacity that falls linearly with the connections already back (their upkeep), scaled so
that a closed-loop first connect would average the measured capacity, times a factor `slower` for a machine that
is slower during the restart than when it measured. An attempt waits in a queue (at most `queue` attempts, each
at most `max_wait` seconds); one that finds it full or waits out its time is refused and redraws as the agent
does (`gait_agent::backoff::RedialPlan`: uniform over what is left of the window, at least a tenth of it, three
draws, then exponential backoff from 1 s).

    python3 bench/model/redial.py            # the table in docs/benchmarks.md (stop 31)
"""
import heapq
import math
import random
from collections import deque


def run(n=50_000, measured=900.0, headroom=0.9, upkeep=0.35, slower=1.0, queue=1024, max_wait=1.0, seed=1):
    rnd = random.Random(seed)
    window = n / (headroom * measured)
    c0 = slower * measured * (-math.log(1 - upkeep)) / upkeep if upkeep > 0 else slower * measured
    due = [(rnd.uniform(0, window), a) for a in range(n)]
    heapq.heapify(due)
    dials, draws, backoffs = [0] * n, [0] * n, [0] * n
    waiting, back, t, dt, credit, last = deque(), 0, 0.0, 0.01, 0.0, 0.0

    def refuse(agent, now):
        draws[agent] += 1
        if draws[agent] <= 2:
            delay = rnd.uniform(0, max(window - now, window / 10))
        else:
            backoffs[agent] += 1
            delay = rnd.uniform(0, min(30.0, 2.0 ** (backoffs[agent] - 1)))
        heapq.heappush(due, (now + delay, agent))

    while back < n and t < 3600:
        t += dt
        while due and due[0][0] <= t:
            _, agent = heapq.heappop(due)
            dials[agent] += 1
            if len(waiting) >= queue:
                refuse(agent, t)
            else:
                waiting.append((t, agent))
        while waiting and t - waiting[0][0] > max_wait:
            refuse(waiting.popleft()[1], t)
        credit += c0 * (1 - upkeep * back / n) * dt
        while credit >= 1 and waiting:
            waiting.popleft()
            credit -= 1
            back += 1
            last = t
        if not waiting:
            credit = min(credit, 1.0)
    return {
        "window_s": round(window, 1),
        "all_back_s": round(last, 1),
        "rate_vs_measured": round(n / last / measured, 3),
        "max_dials": max(dials),
        "agents_over_3_dials": sum(1 for d in dials if d > 3),
        "refusals": sum(draws),
    }


if __name__ == "__main__":
    cases = [("as measured", {}), ("5 % slower", {"slower": 0.95}), ("10 % slower", {"slower": 0.9}),
             ("upkeep 50 %", {"upkeep": 0.5}), ("upkeep 15 %, 10 % slower", {"upkeep": 0.15, "slower": 0.9})]
    for name, case in cases:
        for queue, max_wait in [(1024, 1.0), (2048, 2.0)]:
            print(f"{name:26} queue {queue:5} wait {max_wait} s: {run(queue=queue, max_wait=max_wait, **case)}")
