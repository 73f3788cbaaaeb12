"""The documentation's measured tables and plots, generated from the result files.

    python -m benchmarks.docs_results            # write docs/results/*.md, docs/_static/results/*.png
                                                 # and the README's headline table
    python -m benchmarks.docs_results --check    # write nothing; exit 1 and list the tables that
                                                 # differ from what the result files give
    python -m benchmarks.docs_results --backfill_provenance   # record, in each result file's meta,
                                                 # the commit that committed its measurement

Every number in a table or plot comes from a file under ``benchmarks/results/`` (JSON with a
``meta`` block, or an accuracy report's markdown where only that was kept). Each table is
followed by a provenance line: date, machine, command and commit. The README's headline table
is written between ``<!-- results:headline:start -->`` and ``<!-- results:headline:end -->``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEADLINE_START = "<!-- results:headline:start -->"
HEADLINE_END = "<!-- results:headline:end -->"

OURS = ["LRURec", "LinRec", "LinRecBERT", "ELASTIC", "SoftmaxSASRec"]
RECBOLE = ["SASRec", "GRU4Rec", "LightSANs"]
# One colour per model in every plot (matplotlib's tab10, picked so that no two of ours are
# near each other); a variant of ELASTIC gets a colour of its own; RecBole's models are grey.
COLOURS = {
    "LRURec": "#1f77b4",                 # tab:blue
    "LinRec": "#ff7f0e",                 # tab:orange
    "LinRecBERT": "#9467bd",             # tab:purple
    "ELASTIC": "#2ca02c",                # tab:green
    "SoftmaxSASRec": "#d62728",          # tab:red
    "ELASTIC@use_imr=False": "#bcbd22",  # tab:olive
    "ELASTIC@memory_stride=1": "#17becf",  # tab:cyan
    "SASRec": "#555555",
    "GRU4Rec": "#8c8c8c",
    "LightSANs": "#b5b5b5",
}
RECBOLE_STYLE = {"SASRec": ("s", ":"), "GRU4Rec": ("^", ":"), "LightSANs": ("v", ":")}


# -- reading --------------------------------------------------------------------------------
def load(rel):
    return json.loads((RESULTS / rel).read_text())


def read_accuracy_md(rel):
    """An accuracy report kept only as markdown: its command, date and table rows."""
    text = (RESULTS / rel).read_text()
    meta = {"command": re.search(r"- command: `([^`]*)`", text).group(1),
            "date_utc": re.search(r"- date \(UTC\): (.*)", text).group(1).strip()}
    side = (RESULTS / rel).parent / "provenance.json"  # what the markdown does not record
    if side.exists():
        extra = json.loads(side.read_text())
        meta.update({k: extra[k] for k in ("results_committed_in", "machine") if k in extra})
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        row = dict(zip(head, cells))
        for k, v in row.items():
            try:
                row[k] = float(v) if "." in v else int(v)
            except ValueError:
                pass
        rows.append(row)
    return {"meta": meta, "rows": rows}


def variant_floor(label):
    return f"{label},floor" if "@" in label else f"{label}@floor"


def is_floor(label):
    return "@" in label and "floor" in label.split("@", 1)[1].split(",")


def base_name(label):
    return label.split("@", 1)[0]


def display(label):
    """``ELASTIC@use_imr=False`` -> ``ELASTIC, use_imr=False``; RecBole's models say so."""
    name, _, items = label.partition("@")
    shown = f"{name} (RecBole)" if name in RECBOLE else name
    return f"{shown}, {items.replace(',', ', ')}" if items else shown


def colour(label):
    return COLOURS.get(label, COLOURS.get(base_name(label), "#000000"))


class Efficiency:
    """The points of one ``benchmarks.efficiency`` run, by model, kind and length."""

    def __init__(self, rel):
        self.rel = rel
        self.data = load(rel)
        self.meta = self.data["meta"]
        self.points = {(p["model"], p["kind"], p["seq_len"]): p for p in self.data["points"]}
        self.lengths = sorted({p["seq_len"] for p in self.data["points"]})
        self.labels = [m for m in self.meta["args"]["models"] if not is_floor(m)]

    def point(self, label, kind, length):
        return self.points.get((label, kind, length))

    def ms(self, label, kind, length):
        p = self.point(label, kind, length)
        if p is None or p["status"] != "ok" or p["time_s_median"] is None:
            return None
        return p["time_s_median"] * 1000

    def ratio(self, label, other, kind, length):
        a, b = self.ms(label, kind, length), self.ms(other, kind, length)
        return None if a is None or b is None else a / b

    def floor_ratio(self, label, kind, length):
        return self.ratio(label, variant_floor(label), kind, length)

    def mib(self, label, kind, length):
        p = self.point(label, kind, length)
        return None if p is None or p.get("peak_mem_bytes") is None else p["peak_mem_bytes"] / 2**20

    def status(self, label, kind, length):
        p = self.point(label, kind, length)
        return "–" if p is None else {"ok": "–", "too_slow": "too slow", "oom": "OOM"}.get(
            p["status"], p["status"])

    def column(self, kind, length):
        p = next((q for (m, k, L), q in self.points.items() if k == kind and L == length), None)
        if p is not None and p["setting"] == "tokens":
            return f"L={length} (B={p['batch_size']})"
        return f"L={length}"


# -- formats --------------------------------------------------------------------------------
def three(x):
    """About three significant digits."""
    if x is None:
        return None
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 \
        else f"{x:.3f}"


def ratio(x):
    return None if x is None else f"{x:.2f}×"


def metric(x):
    return None if x is None else f"{x:.4f}"


def table(headers, rows, align=None):
    from benchmarks.report import markdown_table

    return markdown_table(headers, [["–" if c is None else c for c in r] for r in rows], align)


def machine(meta):
    env = meta.get("environment", {})
    threads = env.get("torch_threads")
    if env.get("gpu"):
        where = f"{env['gpu']} ({env.get('cpu_count')} CPUs)"
    elif env:
        where = (f"CPU: {env.get('processor', '?')}, {env.get('cpu_count')} cores, "
                 f"{threads} torch thread{'s' if threads != 1 else ''}")
    else:
        where = "machine not recorded in the file"
    if env.get("torch"):
        where += f", torch {env['torch']}"
    return where


def commit_text(meta):
    commit = meta.get("commit") or meta.get("environment", {}).get("commit")
    if commit:
        return f"code at commit `{commit}`"
    if meta.get("results_committed_in"):
        return f"results committed in `{meta['results_committed_in']}`"
    return "commit not recorded"


def provenance(meta, label=None):
    """One line: date, machine, command, commit."""
    lead = f"{label}: m" if label else "M"
    date = meta.get("date_utc") or meta.get("date") or "date not recorded"
    where = meta.get("machine") or machine(meta)
    return (f"*{lead}easured {date}{' UTC' if 'date_utc' in meta else ''} on {where}; "
            f"command `{meta['command']}`; {commit_text(meta)}.*")


def sources(*pairs):
    """Provenance lines, one per (label, meta) source."""
    if len(pairs) == 1:
        return provenance(pairs[0][1])
    return "\n\n".join(provenance(meta, label) for label, meta in pairs)


def block(caption, tab, prov):
    return f"{caption}\n\n{tab}\n\n{prov}\n"


# -- efficiency tables ----------------------------------------------------------------------
def efficiency_tables(eff, kind, what, reference="SoftmaxSASRec", memory=False):
    """Time per step or call (× its floor), and × ``reference``: two tables, one source."""
    labels = [m for m in eff.labels if any(eff.ms(m, kind, L) for L in eff.lengths)]
    longest = eff.lengths[-1]
    rows = []
    for label in labels:
        cells = [display(label)]
        for L in eff.lengths:
            ms = eff.ms(label, kind, L)
            if ms is None:
                cells.append(eff.status(label, kind, L))
                continue
            fr = eff.floor_ratio(label, kind, L)
            cells.append(three(ms) if fr is None else f"{three(ms)} ({ratio(fr)})")
        if memory:
            cells.append(three(eff.mib(label, kind, longest)))
        rows.append(cells)
    heads = ["model"] + [eff.column(kind, L) for L in eff.lengths]
    if memory:
        heads.append(f"peak MiB, L={longest}")
    prov = provenance(eff.meta)
    out = [block(f"**{what}: ms, and in parentheses × the model's floor** (the same model "
                 "without its sequence mixer).", table(heads, rows), prov)]
    if any(eff.ms(reference, kind, L) for L in eff.lengths):
        rows = [[display(label)] + [ratio(eff.ratio(label, reference, kind, L))
                                    for L in eff.lengths]
                for label in labels if label != reference]
        out.append(block(f"**{what}: time × {reference}'s** (below 1: faster).",
                         table(["model"] + [eff.column(kind, L) for L in eff.lengths], rows),
                         prov))
    return "\n".join(out)


def errors_note(eff, kind):
    notes = sorted({f"{display(m)}: {p['note'].split(':')[0]}"
                    for (m, k, _), p in eff.points.items()
                    if k == kind and p["status"] == "error" and not is_floor(m) and p.get("note")})
    return notes


def efficiency_train_cpu():
    eff = Efficiency("efficiency_train_sdpa/efficiency.json")
    text = efficiency_tables(eff, "train", "CPU training step (forward, backward, optimiser "
                             "step; 16,384 tokens per batch)")
    if errors_note(eff, "train"):
        text += ("\nLinRecBERT is not in this table: it trains with the Cloze objective, and "
                 "this setting trains at every position (`train_mode: all_positions`), which "
                 "needs a causal encoder.\n")
    return text


def efficiency_inference_cpu():
    eff = Efficiency("efficiency_inference_sdpa/efficiency.json")
    return efficiency_tables(eff, "inference", "CPU inference call (batch of 16 histories "
                             "encoded, the last position scored against every item)")


def efficiency_lengths_cpu():
    eff = Efficiency("efficiency/efficiency.json")
    Ls = eff.lengths
    longest = Ls[-1]
    rows = []
    for label in eff.labels:
        mixer = None
        if eff.mib(label, "train", longest) is not None and \
                eff.mib(variant_floor(label), "train", longest) is not None:
            mixer = eff.mib(label, "train", longest) - eff.mib(variant_floor(label), "train",
                                                               longest)
        rows.append([display(label)] + [three(eff.ms(label, "train", L)) for L in Ls]
                    + [three(eff.mib(label, "train", longest)), three(mixer)]
                    + [three(eff.ms(label, "inference", L)) for L in Ls])
    heads = (["model"] + [f"train ms, L={L}" for L in Ls]
             + [f"train MiB, L={longest}", f"mixer MiB (model − floor), L={longest}"]
             + [f"inference ms, L={L}" for L in Ls])
    a = eff.meta["args"]
    return block(f"**Time and peak memory against the sequence length, CPU** (batch "
                 f"{a['batch_size']}, {a['n_items']:,} items, each model at its yaml defaults; "
                 "peak memory: what one training step allocates).", table(heads, rows),
                 provenance(eff.meta))


def gpu():
    parts = []
    for sub, what in [("train_fp32", "H200 training step, fp32"),
                      ("train_fp16", "H200 training step, fp16 autocast with a GradScaler"),
                      ("inference", "H200 inference call, fp32, batch of 16 histories")]:
        eff = Efficiency(f"gpu/{sub}/efficiency.json")
        kind = "inference" if sub == "inference" else "train"
        parts.append(efficiency_tables(eff, kind, what, memory=True))
    eff = Efficiency("gpu/train_fp32/efficiency.json")
    meta = eff.meta
    when = meta.get("results_committed_in") or meta.get("environment", {}).get("commit")
    head = (f"These GPU figures were measured on {meta['date_utc']} UTC (results committed in "
            f"`{when}`). The CUDA code paths changed after that run (the LRU scan's Triton "
            "kernel, for one), so they describe that commit, not necessarily the current "
            "code.\n")
    return head + "\n" + "\n".join(parts)


# -- accuracy tables ------------------------------------------------------------------------
def accuracy_rows(entries):
    """``entries``: (label, row); columns as in benchmarks.accuracy's report."""
    rows = [[label, r.get("train_mode"), r.get("epochs"), three(r.get("seconds_per_epoch")),
             metric(r.get("ndcg@10")), metric(r.get("hit@10")), metric(r.get("mrr@10")),
             metric(r.get("valid_ndcg@10"))] for label, r in entries]
    heads = ["model", "train mode", "epochs", "s / epoch", "test NDCG@10", "HR@10", "MRR@10",
             "valid NDCG@10"]
    return table(heads, rows)


def row_of(data, model):
    return next(r for r in data["rows"] if r["model"] == model)


def runs_block(caption, runs, model=None):
    """One accuracy row per ``(label, results)`` run (``model``'s row, or the run's only one),
    with each run's provenance under its label."""
    return block(caption, accuracy_rows([(lab, row_of(d, model) if model else d["rows"][0])
                                         for lab, d in runs]),
                 sources(*[(lab, d["meta"]) for lab, d in runs]))


def accuracy_ml100k():
    d = load("accuracy/accuracy.json")
    m = d["meta"]
    return block(f"**ml-100k, equal budget:** {m['time_budget']:.0f} s of training per model, "
                 "full ranking, history not excluded, test metrics at the best validation "
                 f"checkpoint, seed {m['seed']}, each model at its yaml defaults.",
                 accuracy_rows([(display(r["model"]), r) for r in d["rows"]]), provenance(m))


def ablation_elastic_stride():
    ab = "accuracy_elastic_stride/ablation/"
    runs = [("`memory_stride=1`", read_accuracy_md(ab + "ml-100k_stride1_15epochs.md")),
            ("`memory_stride=8` (default)", read_accuracy_md(ab + "ml-100k_stride8_15epochs.md")),
            ("`memory_stride=16`", read_accuracy_md(ab + "ml-100k_stride16_15epochs.md"))]
    first = runs_block("**ELASTIC's memory stride, ml-100k, 15 epochs** (seed 2020).", runs)
    runs1m = [("`memory_stride=1`", read_accuracy_md(ab + "ml-1m_stride1_300s.md")),
              ("`memory_stride=8` (default)", read_accuracy_md(ab + "ml-1m_stride8_300s.md"))]
    second = runs_block("**ELASTIC's memory stride, ml-1m, 300 s of training** (seed 2020).",
                        runs1m)
    budget = [("`memory_stride=1`", load("accuracy/accuracy.json")),
              ("`memory_stride=8` (default)", load("accuracy_elastic_stride/accuracy.json")),
              ("no interest memory (`use_imr=False`)",
               load("accuracy_elastic_noimr/accuracy.json"))]
    third = runs_block("**ELASTIC, ml-100k, 150 s of training** (the equal-budget setting).",
                       budget, "ELASTIC")
    tr = Efficiency("efficiency_train_elastic_stride/efficiency.json")
    tr2 = Efficiency("efficiency_train_elastic_stride_L2000/efficiency.json")
    inf = Efficiency("efficiency_inference_elastic_stride/efficiency.json")
    variants = [("ELASTIC", "`memory_stride=8` (default)"),
                ("ELASTIC@memory_stride=1", "`memory_stride=1`"),
                ("ELASTIC@use_imr=False", "no interest memory")]
    rows = [[lab] + [ratio(tr.floor_ratio(v, "train", L)) for L in tr.lengths]
            + [ratio(tr2.floor_ratio(v, "train", tr2.lengths[-1]))]
            + [ratio(inf.floor_ratio(v, "inference", L)) for L in inf.lengths]
            for v, lab in variants]
    heads = (["ELASTIC"] + [f"training, {tr.column('train', L)}" for L in tr.lengths]
             + [f"training, L={tr2.lengths[-1]}, second run"]
             + [f"inference, L={L}" for L in inf.lengths])
    fourth = block("**ELASTIC's cost × its floor, CPU**, by memory stride (training setting and "
                   "inference setting).", table(heads, rows),
                   sources(("training", tr.meta), ("training, second run", tr2.meta),
                           ("inference", inf.meta)))
    return "\n".join([first, second, third, fourth])


def ablation_elastic_noimr():
    acc = runs_block("**ELASTIC with and without its interest memory (IMR), ml-100k, 150 s of "
                     "training.** Both runs query the memory at every position "
                     "(`memory_stride=1`).",
                     [("ELASTIC, IMR on", load("accuracy/accuracy.json")),
                      ("ELASTIC, `use_imr=False`", load("accuracy_elastic_noimr/accuracy.json"))],
                     "ELASTIC")
    eff = Efficiency("efficiency/efficiency.json")
    L = eff.lengths[-1]
    rows = [[display(v), three(eff.ms(v, "train", L)), ratio(eff.floor_ratio(v, "train", L)),
             three(eff.mib(v, "train", L)), three(eff.ms(v, "inference", L)),
             ratio(eff.floor_ratio(v, "inference", L))]
            for v in ["ELASTIC", "ELASTIC@use_imr=False"]]
    cost = block(f"**Cost of the interest memory, CPU, L={L}** (batch "
                 f"{eff.meta['args']['batch_size']}).",
                 table(["model", "train ms", "× floor", "train MiB", "inference ms", "× floor"],
                       rows), provenance(eff.meta))
    return acc + "\n" + cost


def ablation_linrec_noncausal():
    return runs_block("**LinRec, causal (trained at every position) against non-causal (trained "
                      "on every prefix, RecBole's `augmented`), ml-100k, 150 s of training.**",
                      [("LinRec, causal", load("accuracy/accuracy.json")),
                       ("LinRec, `causal=False`", load("accuracy_linrec_noncausal/accuracy.json"))],
                      "LinRec")


def ablation_linrecbert_ft_ratio():
    runs = [(f"LinRecBERT, `ft_ratio={r}`", load(f"accuracy_linrecbert_ft_ratio/ft_{r}/"
                                                 "accuracy.json")) for r in ("0.0", "0.5")]
    return runs_block("**LinRecBERT's share of fine-tuning rows (`ft_ratio`), ml-100k, 40 "
                      "epochs.**", runs)


def memory_gradients():
    d = load("memory_gradients/memory_gradients.json")
    rows = [[f"{r['memory_size']:,}", r["L"], r["batch"], three(r["sparse_ms"]),
             three(r["dense_ms"]), ratio(r["dense_over_sparse"]),
             f"{three(r['sparse_state_mib'])} / {three(r['dense_state_mib'])}",
             f"{r['first_step_max_abs_diff']:.1e}"] for r in d["rows"]]
    heads = ["memory slots M", "L", "batch", "sparse + LazyAdam (ms)", "dense + Adam (ms)",
             "dense / sparse", "optimiser state, sparse / dense (MiB)",
             "first step, largest weight difference"]
    return block("**ELASTIC's memory bank: row-sparse gradients with LazyAdam against a dense "
                 "gradient with Adam** (one training step, CPU, median of "
                 f"{d['meta']['args']['repeats']} interleaved steps).", table(heads, rows),
                 provenance(d["meta"]))


def streaming():
    d = load("streaming/streaming.json")
    a = d["meta"]["args"]
    rows = [[r["model"], f"{r['length']:,}", three(r["full_ms"]), three(r["step_ms"]),
             ratio(r["speedup"]), three(r["build_ms"]), f"{r['max_abs_diff']:.1e}"]
            for r in d["rows"]]
    heads = ["model", "history length L", "re-encode the history (ms)", "one streaming step (ms)",
             "re-encode / step", "build_state (ms)", "largest score difference"]
    return block(f"**Scoring all items after one new interaction, CPU, batch {a['batch']}** "
                 f"(hidden {a['hidden_size']}, {a['n_layers']} layers, {a['n_items']:,} items, "
                 f"median of {a['repeats']} samples).", table(heads, rows,
                                                              ["l"] + ["r"] * 6),
                 provenance(d["meta"]))


def serve():
    d = load("serve/serve.json")
    a = d["meta"]["args"]
    rows = []
    for r in d["rows"]:
        per_post = r.get("events_per_post", 1)
        if r.get("status") != "ok":
            rows.append([r["model"], f"{r['history']:,}", r["mode"], per_post,
                         r.get("error", "error")] + [None] * 6)
            continue
        times = [three(r[k]) for k in ("post_p50_ms", "post_p99_ms", "recommend_p50_ms",
                                       "recommend_p99_ms")]
        versus = ratio(r["stream_over_reencode"]) if r["mode"] == "stream" else None
        floor = r.get("http_floor_per_s")
        rows.append([r["model"], f"{r['history']:,}", r["mode"], per_post,
                     f"{r['events_per_s']:.0f}", versus, f"{times[0]} / {times[1]}",
                     f"{times[2]} / {times[3]}", r["errors"], f"{r['mean_batch']:.1f}",
                     f"{floor:.0f}" if floor else None])
    heads = ["model", "history H", "mode", "events per POST", "events/s", "stream / reencode",
             "POST /events p50 / p99 (ms)", "GET /recommend p50 / p99 (ms)", "errors",
             "requests per micro-batch", "GET /health per s"]
    clients = a["clients"]
    return block(f"**Serving over HTTP on the loopback interface, CPU** ({a['users']:,} users "
                 f"of H random items; {clients} recommendation requests in flight: closed loops "
                 "each posting one event of each of 'events per POST' users in one request, "
                 "then asking for each of those users' top 10; "
                 f"{a['seconds']:g} s measured after {a['warmup']:g} s; hidden "
                 f"{a['hidden_size']}, {a['n_layers']} layers, {a['n_items']:,} items, "
                 f"{a['threads']} torch thread; events/s = event + recommendation cycles per "
                 "second; GET /health per s: the HTTP stack alone under as many clients, the "
                 "most any endpoint answers on this machine).",
                 table(heads, rows, ["l", "r", "l"] + ["r"] * 8), provenance(d["meta"]))


# -- reproduction ---------------------------------------------------------------------------
def _paper(value, paper):
    if value is None:
        return None
    return metric(value) if paper is None else f"{metric(value)} ({metric(paper)})"


def _budget(meta, row):
    threads = meta.get("environment", {}).get("torch_threads")
    return (f"{row['device'].upper()}, {threads} thread{'s' if threads != 1 else ''}, "
            f"{row['budget_s'] / 60:.0f} min")


def reproduction_rows(entries):
    rows = []
    for meta, r in entries:
        steps = f"{r['epochs']} ({r['steps']:,})" if r.get("steps") else f"{r['epochs']}"
        rows.append([{"lrurec": "LRURec's", "recbole": "RecBole's"}[r["protocol"]], r["model"],
                     _budget(meta, r), r["status"], steps, r.get("best_epoch"),
                     _paper(r.get("ndcg@10"), r.get("paper_ndcg@10")),
                     _paper(r.get("recall@10"), r.get("paper_recall@10")),
                     _paper(r.get("ndcg@20"), r.get("paper_ndcg@20")),
                     _paper(r.get("recall@20"), r.get("paper_recall@20")),
                     metric(r.get("mrr@10"))])
    heads = ["protocol", "model", "device, budget", "status", "epochs (steps)", "best epoch",
             "NDCG@10 (paper)", "Recall@10 (paper)", "NDCG@20 (paper)", "Recall@20 (paper)",
             "MRR@10"]
    return table(heads, rows)


def reproduction():
    cpu, old = load("reproduce_cpu/reproduce.json"), load("reproduce/reproduce.json")
    entries = [(cpu["meta"], r) for r in cpu["rows"]] + [(old["meta"], r) for r in old["rows"]]
    return block("**ml-1m reproduction**, test metrics at the best validation checkpoint; in "
                 "parentheses the LRURec paper's Table 3 (Yue et al., WSDM 2024; full ranking, "
                 "history excluded), where our SoftmaxSASRec sits next to the paper's SASRec. "
                 f"{cpu['meta']['dataset_check']}.",
                 reproduction_rows(entries),
                 sources(("first row", cpu["meta"]), ("other rows", old["meta"])))


def reproduction_same_time_order():
    runs = [(o, load(f"reproduce_same_time_order/{o}/reproduce.json"))
            for o in ("file", "item_id")]
    what = {"file": "`same_time_order: file` (RecBole's)",
            "item_id": "`same_time_order: item_id` (LRURec's code)"}
    rows = []
    for o, d in runs:
        r = d["rows"][0]
        last = ", ".join(metric(v) for _, v in r["valid_history"][-4:])
        rows.append([what[o], r["epochs"], metric(r["ndcg@10"]), metric(r["recall@10"]),
                     metric(r["mrr@10"]), last])
    heads = ["order of same-second ratings", "epochs", "test NDCG@10", "Recall@10", "MRR@10",
             "validation Recall@10, last 4 epochs"]
    return block(f"**Order of same-second ratings, LRURec, LRURec's protocol.** "
                 f"{runs[0][1]['meta']['dataset_check'].split(' (')[0]} (ml-1m users 1-2999 "
                 "with their real timestamps).", table(heads, rows),
                 sources(*[(o, d["meta"]) for o, d in runs]))


# -- the sweep ------------------------------------------------------------------------------
def sweep_lrurec_ml100k():
    d = load("sweep_lrurec_ml100k/sweep.json")
    rows = []
    for t in d["trials"]:
        asha = f"{t['asha_best_mrr@10']:.4f} ({t['asha_best_epoch']})"
        fifo = f"{t['fifo_best_mrr@10']:.4f} ({t['fifo_best_epoch']})"
        ran = f"{t['asha_epochs']}" + (", stopped" if t["asha_stopped"] else "")
        if t["asha_best_mrr@10"] == d["summary"]["asha"]["best"]:
            asha = f"**{asha}**"
        if t["fifo_best_mrr@10"] == d["summary"]["fifo"]["best"]:
            fifo = f"**{fifo}**"
        wd = "0" if t["weight_decay"] == 0 else f"{t['weight_decay']:.0e}".replace("e-0", "e-")
        rows.append([t["trial"], f"{t['learning_rate']:.5f}", t["hidden_dropout_prob"],
                     t["lru_dropout_prob"], wd, asha, ran, fifo])
    heads = ["trial", "learning_rate", "hidden_dropout_prob", "lru_dropout_prob",
             "weight_decay", "ASHA: best MRR@10 (epoch)", "ASHA: epochs run",
             "FIFO: best MRR@10 (epoch)"]
    s = d["summary"]
    a, f = s["asha"], s["fifo"]
    test = ", ".join(f"{k} {v:.4f}" for k, v in s["selected_test"].items())
    summary = [["trials stopped early", f"{a['stopped']} of {s['trials']}", f["stopped"]],
               ["trial-epochs trained", f"{a['trial_epochs']} of {s['trial_epochs_max']}",
                f["trial_epochs"]],
               ["wall time", f"{a['wall_s']} s", f"{f['wall_s']} s"],
               ["selected (validation MRR@10)", f"trial {a['selected']}, {a['best']:.4f}",
                f"trial {f['selected']}, {f['best']:.4f}"],
               ["its test metrics", test, "the same" if a["selected"] == f["selected"] else "–"]]
    e = d["earlier_asha_run"]
    prov = provenance(d["meta"])
    return (block("**Ray Tune sweep of LRURec on ml-100k**: 8 sampled configurations, 8 epochs "
                  "each, ASHA against FIFO (every trial to the end) on the same samples.",
                  table(heads, rows), prov) + "\n"
            + block("**ASHA against FIFO, same 8 configurations.**",
                    table(["", "ASHA", "FIFO"], summary), prov) + "\n"
            + f"An earlier run of the same ASHA sweep stopped {e['stopped']} trials as well, "
              f"trained {e['trial_epochs']} trial-epochs in {e['wall_s']} s and selected trial "
              f"{e['selected']} ({e['best']:.4f}): {e['why']}\n")


# -- the headline ---------------------------------------------------------------------------
def headline():
    train = Efficiency("efficiency_train_sdpa/efficiency.json")
    lengths = Efficiency("efficiency/efficiency.json")
    acc = load("accuracy/accuracy.json")
    acc_elastic = load("accuracy_elastic_stride/accuracy.json")
    cpu, old = load("reproduce_cpu/reproduce.json"), load("reproduce/reproduce.json")
    L = train.lengths[-1]
    ref = "SoftmaxSASRec"
    rows, fallback = [], False
    for model in OURS:
        fr, sr = train.floor_ratio(model, "train", L), train.ratio(model, ref, "train", L)
        mark = ""
        if fr is None and lengths.ms(model, "train", L) is not None:
            # another run, of an older SoftmaxSASRec: only the ratio to its own floor
            fr, sr = lengths.floor_ratio(model, "train", L), None
            mark, fallback = " ᵃ", True
        a = row_of(acc_elastic if model == "ELASTIC" else acc, model)
        repro = [r for d in (cpu, old) for r in d["rows"]
                 if r["model"] == model and r["protocol"] == "lrurec"]
        r1m = _paper(repro[0]["ndcg@10"], repro[0].get("paper_ndcg@10")) if repro else None
        rows.append([model, None if fr is None else ratio(fr) + mark,
                     None if sr is None else ratio(sr) + mark, metric(a["ndcg@10"]), r1m])
    heads = ["model", f"CPU training step × its floor, L={L}", f"× {ref}, L={L}",
             f"ml-100k test NDCG@10, {acc['meta']['time_budget']:.0f} s budget",
             "ml-1m test NDCG@10 (paper)"]
    note = ("Floor: the same model without its sequence mixer. Training: "
            f"{train.meta['date_utc']} UTC, `{train.meta['command']}`")
    if fallback:
        note += (f"; ᵃ LinRecBERT trains with the Cloze objective, which that setting does not "
                 f"run: its ratio comes from the length sweep, batch "
                 f"{lengths.meta['args']['batch_size']}, {lengths.meta['date_utc']} UTC")
    note += (f". ml-100k: `{acc['meta']['command']}` (ELASTIC: its default `memory_stride` 8, "
             f"`{acc_elastic['meta']['command']}`). ml-1m: LRURec's protocol on a CPU, "
             "budget-limited runs (LRURec 60 min, SoftmaxSASRec 20 min), paper: LRURec Table 3. "
             "Details and provenance in the documentation's Performance and Reproduction pages.")
    return table(heads, rows) + "\n\n" + note + "\n"


# -- plots ----------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_axes(ax, lengths, ylabel):
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda y, _: f"{y:,.10g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2, 5)))
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xticks(lengths)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sequence length L (items)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def _series(ax, eff, model, kind, **style):
    pts = [(L, eff.ms(model, kind, L)) for L in eff.lengths if eff.ms(model, kind, L)]
    if pts:
        ax.plot(*zip(*pts), **style)


def plot_per_model(effs, kind, path, title, ylabel, models=None):
    """One panel per model: the model, its floor dashed in the same colour and SoftmaxSASRec
    for reference; ``effs`` is a list of (row title, Efficiency): one row of panels each."""
    plt = _plt()
    models = models or [m for m in OURS if any(e.ms(m, kind, L) for _, e in effs
                                               for L in e.lengths)]
    ncols = len(models)
    fig, axes = plt.subplots(len(effs), ncols, figsize=(3.3 * ncols, 3.2 * len(effs) + 0.9),
                             sharey="row", squeeze=False)
    for row, (row_title, eff) in enumerate(effs):
        for col, model in enumerate(models):
            ax = axes[row][col]
            if model != "SoftmaxSASRec":
                _series(ax, eff, "SoftmaxSASRec", kind, color=colour("SoftmaxSASRec"),
                        marker="o", ms=3, lw=1, alpha=0.5, label="SoftmaxSASRec (reference)")
            for base in RECBOLE:
                if model == "SoftmaxSASRec" and base == "SASRec":
                    _series(ax, eff, base, kind, color=colour(base), marker="s", ms=3, lw=1,
                            ls=":", label="SASRec (RecBole)")
            _series(ax, eff, model, kind, color=colour(model), marker="o", lw=2, label=model)
            _series(ax, eff, variant_floor(model), kind, color=colour(model), marker="o",
                    ms=3, lw=1.5, ls="--", label=f"{model}'s floor (no mixer)")
            _log_axes(ax, eff.lengths, ylabel if col == 0 else "")
            ax.set_title(model if len(effs) == 1 else f"{model} — {row_title}", fontsize=10,
                         color=colour(model), fontweight="bold")
    from matplotlib.lines import Line2D

    proxies = [Line2D([], [], color="#333333", lw=2, marker="o", label="the panel's model"),
               Line2D([], [], color="#333333", lw=1.5, ls="--", marker="o", ms=3,
                      label="its floor: the same model without its sequence mixer"),
               Line2D([], [], color=colour("SoftmaxSASRec"), lw=1, alpha=0.5, marker="o", ms=3,
                      label="SoftmaxSASRec (softmax reference)")]
    if any(e.ms("SASRec", kind, L) for _, e in effs for L in e.lengths):
        proxies.append(Line2D([], [], color=colour("SASRec"), lw=1, ls=":", marker="s", ms=3,
                              label="SASRec (RecBole)"))
    fig.legend(handles=proxies, loc="lower center", ncol=len(proxies), fontsize=8,
               frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if len(effs) == 1 else 0.04, 1, 1))
    _save(fig, path, plt)


def plot_lengths(eff, path):
    """The length sweep: our models (top) and RecBole's baselines in grey (bottom), training
    time, training peak memory and inference time."""
    plt = _plt()
    panels = [("train", "ms", "training step, ms"), ("train", "mib", "training step, peak MiB"),
              ("inference", "ms", "inference call, ms")]
    groups = [("ours", [m for m in OURS if m in eff.labels]),
              ("RecBole's (grey)",
               [m for m in RECBOLE if m in eff.labels] + ["SoftmaxSASRec", "LRURec"])]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.6), sharey="col")
    for row, (name, models) in enumerate(groups):
        for col, (kind, what, ylabel) in enumerate(panels):
            ax = axes[row][col]
            for m in models:
                get = eff.ms if what == "ms" else eff.mib
                pts = [(L, get(m, kind, L)) for L in eff.lengths if get(m, kind, L)]
                if not pts:
                    continue
                marker, ls = RECBOLE_STYLE.get(m, ("o", "-"))
                ax.plot(*zip(*pts), color=colour(m), marker=marker, ls=ls,
                        lw=2 if m not in RECBOLE else 1.5, label=display(m))
            _log_axes(ax, eff.lengths, ylabel)
            ax.set_title(f"{ylabel} — {name}" if col == 0 else ylabel, fontsize=9)
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"CPU, batch {eff.meta['args']['batch_size']}: cost against sequence length",
                 fontsize=11)
    fig.tight_layout()
    _save(fig, path, plt)


def plot_reproduction(path):
    plt = _plt()
    cpu, old = load("reproduce_cpu/reproduce.json"), load("reproduce/reproduce.json")
    ties = [(o, load(f"reproduce_same_time_order/{o}/reproduce.json")) for o in ("file", "item_id")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    for meta, r, ls, what in [(cpu["meta"], cpu["rows"][0], "-", None)] + \
            [(old["meta"], r, "--", None) for r in old["rows"] if r["protocol"] == "lrurec"]:
        ep, val = zip(*r["valid_history"])
        ax.plot(ep, val, color=colour(r["model"]), ls=ls, marker="o", ms=2.5,
                label=f"{r['model']}, {_budget(meta, r)}")
    for model, paper in [("LRURec", cpu["rows"][0].get("paper_recall@10"))]:
        if paper:
            ax.axhline(paper, color=colour(model), lw=1, ls=":",
                       label=f"{model}, paper's test Recall@10")
    ax.set_title("LRURec's protocol (history excluded)", fontsize=10)
    ax.set_ylabel("validation Recall@10")
    ax = axes[1]
    for r in old["rows"]:
        if r["protocol"] == "recbole":
            ep, val = zip(*r["valid_history"])
            ax.plot(ep, val, color=colour(r["model"]), marker="o", ms=2.5,
                    label=f"{r['model']}, {_budget(old['meta'], r)}")
    ax.set_title("RecBole's protocol (history kept)", fontsize=10)
    ax.set_ylabel("validation NDCG@10")
    ax = axes[2]
    for (o, d), ls in zip(ties, ["-", "--"]):
        r = d["rows"][0]
        ep, val = zip(*r["valid_history"])
        ax.plot(ep, val, color=colour("LRURec"), ls=ls, marker="o", ms=2.5,
                label=f"same_time_order: {o}")
    ax.set_title("LRURec, ml-1m users 1-2999, real timestamps", fontsize=10)
    ax.set_ylabel("validation Recall@10")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("ml-1m: validation metric against epoch (the selection metric of each protocol)",
                 fontsize=11)
    fig.tight_layout()
    _save(fig, path, plt)


def _save(fig, path, plt):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plots(static, names=None):
    """Every plot (or those in ``names``), written into folder ``static``; returns their
    paths."""
    static = Path(static)
    cpu_train = Efficiency("efficiency_train_sdpa/efficiency.json")
    cpu_inf = Efficiency("efficiency_inference_sdpa/efficiency.json")
    jobs = {
        "efficiency_train_cpu.png": lambda p: plot_per_model(
            [("", cpu_train)], "train", p, "CPU training step at 16,384 tokens per batch "
            "(model solid, its floor dashed)", "ms per training step"),
        "efficiency_inference_cpu.png": lambda p: plot_per_model(
            [("", cpu_inf)], "inference", p, "CPU inference, batch of 16 histories (model "
            "solid, its floor dashed)", "ms per batch"),
        "efficiency_lengths_cpu.png": lambda p: plot_lengths(
            Efficiency("efficiency/efficiency.json"), p),
        "gpu_train.png": lambda p: plot_per_model(
            [("fp32", Efficiency("gpu/train_fp32/efficiency.json")),
             ("fp16 AMP", Efficiency("gpu/train_fp16/efficiency.json"))], "train", p,
            "NVIDIA H200 training step at 16,384 tokens per batch (model solid, its floor "
            "dashed)", "ms per training step"),
        "gpu_inference.png": lambda p: plot_per_model(
            [("", Efficiency("gpu/inference/efficiency.json"))], "inference", p,
            "NVIDIA H200 inference, batch of 16 histories (model solid, its floor dashed)",
            "ms per batch"),
        "reproduction_curves.png": plot_reproduction,
    }
    written = []
    for name, job in jobs.items():
        if names is not None and name not in names:
            continue
        job(static / name)
        written.append(static / name)
    return written


# -- driver ---------------------------------------------------------------------------------
TABLES = {
    "headline": headline,
    "efficiency_train_cpu": efficiency_train_cpu,
    "efficiency_inference_cpu": efficiency_inference_cpu,
    "efficiency_lengths_cpu": efficiency_lengths_cpu,
    "gpu": gpu,
    "accuracy_ml100k": accuracy_ml100k,
    "ablation_elastic_stride": ablation_elastic_stride,
    "ablation_elastic_noimr": ablation_elastic_noimr,
    "ablation_linrec_noncausal": ablation_linrec_noncausal,
    "ablation_linrecbert_ft_ratio": ablation_linrecbert_ft_ratio,
    "memory_gradients": memory_gradients,
    "reproduction": reproduction,
    "reproduction_same_time_order": reproduction_same_time_order,
    "sweep_lrurec_ml100k": sweep_lrurec_ml100k,
    "streaming": streaming,
    "serve": serve,
}
GENERATED = ("<!-- generated by `python -m benchmarks.docs_results` from benchmarks/results/; "
             "do not edit -->\n\n")


def tables():
    """``{name: markdown}`` of every table file."""
    return {name: GENERATED + make() for name, make in TABLES.items()}


def readme_with_headline(text, headline_md):
    """``text`` with the headline table between the markers; None if it has no markers."""
    start, end = text.find(HEADLINE_START), text.find(HEADLINE_END)
    if start < 0 or end < start:
        return None
    return (text[:start + len(HEADLINE_START)] + "\n" + GENERATED.strip() + "\n\n"
            + headline_md + text[end:])


def run(out, readme, check=False, with_plots=True):
    """Write (or, with ``check``, compare) the tables, plots and README headline; returns the
    paths whose text differs (check) or that were written."""
    out, readme = Path(out), Path(readme)
    changed = []
    generated = tables()
    for name, text in generated.items():
        path = out / "results" / f"{name}.md"
        if not path.exists() or path.read_text() != text:
            changed.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if readme.exists():
        old = readme.read_text()
        new = readme_with_headline(old, generated["headline"][len(GENERATED):])
        if new is None:
            print(f"note: {readme} has no {HEADLINE_START} ... {HEADLINE_END} markers; "
                  "its headline table was left alone")
        elif new != old:
            changed.append(readme)
            if not check:
                readme.write_text(new)
    else:
        print(f"note: {readme} does not exist; no headline table written")
    if with_plots and not check:
        changed += plots(out / "_static" / "results")
    return changed


# -- provenance backfill --------------------------------------------------------------------
def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def measurement_commit(path):
    """The oldest commit whose version of ``path`` holds the same measurement (same
    ``date_utc``) as the file on disk: the commit that committed these numbers."""
    rel = str(Path(path).resolve().relative_to(ROOT))
    date = json.loads(Path(path).read_text())["meta"].get("date_utc")
    for commit in reversed(_git("log", "--format=%h", "--", rel).split()):
        try:
            old = json.loads(_git("show", f"{commit}:{rel}"))
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            continue
        if old.get("meta", {}).get("date_utc") == date:
            return commit
    return None


def backfill_provenance():
    """Record ``results_committed_in`` in the meta of every result JSON that has neither it
    nor a ``commit`` of its own (run folders excluded)."""
    for path in sorted(RESULTS.rglob("*.json")):
        if "runs" in path.relative_to(RESULTS).parts:
            continue
        data = json.loads(path.read_text())
        meta = data.get("meta")
        if meta is None or meta.get("commit") or meta.get("results_committed_in"):
            continue
        commit = measurement_commit(path)
        if commit is None:
            print(f"{path.relative_to(ROOT)}: not in git yet, left alone")
            continue
        meta["results_committed_in"] = commit
        path.write_text(json.dumps(data, indent=1, default=str) + "\n")
        print(f"{path.relative_to(ROOT)}: results_committed_in {commit}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.docs_results",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a table or the README's headline differs")
    p.add_argument("--out", default=str(ROOT / "docs"),
                   help="documentation root: tables go to OUT/results/, plots to "
                        "OUT/_static/results/")
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--no_plots", action="store_true", help="tables only")
    p.add_argument("--backfill_provenance", action="store_true",
                   help="record in each result file the commit that committed it, then exit")
    args = p.parse_args(argv)
    if args.backfill_provenance:
        backfill_provenance()
        return 0
    changed = run(args.out, args.readme, check=args.check, with_plots=not args.no_plots)
    if args.check:
        if changed:
            print("out of date (run `python -m benchmarks.docs_results`):")
            for path in changed:
                print(f"  {path}")
            return 1
        print("tables up to date")
        return 0
    for path in changed:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
