#!/usr/bin/env python3
"""Draws a soak run's CSV (connect-loadgen --sample-secs 10 --csv FILE) as one PNG: RSS of each
process, delivery latency (p50, p99) per interval, and throughput with messaging's consumer lag.

    scripts/plot-soak.py .local/soak/soak.csv .local/soak/soak.png

matplotlib comes from the project's cache venv (scripts/soak.sh installs it, pinned)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    with open(src) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{src}: no rows")
    num = lambda v: float(v) if v not in ("", None) else float("nan")  # noqa: E731
    t = [num(r["t_s"]) / 60 for r in rows]
    fig, (mem, lat, load) = plt.subplots(3, 1, figsize=(11, 11), sharex=True)
    mem.set_prop_cycle(color=plt.cm.tab20.colors)
    every = round(float(rows[1]["t_s"]) - float(rows[0]["t_s"])) if len(rows) > 1 else 0
    for col in rows[0]:
        if col.startswith("rss_mib:"):
            mem.plot(t, [num(r[col]) for r in rows], label=col.split(":", 1)[1])
    mem.set_ylabel("RSS (MiB)")
    mem.set_yscale("log")
    mem.legend(fontsize=7, ncol=3, loc="upper left")
    mem.set_title(f"Soak: RSS per process, delivery latency, throughput and lag (every {every} s)")
    lat.plot(t, [num(r["delivered_p50_ms"]) for r in rows], label="delivered p50")
    lat.plot(t, [num(r["delivered_p99_ms"]) for r in rows], label="delivered p99")
    lat.plot(t, [num(r["accepted_p99_ms"]) for r in rows], label="accepted p99", alpha=0.6)
    lat.set_ylabel("ms")
    lat.set_ylim(bottom=0)
    lat.legend(fontsize=8, loc="upper left")
    load.plot(t, [num(r["delivered_per_s"]) for r in rows], label="delivered msg/s")
    load.plot(t, [num(r["sent_per_s"]) for r in rows], label="sent msg/s", alpha=0.6)
    load.set_ylabel("msg/s")
    load.set_xlabel("minutes")
    lag = load.twinx()
    lag.plot(t, [num(r["incoming_lag"]) for r in rows], color="tab:red", label="incoming lag (records)")
    lag.set_ylabel("lag (records)", color="tab:red")
    lag.set_ylim(bottom=0)
    load.set_ylim(bottom=0)
    load.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(dst, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
