"""Hugging Face transformers: groups, honest coverage, exact compaction and ONNX, and a latency budget per decoder.

    python benchmarks/hf_models.py [--families llama,qwen2,mistral,gpt2,bert,t5,vit] [--tokens 128]
                                      [--latency-families llama,qwen2,mistral,gpt2,t5] [--threads 1]

Per family, a model built from a config (random weights, nothing downloaded; the latency rows use a
mid-sized decoder config, the rest the family's small default), mapped through torch.export: its groups,
how many are prunable, and the share of weighted-op multiply-adds those prune (exact groups only, over
every weighted op the mapper saw, frozen ones included). A random 40 % mask over every prunable group is
compacted and exported: compacted vs masked model and ONNX (onnxruntime) vs compacted, max relative
difference. For each decoder (and T5, encoder and decoder in one pass), ``hwprune.prune(latency=0.5)`` on
ort-cpu (edge profile, solver, closed loop, the shipped file timed afresh against the dense file): its
measured ratio and verdict.

Writes benchmarks/results/transformers.csv (model,groups,prunable_groups,prunable_macs_share,max_rel_diff,
onnx_max_rel_diff,latency_ratio_at_0.5) and transformers.md (settings, configs, verdicts), from
transformers.jsonl (every column of each family's last run, written after each family: ``--families`` reruns
those and keeps the others). Timing needs a quiet machine: run it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import hwprune
from hwprune.export.pipeline import export_pruned
from hwprune.graph_mapper import build_channel_graph
from hwprune.models.hf import FAMILIES, hf_example, hf_model
from hwprune.prune.channel import random_scores, uniform_channel_mask

RESULTS = Path(__file__).parent / "results"
COLUMNS = [
    "model", "groups", "prunable_groups", "prunable_macs_share", "max_rel_diff", "onnx_max_rel_diff",
    "latency_ratio_at_0.5",
]  # fmt: skip
# a decoder large enough that its layers, not the runtime's per-op overhead, dominate its latency
LATENCY_CONFIG = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "vocab_size": 2048,
                  "num_attention_heads": 8, "num_key_value_heads": 2}  # fmt: skip
GPT2_LATENCY_CONFIG = {"n_embd": 512, "n_layer": 4, "n_head": 8, "vocab_size": 2048}
T5_LATENCY_CONFIG = {"d_model": 512, "d_ff": 1408, "num_layers": 4, "num_heads": 8, "d_kv": 64, "vocab_size": 2048}
OWN_LATENCY_CONFIG = {"gpt2": GPT2_LATENCY_CONFIG, "t5": T5_LATENCY_CONFIG}  # families with their own field names


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--latency-families", default="llama,qwen2,mistral,gpt2,t5")
    p.add_argument("--tokens", type=int, default=128, help="sequence length of the latency rows")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--repeats", type=int, default=30)
    return p.parse_args()


def latency_config(name: str) -> dict:
    base = dict(FAMILIES[name].config)
    return {**base, **OWN_LATENCY_CONFIG.get(name, LATENCY_CONFIG)}


def exactness(name: str) -> dict:
    model = hf_model(name, seed=0)
    x = hf_example(model)
    graph = build_channel_graph(model, x, name)
    mask = uniform_channel_mask(graph, random_scores(graph, seed=1), 0.4)
    with tempfile.TemporaryDirectory() as tmp:
        _, report = export_pruned(model, graph, mask, x, Path(tmp) / f"{name}.onnx")
    return {
        "model": name,
        "groups": len(graph.groups),
        "prunable_groups": len(graph.prunable_groups),
        "prunable_macs_share": round(graph.prunable_macs_share(), 4),
        "max_rel_diff": report.max_rel_diff,
        "onnx_max_rel_diff": report.onnx_max_rel_diff,
    }


def latency_row(name: str, args) -> dict:
    model = hf_model(name, latency_config(name), seed=0)
    x = hf_example(model, tokens=args.tokens)
    start = time.perf_counter()
    result = hwprune.prune(model, x, latency=0.5, backend="ort-cpu", threads=args.threads, repeats=args.repeats,
                           name=name, progress=False)  # fmt: skip
    report = result.report
    graph = result.graph
    return {
        "latency_ratio_at_0.5": round(report.measured_ratio, 4),
        "latency_status": report.status,
        "latency_loop_ratio": round(report.loop_ratio, 4) if report.loop_ratio is not None else None,
        "latency_groups": f"{len(graph.prunable_groups)}/{len(graph.groups)}",
        "latency_share": round(graph.prunable_macs_share(), 4),
        "latency_other_load": report.other_load,
        "latency_seconds": round(time.perf_counter() - start, 1),
    }


ROWS = RESULTS / "transformers.jsonl"  # every column of every family's last run: a --families subset keeps the rest


def main() -> None:
    args = arguments()
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    kept = [json.loads(line) for line in ROWS.read_text().splitlines()] if ROWS.exists() else []
    rows = {row["model"]: row for row in kept}
    for name in args.families.split(","):
        row = exactness(name)
        if name in args.latency_families.split(","):
            row |= latency_row(name, args)
        rows[name] = row
        print(json.dumps(row), flush=True)
        ROWS.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))  # an interrupted run keeps its rows
    frame = pd.DataFrame([rows[n] for n in FAMILIES if n in rows])
    frame.reindex(columns=COLUMNS).to_csv(RESULTS / "transformers.csv", index=False)
    configs = {n: latency_config(n) for n, row in rows.items() if "latency_status" in row}
    note = (
        "# Hugging Face transformers: coverage, exactness, latency budget (ONNX Runtime CPU)\n\n"
        f"Last command: `{' '.join(['python benchmarks/hf_models.py', *sys.argv[1:]])}` "
        f"(settings: {json.dumps(vars(args))}); each row is its family's last run (transformers.jsonl), a row "
        "without latency columns had no latency run.\n\n"
        "groups / prunable_groups / prunable_macs_share / max_rel_diff / onnx_max_rel_diff: each family's small "
        "default config (`hwprune.models.hf.FAMILIES`, 2 layers, 32 tokens), a random 40 % mask over every "
        "prunable group, compacted vs masked and ONNX vs compacted. latency_ratio_at_0.5: `hwprune.prune("
        f"latency=0.5)` on ort-cpu at {args.tokens} tokens, batch 1, {args.threads} thread(s), the shipped file "
        "timed afresh against the dense one (mean of session pairs); status met means within +-3 %. Latency "
        f"configs: {json.dumps(configs)}. Pruned: attention heads (whole heads, GQA groups whole), MLP channels, and "
        "the hidden size (residual stream): exact through RMSNorm (Llama, Qwen2, Mistral, T5: a rescaled eps) and "
        "LayerNorm (GPT-2, ViT: compacted into ZeroPaddedLayerNorm, statistics over the original width); BERT's "
        "hidden size is its output (BertModel returns hidden states) and stays. T5's cross-attention heads are "
        "frozen (their zero bias is built with the configured head count).\n"
    )
    (RESULTS / "transformers.md").write_text(f"{note}\n{frame.to_markdown(index=False)}\n")
    print(frame.to_markdown(index=False))


if __name__ == "__main__":
    main()
