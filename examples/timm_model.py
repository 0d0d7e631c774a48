"""A timm model pruned to half its FLOPs, verified and exported, with its channel groups explained.

    python examples/timm_model.py [--model resnet18d] [--flops 0.5] [--out out/examples/timm]

timm builds the model with random weights here (no download); in real use pass pretrained=True with the
weights in your local cache, or load your fine-tuned checkpoint with load_state_dict.
"""

import argparse
from pathlib import Path

import timm
import torch

import hwprune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18d", help="a timm model name (default resnet18d)")
    parser.add_argument("--flops", type=float, default=0.5, help="target FLOPs ratio (default 0.5)")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (default 64)")
    parser.add_argument("--out", type=Path, default=Path("out/examples/timm"))
    args = parser.parse_args()
    model = timm.create_model(args.model, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, args.size, args.size)
    graph = hwprune.map(model, x, name=args.model)
    print(graph.summary())
    result = hwprune.prune(model, x, flops=args.flops, name=args.model, out=args.out)
    print(result)
    export = result.export
    print(
        f"{args.model}: params {export.params_before:,} -> {export.params_after:,}, FLOPs ratio "
        f"{result.report.measured_ratio:.3f}, ONNX {result.onnx_path}"
    )


if __name__ == "__main__":
    main()
