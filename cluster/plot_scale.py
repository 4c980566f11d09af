#!/usr/bin/env python3
"""Plots cluster/scale's CSV: tokens/s vs world size per link rate (LoRA vs full fine-tuning),
and the share of step time spent in communication."""
import csv, sys, os
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = list(csv.DictReader(open(sys.argv[1])))
out = sys.argv[2]
rates = sorted({r["rate"] for r in rows})
methods = sorted({r["method"] for r in rows})
fig, ax = plt.subplots(figsize=(6.5, 4.2))
for rate in rates:
    for m in methods:
        pts = sorted((int(r["world"]), float(r["tokens_per_s"])) for r in rows if r["rate"] == rate and r["method"] == m)
        if pts:
            ax.plot(*zip(*pts), marker="o", linestyle="-" if m == "lora" else "--", label=f"{m}, {rate}")
ax.set_xlabel("ranks (one per simulated host)"); ax.set_ylabel("tokens/s (whole job)")
ax.set_title("Data-parallel scaling on the simulated cluster"); ax.grid(alpha=.3); ax.legend(fontsize=8)
fig.tight_layout(); fig.savefig(os.path.join(out, "tokens_per_s.png"), dpi=110)

fig, ax = plt.subplots(figsize=(6.5, 4.2))
labels, shares = [], []
for r in rows:
    sps = float(r["seconds_per_step"])
    comm = float(r["grad_sync_s"]) + float(r["activation_comm_s"])
    labels.append(f'{r["method"]}\n{r["rate"]} ×{r["world"]}'); shares.append(100 * comm / sps if sps > 0 else 0)
ax.bar(range(len(shares)), shares, color=["tab:blue" if "lora" in l else "tab:orange" for l in labels])
ax.set_xticks(range(len(shares))); ax.set_xticklabels(labels, fontsize=6, rotation=60)
ax.set_ylabel("communication share of step time (%)"); ax.set_title("Where the step time goes")
fig.tight_layout(); fig.savefig(os.path.join(out, "comm_share.png"), dpi=110)
print(f"wrote {out}/tokens_per_s.png and {out}/comm_share.png")
