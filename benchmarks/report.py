"""The report: ratios to the ceilings, the targets of issue 5, the terminal table, the JSON
document and the PNG chart."""
from __future__ import annotations

from pathlib import Path

import click

from . import balanced
from .stats import Result

# Which ceiling each scenario is judged against (same driver, same run).
ECHO_OF = {
    "heartbeat.unary": "ceiling.grpc_echo.unary",
    "heartbeat.stream": "ceiling.grpc_echo.stream",
    "heartbeat.stream.pingpong": "ceiling.grpc_echo.stream.pingpong",
    "heartbeat.batch": "ceiling.grpc_echo.batch",
    "register.storm": "ceiling.grpc_echo.unary",
}
REDIS_LIMIT = "ceiling.redis.P16"


def _echo_ceiling(scenario: str) -> str | None:
    if scenario in ECHO_OF:
        return ECHO_OF[scenario]
    if scenario.startswith("discover."):
        return "ceiling.grpc_echo.unary"
    return None


def add_ratios(results: list[Result]) -> None:
    by_name = {r.scenario: r for r in results if not r.skipped}
    redis = by_name.get(REDIS_LIMIT)
    for r in results:
        if r.skipped or not r.ops:
            continue
        echo = by_name.get(_echo_ceiling(r.scenario) or "")
        if echo is not None and echo.throughput:
            r.ratios["vs_grpc_echo"] = round(r.throughput / echo.throughput, 3)
        if redis is not None and redis.throughput and r.group == "heartbeat":
            r.ratios["vs_redis_limit"] = round(r.throughput / redis.throughput, 3)


def targets(results: list[Result], profile_name: str) -> list[dict]:
    """The targets of issue 5, each with the measured value and met / missed / not measured."""
    by_name = {r.scenario: r for r in results if not r.skipped and r.ops}
    out = []

    def add(name, goal, value, met, detail=""):
        out.append({"target": name, "goal": goal,
                    "measured": value, "met": met, "detail": detail})

    def ratio_target(name, goal, minimum, measured, ceiling, unit, label=""):
        """A throughput ratio target: `measured` / `ceiling` at least `minimum`."""
        if not (measured and ceiling):
            add(name, goal, "n/a", None)
            return
        ratio = measured.throughput / ceiling.throughput
        add(name, goal, f"{ratio:.2f}x", ratio >= minimum,
            f"{label}{measured.throughput:,.0f} vs {ceiling.throughput:,.0f} {unit}")

    unary = by_name.get("heartbeat.unary")
    stream = by_name.get("heartbeat.stream") or by_name.get("heartbeat.stream.pingpong")
    ratio_target("unary heartbeat vs echo server", ">= 0.85x", 0.85, unary,
                 by_name.get("ceiling.grpc_echo.unary"), "calls/s")
    ratio_target("keep-alive stream vs unary", ">= 3x", 3.0, stream, unary, "heartbeats/s",
                 f"{stream.scenario}: " if stream else "")
    ratio_target("batched heartbeats vs Redis limit", ">= 0.50x", 0.5,
                 by_name.get("heartbeat.batch"), by_name.get(REDIS_LIMIT), "heartbeats/s")
    discover = [r for r in by_name.values() if r.scenario.startswith("discover.")
                and r.scenario.endswith(".2caps") and r.extra.get("redis_us_per_call")]
    if discover:
        d = max(discover, key=lambda r: r.extra.get("fleet", 0))
        us = d.extra["redis_us_per_call"]
        sinter = d.extra.get("sinter_us_per_call")
        fleet = d.extra.get("fleet", 0)
        detail = f"{d.scenario}" + (f"; plain SINTER {sinter:,.0f} us" if sinter else "")
        if fleet < 100_000:
            detail += " (100k agents runs in --full)"
        add("Discover 100k agents, 2 caps, max 10: Redis time", "<= 500 us", f"{us:,.0f} us",
            us <= 500 if fleet >= 100_000 else None, detail)
    else:
        add("Discover 100k agents, 2 caps, max 10: Redis time", "<= 500 us", "n/a", None)
    loaded = by_name.get("mixed.heartbeat.with_discover")
    if loaded and loaded.extra.get("p99_ratio"):
        ratio = loaded.extra["p99_ratio"]
        if loaded.throughput < 0.9 * loaded.extra.get("target_rate", 0):
            ratio_note = "; the server did not keep up with the rate: p99 is queueing"
        else:
            ratio_note = ""
        add("100 Discover/s raises heartbeat p99 by", "< 2x", f"{ratio:.2f}x", ratio < 2.0,
            f"p99 {by_name['mixed.heartbeat.alone'].latency_ms.get('p99', 0):.2f} -> "
            f"{loaded.latency_ms.get('p99', 0):.2f} ms at "
            f"{loaded.extra.get('target_rate', 0):,.0f} heartbeats/s{ratio_note}")
    else:
        add("100 Discover/s raises heartbeat p99 by", "< 2x", "n/a", None)
    def p99_target(scenario, name, limit_ms, full_when, detail, strict=False):
        """A p99 latency target (under `limit_ms` when strict, else at most), judged only when
        the run was full-sized (`full_when`)."""
        r = by_name.get(scenario)
        goal = f"{'<' if strict else '<='} {limit_ms} ms"
        if not (r and r.latency_ms):
            add(name, goal, "n/a", None)
            return
        p99 = r.latency_ms["p99"]
        ok = (p99 < limit_ms if strict else p99 <= limit_ms) and not r.errors
        add(name, goal, f"{p99:,.1f} ms", ok if full_when(r.extra) else None, detail(r))

    p99_target("watch.fanout", "watch fan-out: every change to every watcher, p99", 100,
               lambda x: x.get("watchers", 0) >= 1000, strict=True,
               detail=lambda r: f"{r.extra.get('watchers')} watchers, "
                                f"{r.errors} missed deliveries")
    p99_target("expiry.among_live", "EXPIRED after the deadline, p99 (issue 3: within 1 s)", 1000,
               lambda x: x.get("live_agents", 0) >= 100_000,
               lambda r: f"{r.extra.get('agents')} dead among "
                         f"{r.extra.get('live_agents', 0):,} live, {r.errors} never reported")
    m = by_name.get("memory.per_agent")
    if m:
        b = m.extra["bytes_per_agent"]
        add("Redis memory per agent (change log included)", "<= 1024 B", f"{b:,.0f} B",
            b <= 1024, f"{m.ops:,} agents")
    else:
        add("Redis memory per agent (change log included)", "<= 1024 B", "n/a", None)
    balanced.targets(by_name, add)
    if profile_name != "full":
        for t in out:
            t["detail"] = (t["detail"] + "; " if t["detail"] else "") + \
                "targets are judged on a --full run"
    return out


def add_cpu_figures(results: list[Result]) -> None:
    """Server CPU per operation, and the load others put on the machine meanwhile."""
    for r in results:
        if r.skipped or not r.ops:
            continue
        if r.server_cpu and r.throughput:
            r.extra["server_cpu_us_per_op"] = round(r.server_cpu * 1e6 / r.throughput, 1)
        if r.machine_busy is not None and r.server_cpu is not None:
            ours = (r.server_cpu or 0) + (r.redis_cpu or 0) + (r.loadgen_cpu or 0)
            other = round(max(r.machine_busy - ours, 0.0), 2)
            r.extra["other_load_cores"] = other
            if other >= 0.3:
                r.notes.append(f"{other:.2f} cores were busy with other work on this machine "
                               "meanwhile: the figures are depressed by it")


def build(meta: dict, bench) -> dict:
    add_ratios(bench.results)
    add_cpu_figures(bench.results)
    ts = targets(bench.results, bench.profile.name)
    doc = {"meta": meta, "results": [r.to_json() for r in bench.results], "targets": ts,
           "notes": bench.notes}
    print_table(bench.results, ts, meta)
    return doc


def _fmt(x, digits=2) -> str:
    if x is None or x == "":
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def print_table(results: list[Result], ts: list[dict], meta: dict) -> None:
    cols = ("scenario", "driver", "ops/s", "unit", "p50", "p95", "p99", "p99.9", "errors",
            "x echo", "x redis", "cpu lg/srv/redis", "srv us/op", "other")
    rows = []
    for r in results:
        if r.skipped:
            rows.append((r.scenario, f"skipped: {r.skipped}", *[""] * (len(cols) - 2)))
            continue
        lat = r.latency_ms
        cpu = "/".join(_fmt(x, 2) for x in (r.loadgen_cpu, r.server_cpu, r.redis_cpu))
        rows.append((r.scenario, r.driver[:44], _fmt(r.throughput, 0), r.unit,
                     _fmt(lat.get("p50")), _fmt(lat.get("p95")), _fmt(lat.get("p99")),
                     _fmt(lat.get("p99.9")), _fmt(r.errors), _fmt(r.ratios.get("vs_grpc_echo")),
                     _fmt(r.ratios.get("vs_redis_limit"), 3), cpu,
                     _fmt(r.extra.get("server_cpu_us_per_op"), 0),
                     _fmt(r.extra.get("other_load_cores"))))
    widths = [max(len(str(row[i])) for row in [cols, *rows]) for i in range(len(cols))]
    line = "  ".join("{:<%d}" % w if i < 2 or i == 3 else "{:>%d}" % w
                     for i, w in enumerate(widths))
    out = click.echo
    out("")
    out(f"Benchmark ({meta['profile']['name']}) on {meta['host']}: {meta['cores']} cores, "
        f"{meta['cpu']}; load average at start {meta['load_average_at_start']}")
    out("latency in ms; x echo = throughput / the echo server's (same driver); x redis = "
        "heartbeats/s / redis-benchmark -P 16 on heartbeat.lua; cpu in cores "
        "(load generator / server / redis); srv us/op = server CPU per operation; other = "
        "cores busy with anything else on the machine (other users)")
    out(line.format(*cols))
    out(line.format(*("-" * w for w in widths)))
    for row in rows:
        out(line.format(*row))
    extras = []
    for r in results:
        if r.skipped:
            continue
        e = r.extra
        if "redis_us_per_call" in e and e["redis_us_per_call"] is not None:
            s = f"{r.scenario}: Redis {e['redis_us_per_call']:,.0f} us/call"
            s += f" ({e.get('scripts_per_call', 0)} scripts)"
            if e.get("sinter_us_per_call") is not None:
                s += (f"; plain SINTER of {e['sinter_set_size']:,}-member sets "
                      f"{e['sinter_us_per_call']:,.0f} us")
            extras.append(s)
        if "bytes_per_agent" in e:
            extras.append(f"{r.scenario}: {e['bytes_per_agent']:,.0f} B/agent, breakdown "
                          f"{e['breakdown_bytes_per_agent']} (hash {e['agent_hash_encoding']})")
        if "p99_ratio" in e:
            d = e.get("discover", {})
            extras.append(f"{r.scenario}: heartbeat p99 x{e['p99_ratio']} with "
                          f"{d.get('rate', 0):.0f} Discover/s (their p99 "
                          f"{d.get('latency_ms', {}).get('p99', 0):.1f} ms)")
        if "watchers" in e:
            extras.append(f"{r.scenario}: {e['watchers']} watchers x {e['writes']} writes, "
                          f"{e['watchers_complete']} watchers got every change")
        for note in r.notes:
            extras.append(f"{r.scenario}: {note}")
    if extras:
        out("")
        for s in extras:
            out("  " + s)
    out("")
    out("Targets (issue 5):")
    for t in ts:
        mark = {True: "MET   ", False: "MISSED", None: "  -   "}[t["met"]]
        out(f"  {mark} {t['target']}: {t['measured']} (goal {t['goal']})"
            + (f"  [{t['detail']}]" if t["detail"] else ""))


def chart(doc: dict, path: Path) -> Path:
    """Throughput per scenario (log scale, ceilings marked) and latency percentiles."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["results"] if not r["skipped"] and r["ops"]
            and r["group"] != "memory"]
    names = [r["scenario"] for r in rows]
    height = max(4.0, 0.32 * len(rows) + 1.5)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, height), sharey=True)
    y = list(range(len(rows)))
    colors = ["tab:gray" if r["group"] == "ceiling" else "tab:blue" for r in rows]
    ax1.barh(y, [r["throughput_per_s"] for r in rows], color=colors)
    ax1.set_xscale("log")
    ax1.set_yticks(y)
    ax1.set_yticklabels([f"{n} ({r['unit']})" for n, r in zip(names, rows)], fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("throughput per second (log); gray = ceilings")
    for i, r in enumerate(rows):
        ratios = [f"{r['ratios'][key]:.2f}x {name}" for key, name in
                  (("vs_grpc_echo", "echo"), ("vs_redis_limit", "redis")) if key in r["ratios"]]
        label = f"{r['throughput_per_s']:,.0f}" + (f"  ({', '.join(ratios)})" if ratios else "")
        ax1.text(r["throughput_per_s"], i, " " + label, va="center", fontsize=7)
    marks = (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red"),
             ("p99.9", "tab:purple"))
    for offset, (key, color) in zip((-0.3, -0.1, 0.1, 0.3), marks):
        xs = [r["latency_ms"].get(key) for r in rows]
        ax2.barh([i + offset for i, x in enumerate(xs) if x], [x for x in xs if x],
                 height=0.2, color=color, label=key)
    ax2.set_xscale("log")
    ax2.set_xlabel("latency ms (log)")
    ax2.legend(loc="lower right", fontsize=8)
    meta = doc["meta"]
    fig.suptitle(f"service-registry bench ({meta['profile']['name']}), {meta['date']}, "
                 f"{meta['cores']} cores, load avg {meta['load_average_at_start']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(doc: dict) -> str:
    """The results and targets of a results.json as Markdown tables (for RESULTS.md)."""
    out = ["| scenario | driver | ops/s | unit | p50 | p95 | p99 | p99.9 | errors | x echo "
           "| x redis | CPU loadgen/server/redis | server us/op | other load |",
           "|" + "---|" * 14]
    for r in doc["results"]:
        if r["skipped"]:
            out.append(f"| {r['scenario']} | skipped: {r['skipped']} |" + " |" * 12)
            continue
        lat = r["latency_ms"]
        cpu = "/".join(_fmt(r[k], 2) for k in ("loadgen_cpu", "server_cpu", "redis_cpu"))
        out.append("| " + " | ".join((
            r["scenario"], r["driver"], _fmt(r["throughput_per_s"], 0), r["unit"],
            _fmt(lat.get("p50")), _fmt(lat.get("p95")), _fmt(lat.get("p99")),
            _fmt(lat.get("p99.9")), _fmt(r["errors"]), _fmt(r["ratios"].get("vs_grpc_echo")),
            _fmt(r["ratios"].get("vs_redis_limit"), 3), cpu,
            _fmt(r["extra"].get("server_cpu_us_per_op"), 0),
            _fmt(r["extra"].get("other_load_cores")))) + " |")
    out += ["", "| target | goal | measured | met | detail |", "|---|---|---|---|---|"]
    for t in doc["targets"]:
        met = {True: "**met**", False: "**missed**", None: "not judged"}[t["met"]]
        out.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {met} | {t['detail']} |")
    return "\n".join(out)


if __name__ == "__main__":
    import json
    import sys
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
