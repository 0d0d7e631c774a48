"""Options and helpers the commands share: the model/ONNX/mask/data options, building the job, checks."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from hwprune import checks
from hwprune.errors import HwpruneError, set_stage


def model_options(p: argparse.ArgumentParser, default_model: str | None = None, or_onnx: bool = False) -> None:
    """--model and what builds it; ``or_onnx``: --onnx may replace it, so ``default_model`` applies only without."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None if or_onnx else default_model,
        help=("(required) " if default_model is None else f"(default {default_model}) ")
        + "zoo name (see `hwprune models`); prefix torchvision:/timm:/seed: to disambiguate; hf:<family> "
        "(llama, qwen2, mistral, gpt2, bert, t5, vit) for a Hugging Face model built from a config",
    )
    g.add_argument(
        "--front-end",
        default="auto",
        choices=checks.FRONT_ENDS,
        help="how the PyTorch model is captured: fx (symbolic tracing; sizes written in the code are rewritten), "
        "export (torch.export: any capturable program; the compacted model is your own module, sliced) or auto "
        "(default: fx, torch.export where fx cannot trace)",
    )
    g.add_argument(
        "--hf-config",
        default=None,
        help="with --model hf:<family>: a config JSON file or a local model directory holding config.json "
        "(default: a small two-layer config); weights stay random unless --weights is given",
    )
    g.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input side in pixels, or the token count for a text model (default: the model's)",
    )
    g.add_argument("--batch", type=int, default=1, help="batch of the example input (default 1)")
    g.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")
    g.add_argument("--in-channels", type=int, default=None, help="input channels (default: the model's)")
    g.add_argument("--seed", type=int, default=0, help="seed for the example input and random scores")
    g.add_argument(
        "--weights",
        default=None,
        help="your trained weights: a .safetensors file, or a state dict / checkpoint saved with torch.save "
        "(read with weights_only=True: never an arbitrary pickle), or a torchvision weight name (DEFAULT, "
        "IMAGENET1K_V2) found in the local torch hub cache; nothing is downloaded (default: random weights)",
    )


def onnx_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--onnx",
        type=Path,
        default=None,
        help="an ONNX file to work on instead of --model (no PyTorch model needed; importance l1, l2 or random)",
    )
    p.add_argument(
        "--input-shape",
        default=None,
        help="with --onnx: fix the input shape, e.g. 1,3,224,224 (default: the file's; a dynamic batch maps at 1, "
        "and channels that only a shape computed from it reaches stay frozen)",
    )


def mask_options(p: argparse.ArgumentParser, ratio: float = 0.5) -> None:
    from hwprune.prune.importance import CHANNEL_IMPORTANCES

    p.add_argument(
        "--method",
        default="l1",
        choices=CHANNEL_IMPORTANCES.names(),
        help="channel importance (default l1: L1 norm of each channel's weights, summed over its group); "
        "gradient-based ones (taylor, fisher, grasp, ...) need --data",
    )
    p.add_argument(
        "--ratio",
        type=float,
        default=ratio,
        help=f"share of channels removed from every prunable group (default {ratio})",
    )
    data_options(p)


def data_options(p: argparse.ArgumentParser) -> None:
    from hwprune import workflow

    p.add_argument(
        "--data",
        default=None,
        help="dataset for data-driven importances (see `hwprune datasets`): digits (images) and text (token ids "
        "for hf: language models, CPython's help text) work offline",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder of file-based datasets; with --data text, your *.txt files (and a Hugging Face tokenizer "
        "saved there, else byte-level ids)",
    )
    p.add_argument(
        "--imp-samples",
        type=int,
        default=workflow.IMPORTANCE_SAMPLES,
        help=f"training examples gradient-based importances average over, in mini-batches of 128 "
        f"(default {workflow.IMPORTANCE_SAMPLES}, as the gradient-flow framework)",
    )


def build_job(args):
    from hwprune import workflow

    if getattr(args, "data", None) and args.num_classes is None:  # the classifier must match its data
        from hwprune.data import dataset_info

        if not _is_text(args.data):  # token ids have no classes: a language model keeps its vocabulary
            args.num_classes = dataset_info(args.data).num_classes

    return workflow.ModelInput.build(
        args.model,
        args.input_size,
        args.batch,
        args.num_classes,
        args.in_channels,
        args.seed,
        args.weights,
        getattr(args, "hf_config", None),
        getattr(args, "front_end", "auto"),
    )


def model_or_onnx(args):
    """The job of map/mask/export: a zoo model (--model) or an ONNX file (--onnx), never both."""
    if args.onnx is None:
        return build_job(args)
    from hwprune.workflow import OnnxInput

    return OnnxInput.build(args.onnx, checks.input_shape(args.input_shape))


def job_and_graph(args):
    """Build the model (or read the ONNX file) and map its channel groups, naming each stage."""
    source = args.model if getattr(args, "onnx", None) is None else args.onnx
    set_stage(f"building {source}")
    job = model_or_onnx(args) if hasattr(args, "onnx") else build_job(args)
    set_stage(f"mapping the channel groups of {source}")
    return job, job.graph()


def unstage(outcome, stage: checks.StagedDir) -> None:
    """Point a finished outcome's paths (report, results row) at where the staged files end up."""
    if outcome is None:
        return
    if outcome.export.onnx_path is not None:
        outcome.export.onnx_path = str(stage.final_path(outcome.export.onnx_path))
    outcome.export.notes = [stage.rewrite(n) for n in outcome.export.notes]
    outcome.record.artifacts = stage.rewrite(outcome.record.artifacts)
    outcome.record.extra = stage.rewrite(outcome.record.extra)


def check_model(args) -> None:
    if getattr(args, "onnx", None) is None and args.model is not None:
        checks.model_name(args.model)
    checks.model_input(args.input_size, args.batch, args.num_classes, args.in_channels, args.seed)


def check_source(args) -> None:
    """--model or --onnx (map, mask, export)."""
    if args.onnx is None:
        if args.input_shape is not None:
            raise HwpruneError("--input-shape is for --onnx; with --model give --input-size (and --batch)")
        check_model(args)
        return
    if args.model is not None:
        raise HwpruneError("give --model or --onnx, not both")
    if args.input_size is not None or args.in_channels is not None:
        raise HwpruneError("--input-size/--in-channels are for --model; with --onnx give --input-shape (1,3,32,32)")
    if args.weights is not None:
        raise HwpruneError("--weights is for --model: an ONNX file carries its own weights")
    if getattr(args, "front_end", "auto") != "auto":
        raise HwpruneError("--front-end is for --model: an ONNX file maps through its own graph")
    if hasattr(args, "method"):
        from hwprune.graph_mapper.onnx_mapper import check_onnx_importance

        check_onnx_importance(args.method)
    shape = checks.input_shape(args.input_shape)
    checks.onnx_file(args.onnx, shape is not None)


def check_importance(args, name: str) -> None:
    """Gradient-based importances need data; the data options must name what exists."""
    from hwprune.prune.importance import CHANNEL_IMPORTANCES

    data = getattr(args, "data", None)
    checks.dataset_name(data, text=True)
    check_data_fits_model(args, data)
    if getattr(args, "data_dir", None) is not None:
        checks.input_folder(args.data_dir, "--data-dir")
        if data is not None and _is_text(data):
            from hwprune.data.text import text_files

            text_files(Path(args.data_dir).expanduser())
    if hasattr(args, "imp_samples"):
        checks.whole(args.imp_samples, "--imp-samples", 1, "training examples the importance averages over")
    if data is None and CHANNEL_IMPORTANCES.get(name).needs_data:
        raise HwpruneError(
            f"importance {name!r} needs data: pass --data digits (images) or --data text "
            "(language models), both offline, or a dataset in --data-dir"
        )


def _is_text(data: str) -> bool:
    from hwprune.data import dataset_kind

    return dataset_kind(data) == "text"


def takes_tokens(model: str) -> bool:
    """Whether zoo name ``model`` is a language model (an ``hf:`` text family), whose input is token ids."""
    if not model.startswith("hf:"):
        return False
    from hwprune.models.hf import family

    return not family(model.partition(":")[2]).vision


def check_data_fits_model(args, data: str | None) -> None:
    """Text data for a language model, images for the others (an ONNX file's importances read no data)."""
    model = getattr(args, "model", None)
    if data is None or model is None or getattr(args, "onnx", None) is not None:
        return
    text, tokens = _is_text(data), takes_tokens(model)
    if text and not tokens:
        raise HwpruneError(
            f"--data {data} is token ids for a language model (--model hf:llama, ...), but {model} takes images: "
            "use an image dataset (digits works offline)"
        )
    if tokens and not text:
        raise HwpruneError(
            f"{model} is a language model and --data {data} holds images: use --data text (offline; --data-dir "
            "for your own .txt files)"
        )


def check_mask_options(args) -> None:
    checks.ratio_removed(args.ratio)
    if getattr(args, "mask", None) is None:
        check_importance(args, args.method)


@contextlib.contextmanager
def journal_kept_if_measured(journal: Path):
    """On failure, remove a journal this run created and took no measurement into (so it blocks nothing)."""
    existed = journal.exists()
    try:
        yield
    except BaseException:
        if not existed and journal.exists() and not has_measurements(journal):
            journal.unlink()
        raise


def has_measurements(journal: Path) -> bool:
    try:
        text = journal.read_text(errors="replace")
    except OSError:
        return True  # cannot tell: keep it
    return any('"kind": "edge"' in line or '"kind": "calibration"' in line for line in text.splitlines())


def check_journal(journal: Path, name: str) -> None:
    """A journal to resume must be a readable, well-formed journal (its settings are compared later)."""
    from hwprune.latency.profiler import _read_journal

    checks.output_file(journal, f"journal (beside {name})" if name != "--journal" else name, "lut.journal.jsonl")
    _read_journal(journal, None, repair=False)
