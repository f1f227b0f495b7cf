#!/usr/bin/env python3
"""Holds every allocator of an outside-suite run to issue 16's spread criterion, not only ours.

Reads the JSON of `benches/external.py --json FILE` and prints, per allocator: on how many rows
its spread ((max - min) / median of the row's times over the reps) is within 1.2x the steadiest
of the *other* allocators' spreads, and the mean rank of its spread among all of them (1 =
steadiest; (n + 1) / 2 if all were alike). Then the pass rate expected when every allocator had
the very same distribution of times (simulated), for the run's number of reps and allocators.

A criterion that the peers themselves pass on as few rows as ours does measures the noise of
the run, not the allocator (BENCHMARKS.md, "Session 8: why ours' time varies across reps").

usage: python3 benches/spread_check.py RUN.json [--ratio 1.2] [--trials 20000]
"""
import argparse
import json
import random
import statistics


def spread(times):
    m = statistics.median(times)
    return (max(times) - min(times)) / m if m else 0.0


def rows_of(run):
    """workload -> allocator -> times (the row's time figure: `wall_s`, which external.py sets
    to the program's own figure where it prints one)."""
    rows = {}
    for r in run["runs"]:
        if r.get("ok") and r["allocator"] != "before":
            rows.setdefault(r["workload"], {}).setdefault(r["allocator"], []).append(r["wall_s"])
    return rows


def held_to_the_criterion(rows, ratio):
    """allocator -> (rows passed, rows, mean rank of its spread)."""
    out = {}
    allocs = sorted({a for row in rows.values() for a in row})
    for a in allocs:
        passed = n = 0
        ranks = []
        for row in rows.values():
            if a not in row or len(row[a]) < 2:
                continue
            s = {b: spread(t) for b, t in row.items() if len(t) >= 2}
            others = [v for b, v in s.items() if b != a]
            if not others:
                continue
            n += 1
            passed += s[a] <= ratio * min(others)
            ranks.append(1 + sum(v < s[a] for v in others))
        out[a] = (passed, n, statistics.mean(ranks) if ranks else float("nan"))
    return out


def expected_pass_rate(allocators, reps, ratio, trials, seed=1):
    """The chance that one of `allocators` identically distributed allocators passes, with
    times of 3 % normal noise (the rate hardly depends on the noise's size or shape)."""
    rng = random.Random(seed)
    passed = 0
    for _ in range(trials):
        s = [spread([rng.gauss(1.0, 0.03) for _ in range(reps)]) for _ in range(allocators)]
        passed += s[0] <= ratio * min(s[1:])
    return passed / trials


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json")
    ap.add_argument("--ratio", type=float, default=1.2)
    ap.add_argument("--trials", type=int, default=20000)
    opts = ap.parse_args()
    run = json.load(open(opts.json))
    rows = rows_of(run)
    held = held_to_the_criterion(rows, opts.ratio)
    reps = max(len(t) for row in rows.values() for t in row.values())
    print("Spread within %.2fx the steadiest other allocator's, %d reps:" % (opts.ratio, reps))
    for a, (passed, n, rank) in held.items():
        print("  %-10s %2d of %2d rows; mean rank of its spread %.2f of %d"
              % (a, passed, n, rank, len(held)))
    rate = expected_pass_rate(len(held), reps, opts.ratio, opts.trials)
    print("Expected with %d identically distributed allocators: %.0f %% of rows (%.1f of %d), "
          "mean rank %.1f" % (len(held), 100 * rate, rate * len(rows), len(rows),
                              (len(held) + 1) / 2))


if __name__ == "__main__":
    main()
