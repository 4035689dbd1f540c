"""`spotcheck bench`: throughput and latency measurements, printed as the lines BENCHMARKS.md quotes."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer

bench_app = typer.Typer(
    help="Benchmarks on an embedded (or the configured) broker and database.", no_args_is_help=True
)


@bench_app.command("pipeline")
def pipeline(
    samples: Annotated[int, typer.Option(help="samples per run (each has all items of its spec)")] = 5000,
    runs: Annotated[int, typer.Option(help="runs; medians are reported")] = 3,
) -> None:
    """Lab results per second through the verdict processor vs. a bare aiokafka passthrough."""
    from adapters.runtime import configure_logging
    from producers import bench
    from spotcheck.settings import Settings

    settings = Settings(log_level="WARNING")
    configure_logging(settings)
    load = bench.workload(samples, 0.1, ZoneInfo(settings.timezone))

    async def one(folder: Path) -> tuple[float, float]:
        async with bench.bench_stack(settings, folder) as s:
            bare = await bench.passthrough(s, load.results)
            through, _ = await bench.pipeline(s, load)
            return bare, through

    bares, throughs = [], []
    for n in range(runs):
        with tempfile.TemporaryDirectory(prefix="spotcheck-bench-") as folder:
            bare, through = asyncio.run(one(Path(folder)))
        bares.append(bare)
        throughs.append(through)
        typer.echo(
            f"run {n + 1}: passthrough {bare:,.0f} msg/s, pipeline {through:,.0f} results/s "
            f"(ratio {through / bare:.2f})"
        )
    typer.echo(
        f"{len(load.results):,} lab results of {samples:,} samples per run, {runs} runs: "
        f"passthrough median {statistics.median(bares):,.0f} msg/s, pipeline median "
        f"{statistics.median(throughs):,.0f} results/s, median ratio "
        f"{statistics.median(t / b for t, b in zip(throughs, bares, strict=True)):.2f}"
    )


@bench_app.command("latency")
def latency(samples: Annotated[int, typer.Option(help="samples sent one after another")] = 200) -> None:
    """Time from a sample's last result reaching the broker to its verdict on the topic."""
    from adapters.runtime import configure_logging
    from producers import bench
    from spotcheck.settings import Settings

    settings = Settings(log_level="WARNING")
    configure_logging(settings)

    async def one(folder: Path) -> list[float]:
        async with bench.bench_stack(settings, folder) as s:
            return await bench.latency(s, samples)

    with tempfile.TemporaryDirectory(prefix="spotcheck-bench-") as folder:
        found = asyncio.run(one(Path(folder)))
    typer.echo(f"last result -> verdict on the topic: {bench.summary(found)}")


@bench_app.command("startup")
def startup(runs: Annotated[int, typer.Option(help="cold starts (fresh state folder each)")] = 3) -> None:
    """Time from `spotcheck up` to a healthy platform, and from SIGTERM to everything stopped."""
    from producers import bench

    ups, downs = [], []
    for n in range(runs):
        with tempfile.TemporaryDirectory(prefix="spotcheck-bench-") as folder:
            healthy, stopped = bench.startup(Path(folder) / "state")
        ups.append(healthy)
        downs.append(stopped)
        typer.echo(f"run {n + 1}: healthy after {healthy:.1f}s, stopped {stopped:.1f}s after SIGTERM")
    typer.echo(
        f"{runs} cold starts: up -> healthy median {statistics.median(ups):.1f}s, "
        f"SIGTERM -> stopped median {statistics.median(downs):.1f}s"
    )


@bench_app.command("failover")
def failover(
    samples: Annotated[int, typer.Option(help="samples streamed per run")] = 300,
    rate: Annotated[float, typer.Option(help="samples (all their results) sent per second")] = 20.0,
    runs: Annotated[int, typer.Option(help="runs; medians are reported")] = 5,
) -> None:
    """Two verdict workers (processes) in one group; one is killed (SIGKILL) mid-stream: the time
    until the survivor publishes a verdict for the dead worker's partitions, and whether every
    verdict is stored exactly once. The consumer-group timeouts are the settings' own."""
    from adapters.runtime import configure_logging
    from producers import bench
    from spotcheck.settings import Settings

    settings = Settings(log_level="WARNING")
    configure_logging(settings)
    load = bench.workload(samples, 0.1, ZoneInfo(settings.timezone), seed=13)

    async def one(folder: Path) -> bench.Failover:
        async with bench.bench_stack(settings, folder) as s:
            return await bench.failover(s, folder, load, rate)

    typer.echo(
        f"session timeout {settings.session_timeout_ms} ms, rebalance timeout "
        f"{settings.rebalance_timeout_ms} ms, heartbeat {settings.heartbeat_interval_ms} ms; "
        f"{samples} samples at {rate:g}/s, {settings.topic_partitions} partitions"
    )
    found = []
    for n in range(runs):
        with tempfile.TemporaryDirectory(prefix="spotcheck-bench-") as folder:
            run = asyncio.run(one(Path(folder)))
        found.append(run)
        typer.echo(
            f"run {n + 1}: kill -> reassigned {run.reassigned:.1f}s, -> first verdict "
            f"{run.first_verdict:.1f}s (partitions {sorted(run.killed)}); verdicts expected "
            f"{run.expected}, stored {run.stored}, duplicated {run.duplicated}, re-sent on the topic "
            f"{run.resent}"
        )
    typer.echo(
        f"{runs} runs: kill -> first verdict on the dead worker's partitions median "
        f"{statistics.median(r.first_verdict for r in found):.1f}s "
        f"(min {min(r.first_verdict for r in found):.1f}, max {max(r.first_verdict for r in found):.1f}); "
        f"kill -> reassigned median {statistics.median(r.reassigned for r in found):.1f}s; "
        f"stored {sum(r.stored for r in found)}/{sum(r.expected for r in found)}, "
        f"duplicated {sum(r.duplicated for r in found)}"
    )


@bench_app.command("soak")
def soak(
    minutes: Annotated[float, typer.Option(help="how long memory is measured (after the warm-up)")] = 30.0,
    every: Annotated[float, typer.Option(help="seconds between two looks")] = 30.0,
    rate: Annotated[float, typer.Option(help="simulated samples per second (SPOTCHECK_DEMO_RATE)")] = 2.0,
    warmup: Annotated[float, typer.Option(help="seconds after /healthz before the first look")] = 60.0,
    csv: Annotated[Path | None, typer.Option(help="also write every look to this CSV file")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the looks and the summary to this JSON file")
    ] = None,
) -> None:
    """`spotcheck up --demo` for a long run (its own ports and state folder): the memory of each of
    its processes and the verdicts stored, over time, and whether the memory levels off."""
    import json
    import math

    from producers import bench

    names = bench.SOAK_PROCESSES
    typer.echo(
        f"spotcheck up --demo at {rate:g} samples/s, {warmup:g}s warm-up, then a look every {every:g}s "
        f"for {minutes:g} min; MiB (RSS; PostgreSQL: PSS summed over its processes)"
    )
    typer.echo("")
    typer.echo("| min | verdicts | " + " | ".join(names) + " |")
    typer.echo("|---:|---:|" + "---:|" * len(names))

    def show(s: bench.MemorySample) -> None:
        figures = " | ".join(f"{s.shown(n) / bench.MIB:.1f}" for n in names)
        typer.echo(f"| {s.seconds / 60:.1f} | {s.verdicts:,} | {figures} |")

    with tempfile.TemporaryDirectory(prefix="spotcheck-soak-") as folder:
        samples = asyncio.run(bench.soak(Path(folder) / "state", minutes, every, rate, warmup, show))
    found = bench.growth(samples)
    made = samples[-1].verdicts - samples[0].verdicts

    def fmt(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:+.2f}"

    typer.echo("")
    typer.echo(
        f"{made:,} verdicts in {samples[-1].seconds / 60:.1f} min ({len(samples)} looks); "
        "growth in MiB per 1,000 verdicts (= KiB per verdict):"
    )
    typer.echo("")
    typer.echo("| process | start (MiB) | end (MiB) | per 1,000 verdicts | last half, per 1,000 verdicts |")
    typer.echo("|---|---:|---:|---:|---:|")
    for g in found:
        typer.echo(
            f"| {g.name} | {g.start:.1f} | {g.end:.1f} | {fmt(g.per_1000)} | {fmt(g.last_half_per_1000)} |"
        )
    if csv is not None:
        lines = ["seconds,verdicts," + ",".join(f"{n}_rss,{n}_pss" for n in names)]
        lines += [
            f"{s.seconds},{s.verdicts}," + ",".join(f"{s.rss[n]},{s.pss[n]}" for n in names) for s in samples
        ]
        csv.write_text("\n".join(lines) + "\n")
    if json_out is not None:
        body = {
            "rate": rate,
            "every": every,
            "warmup": warmup,
            "samples": [vars(s) for s in samples],
            "growth": [vars(g) for g in found],
        }
        json_out.write_text(json.dumps(body, indent=2) + "\n")
