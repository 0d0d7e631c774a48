"""A model you only have as an ONNX file, pruned to 70 % of its onnxruntime latency: ONNX in, smaller ONNX out.

    python examples/onnx_only.py [MODEL.onnx] [--latency 0.7] [--out out/examples/onnx_only]

Without MODEL.onnx a torchvision resnet18 (random weights, 64 px) is exported to stand in for one. The file is
mapped, profiled, solved in a closed loop on measured latency, rewritten with fewer channels, checked
against the masked file in onnxruntime, and timed afresh against the original.
"""

import argparse
from pathlib import Path

import torch

import hwprune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", type=Path, nargs="?", default=None, help="your ONNX file (default: a stand-in)")
    parser.add_argument("--latency", type=float, default=0.7, help="target latency ratio (default 0.7)")
    parser.add_argument("--out", type=Path, default=Path("out/examples/onnx_only"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = args.onnx
    if source is None:
        from torchvision.models import resnet18

        from hwprune.export.onnx_export import export_onnx

        source = args.out / "resnet18.onnx"
        export_onnx(resnet18(num_classes=10).eval(), torch.randn(1, 3, 64, 64), source)

    print(hwprune.map(source).summary())
    result = hwprune.prune(source, latency=args.latency, repeats=10, out=args.out / "pruned")
    print(result)  # the iterations, the verification, the shipped file's latency against the original
    print(f"shipped: {result.onnx_path} ({result.report.status})")


if __name__ == "__main__":
    main()
