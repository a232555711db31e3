"""Paired latency: the fp32 reference and every candidate timed interleaved, round by round,
in one process, and each speedup a median of per-round ratios with a distribution-free
interval (order statistics of the rounds).

A speedup is never a ratio of figures taken at different times or in different processes:
machine noise drifts over seconds, so the reference is timed right before and right after
each candidate (A B A C A D A …, candidates in a fresh random order every round) and the
ratio of each such pair is one observation.

``paired_latency`` is a pure function of callables: a :class:`Candidate` is anything that runs
one inference when called (an onnxruntime session here; a torch module or a TFLite
interpreter fits the same way). ``onnx_candidate`` builds the onnxruntime one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Candidate",
    "PairedSettings",
    "Timing",
    "median_interval",
    "onnx_candidate",
    "paired_latency",
    "rounds_for",
]


Call = Callable[[], object]


@dataclass(frozen=True)
class Candidate:
    """One thing to time. ``prepare`` builds it (a session, an interpreter, its input) and
    returns ``call``, which runs one inference and is timed as is, so it should do nothing
    else. Candidates are prepared a group at a time (``max_open``), so a pass over many large
    models does not hold them all in memory."""

    key: str
    prepare: Callable[[], Call]


@dataclass(frozen=True)
class PairedSettings:
    """How the pass times: ``warmup`` untimed calls per candidate first, then ``rounds``
    rounds of ``block`` timed calls per candidate (and per reference block), each block
    after ``switch_warmup`` untimed calls (the first call after another model ran finds the
    caches cold; the reference, timed most often, would otherwise be favoured)."""

    warmup: int
    rounds: int
    block: int
    switch_warmup: int = 1
    confidence: float = 0.95
    seed: int = 0  # the order of candidates in each round

    @classmethod
    def from_runs(cls, warmup: int, runs: int) -> PairedSettings:
        """``runs`` timed calls per candidate in all, spread over :func:`rounds_for` rounds."""
        rounds = rounds_for(runs)
        return cls(warmup=warmup, rounds=rounds, block=max(1, math.ceil(runs / rounds)))


MIN_ROUNDS = 8  # the fewest rounds whose median has a 95 % interval with room to spare


def rounds_for(runs: int) -> int:
    """Rounds for ``runs`` timed calls: about ten calls a block, between ``MIN_ROUNDS`` and
    20 rounds (fewer when there are fewer runs than that: then no interval may exist)."""
    return max(1, min(runs, max(MIN_ROUNDS, min(20, runs // 10))))


@dataclass(frozen=True)
class Timing:
    """What the pass measured for one candidate (for the reference: no speedup)."""

    key: str
    latency_ms_p50: float | None
    latency_ms_p90: float | None
    speedup: float | None = None  # median over rounds of reference / candidate
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None
    rounds: int = 0
    error: str | None = None  # why it could not be timed (prepare or a call raised)


def median_interval(ratios: Sequence[float], confidence: float
                    ) -> tuple[float, float | None, float | None]:
    """(median, low, high): the median of ``ratios`` and its distribution-free interval, the
    order statistics x(k) and x(n+1-k) with the largest k whose coverage of the true median
    is at least ``confidence`` (the binomial tails below x(k) and above x(n+1-k)). It assumes
    nothing about the noise, unlike a bootstrap, which claims far too much from a few rounds
    (three rounds above 1 happen by chance one time in eight). Fewer than six rounds have no
    95 % interval at all: low and high are None."""
    values = np.sort(np.asarray(ratios, dtype=np.float64))
    n = values.size
    if n == 0:
        raise ValueError("median_interval needs at least one ratio")
    median = float(np.median(values))
    tail = (1.0 - confidence) / 2.0
    k = 0  # the largest k with P(Binomial(n, 1/2) < k) <= tail
    below = 0.0
    while k < (n + 1) // 2:
        below += math.comb(n, k) / 2.0**n  # P(X = k) added: P(X <= k) = P(X < k + 1)
        if below > tail:
            break
        k += 1
    if k == 0:
        return median, None, None
    return median, float(values[k - 1]), float(values[n - k])


def _block(call: Callable[[], object], n: int, clock: Callable[[], float],
           untimed: int = 0) -> np.ndarray:
    """Seconds of each of ``n`` calls, after ``untimed`` calls."""
    for _ in range(untimed):
        call()
    times = np.empty(n, dtype=np.float64)
    for i in range(n):
        start = clock()
        call()
        times[i] = clock() - start
    return times


def paired_latency(reference: Candidate, candidates: Sequence[Candidate],
                   settings: PairedSettings, clock: Callable[[], float] = time.perf_counter,
                   max_open: int = 16) -> dict[str, Timing]:
    """Time ``reference`` and ``candidates`` interleaved; return a Timing per key (the
    reference's under its own key, without a speedup).

    Candidates go in groups of ``max_open``; in each round of a group they come in a fresh
    random order, with a reference block before the first, between every two and after the
    last. A candidate's ratio in a round is the mean of the median reference call of the two
    blocks around it divided by its own median call; its speedup is the median of those
    ratios over rounds, with a distribution-free interval (:func:`median_interval`). p50 /
    p90 are over all timed calls (the reference's over every group). A candidate whose
    ``prepare`` or call raises gets a Timing with only ``error`` set; the others go on.
    """
    keys = [c.key for c in candidates]
    if len(set(keys)) != len(keys) or reference.key in keys:
        raise ValueError("candidate keys must be unique and differ from the reference's")
    if settings.rounds < 1 or settings.block < 1:
        raise ValueError("rounds and block must be at least 1")
    ref_call = reference.prepare()
    rng = np.random.default_rng(settings.seed)
    ref_blocks: list[np.ndarray] = []
    out: dict[str, Timing] = {}
    for first in range(0, len(candidates), max(1, max_open)):
        group = candidates[first:first + max(1, max_open)]
        out.update(_time_group(ref_call, group, settings, clock, rng, ref_blocks))
    if not ref_blocks:  # no candidate: time the reference alone
        ref_blocks = [_block(ref_call, settings.block, clock, settings.switch_warmup)
                      for _ in range(settings.rounds)]
    return {reference.key: _percentiles(reference.key, ref_blocks), **out}


def _prepared(group: Sequence[Candidate], warmup: int) -> tuple[dict[str, Call], dict[str, str]]:
    calls: dict[str, Call] = {}
    errors: dict[str, str] = {}
    for candidate in group:
        try:
            call = candidate.prepare()
            for _ in range(warmup):
                call()
        except Exception as exc:  # one model that cannot run must not stop the pass
            errors[candidate.key] = f"{type(exc).__name__}: {exc}"
            continue
        calls[candidate.key] = call
    return calls, errors


def _time_group(ref_call: Call, group: Sequence[Candidate], settings: PairedSettings,
                clock: Callable[[], float], rng: np.random.Generator,
                ref_blocks: list[np.ndarray]) -> dict[str, Timing]:
    calls, errors = _prepared(group, settings.warmup)
    for _ in range(settings.warmup):
        ref_call()
    own: dict[str, list[np.ndarray]] = {key: [] for key in calls}
    ratios: dict[str, list[float]] = {key: [] for key in calls}
    order = list(calls)
    for _ in range(settings.rounds if order else 0):
        before = _block(ref_call, settings.block, clock, settings.switch_warmup)
        ref_blocks.append(before)
        for index in rng.permutation(len(order)):
            key = order[int(index)]
            if key in errors:
                continue
            try:
                times = _block(calls[key], settings.block, clock, settings.switch_warmup)
            except Exception as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"
                continue
            after = _block(ref_call, settings.block, clock, settings.switch_warmup)
            ref_blocks.append(after)
            own[key].append(times)
            ref_time = (float(np.median(before)) + float(np.median(after))) / 2.0
            own_time = float(np.median(times))
            if own_time > 0:
                ratios[key].append(ref_time / own_time)
            before = after
    out = {key: Timing(key, None, None, error=why) for key, why in errors.items()}
    for key in order:
        if key in errors:
            continue
        base = _percentiles(key, own[key])
        if not ratios[key]:
            out[key] = base
            continue
        median, low, high = median_interval(ratios[key], settings.confidence)
        out[key] = Timing(key, base.latency_ms_p50, base.latency_ms_p90, median, low, high,
                          len(ratios[key]))
    return out


def _percentiles(key: str, blocks: list[np.ndarray]) -> Timing:
    times = np.concatenate(blocks) * 1000.0
    p50, p90 = np.percentile(times, [50, 90])
    return Timing(key, float(p50), float(p90), rounds=len(blocks))


def onnx_candidate(key: str, path: str | Path, sample: np.ndarray, threads: int) -> Candidate:
    """A candidate timing an onnxruntime session of ``path`` (the harness's session options)
    fed the first row of ``sample``, repeated to a fixed batch larger than one: the smallest
    call that model can serve."""

    def prepare() -> Call:
        from unified.measure.harness import latency_feed, make_session

        session = make_session(path, threads)
        feed = latency_feed(session, sample)
        run = session.run
        return lambda: run(None, feed)

    return Candidate(key, prepare)
