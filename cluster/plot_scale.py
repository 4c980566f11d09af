#!/usr/bin/env python3
"""Plots cluster/scale's CSV: tokens/s vs world size per link rate (LoRA vs full fine-tuning),
and the share of step time spent in communication. Repeats of a configuration are folded into
their median; the bars of the first plot span their minimum to maximum."""
import csv, sys, os
from statistics import median
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = list(csv.DictReader(open(sys.argv[1])))
out = sys.argv[2]
cases = {}
for r in rows:
    cases.setdefault((r["rate"], r["method"], int(r["world"])), []).append(r)
rates = sorted({k[0] for k in cases})
methods = sorted({k[1] for k in cases})

fig, ax = plt.subplots(figsize=(6.5, 4.2))
for rate in rates:
    for m in methods:
        ws = sorted(w for (ra, me, w) in cases if ra == rate and me == m)
        if not ws:
            continue
        tps = [[float(r["tokens_per_s"]) for r in cases[(rate, m, w)]] for w in ws]
        mid = [median(t) for t in tps]
        err = [[mi - min(t) for mi, t in zip(mid, tps)], [max(t) - mi for mi, t in zip(mid, tps)]]
        ax.errorbar(ws, mid, yerr=err, marker="o", capsize=3, linestyle="-" if m == "lora" else "--", label=f"{m}, {rate}")
ax.set_xlabel("ranks (one per simulated host)"); ax.set_ylabel("tokens/s (whole job)")
ax.set_xticks(sorted({k[2] for k in cases}))
ax.set_title("Data-parallel scaling on the simulated cluster (fixed global batch)"); ax.grid(alpha=.3); ax.legend(fontsize=8)
fig.tight_layout(); fig.savefig(os.path.join(out, "tokens_per_s.png"), dpi=110)

fig, ax = plt.subplots(figsize=(6.5, 4.2))
labels, sync, act = [], [], []
for key in sorted(cases, key=lambda k: (k[0], k[1], k[2])):
    g = cases[key]
    sps = median(float(r["seconds_per_step"]) for r in g)
    labels.append(f"{key[1]}\n{key[0]} ×{key[2]}")
    sync.append(100 * median(float(r["grad_sync_s"]) for r in g) / sps)
    act.append(100 * median(float(r["activation_comm_s"]) for r in g) / sps)
x = range(len(labels))
ax.bar(x, sync, color=["tab:blue" if l.startswith("lora") else "tab:orange" for l in labels], label="gradient AllReduce")
ax.bar(x, act, bottom=sync, color="tab:gray", label="TP activations")
ax.set_xticks(list(x)); ax.set_xticklabels(labels, fontsize=6, rotation=60)
ax.set_ylabel("communication share of step time (%)"); ax.set_title("Where the step time goes (LoRA blue, full orange)")
ax.legend(fontsize=8)
fig.tight_layout(); fig.savefig(os.path.join(out, "comm_share.png"), dpi=110)
print(f"wrote {out}/tokens_per_s.png and {out}/comm_share.png")
