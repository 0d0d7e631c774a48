"""Hugging Face ``transformers`` models built from a config, with random weights (nothing is downloaded).

``hf:<family>`` names a small default config per family (two layers, grouped-query attention where the
family has it), so that mapping, compaction and ONNX export run in seconds; ``config`` replaces it with a
JSON file or a local model directory's ``config.json`` (the user's real sizes). Decoders are built without
a key/value cache (``use_cache=False``): a forward pass then returns tensors only, which torch.export
captures and the equivalence check compares. Text models take token ids ``[batch, tokens]``
(:func:`hf_example`), vision ones images; an encoder-decoder (T5) is wrapped in :class:`Seq2SeqLM` so that
it too takes one tensor.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from inspect import signature
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.errors import HwpruneError, UnknownNameError


@dataclass(frozen=True)
class Family:
    """One model family: its ``transformers`` classes and the small default config."""

    model_class: str
    config_class: str
    config: dict[str, Any] = field(default_factory=dict)
    vision: bool = False
    seq2seq: bool = False  # an encoder-decoder, wrapped in :class:`Seq2SeqLM` (one input tensor)


_DECODER = {"vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}
_GQA = {**_DECODER, "num_attention_heads": 8, "num_key_value_heads": 2}  # 4 query heads per key/value head
_T5 = {"vocab_size": 512, "d_model": 128, "d_kv": 32, "d_ff": 256, "num_layers": 2, "num_heads": 4,
       "decoder_start_token_id": 0, "pad_token_id": 0}  # fmt: skip
FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", "LlamaConfig", _GQA),
    "qwen2": Family("Qwen2ForCausalLM", "Qwen2Config", _GQA),
    "mistral": Family("MistralForCausalLM", "MistralConfig", {**_GQA, "num_key_value_heads": 4}),
    "gpt2": Family("GPT2LMHeadModel", "GPT2Config", {"vocab_size": 512, "n_embd": 128, "n_layer": 2, "n_head": 4}),
    "bert": Family("BertModel", "BertConfig", {**_DECODER, "num_attention_heads": 4}),
    "t5": Family("T5ForConditionalGeneration", "T5Config", _T5, seq2seq=True),
    "vit": Family(
        "ViTForImageClassification",
        "ViTConfig",
        {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "num_labels": 10,
        },
        vision=True,
    ),  # fmt: skip
}
DEFAULT_TOKENS = 32


def transformers_module():
    """The ``transformers`` package, or a one-line error saying how to install it."""
    if importlib.util.find_spec("transformers") is None:
        raise HwpruneError("hf: models need the transformers package: pip install transformers")
    import transformers

    return transformers


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise UnknownNameError(f"unknown Hugging Face family {name!r}; use one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def load_config(name: str, config: str | Path | dict | None = None):
    """The family's config: the small default, or ``config`` (a dict, a JSON file, or a directory with config.json)."""
    fam, tf = family(name), transformers_module()
    values = dict(fam.config)
    if isinstance(config, dict):
        values = dict(config)
    elif config is not None:
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise HwpruneError(f"--hf-config {config}: no such JSON file or model directory with config.json")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise HwpruneError(f"--hf-config {path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    values.pop("architectures", None)
    values.pop("model_type", None)
    cfg = getattr(tf, fam.config_class)(**values)
    if not fam.vision:
        cfg.use_cache = False
    cfg._attn_implementation = "sdpa"
    return cfg


class Seq2SeqLM(nn.Module):
    """An encoder-decoder language model (T5) as a module of one input: token ids in, logits out.

    The decoder reads the same ids shifted right by one (teacher forcing, as in training with ``labels``), so
    one forward pass runs the encoder and the decoder at the example's length: what the mapper captures, the
    pruned export ships and the latency measures. ``model`` is the ``transformers`` model itself; it is what
    :func:`save_pruned` saves.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, decoder_input_ids=self.model._shift_right(input_ids)).logits


def hf_model(name: str, config: str | Path | dict | None = None, seed: int | None = None) -> nn.Module:
    """A ``transformers`` model of family ``name`` with random weights, in eval mode (encoder-decoders wrapped)."""
    cfg = load_config(name, config)
    if seed is not None:
        torch.manual_seed(seed)
    model = getattr(transformers_module(), family(name).model_class)(cfg)
    return (Seq2SeqLM(model) if family(name).seq2seq else model).eval()


def hf_example(model: nn.Module, batch: int = 1, tokens: int = DEFAULT_TOKENS, seed: int = 0) -> torch.Tensor:
    """Deterministic input for ``model``: token ids ``[batch, tokens]``, or images for a vision model."""
    generator = torch.Generator().manual_seed(seed)
    cfg = model.config
    if hasattr(cfg, "image_size") and hasattr(cfg, "num_channels"):
        side = cfg.image_size
        return torch.randn(batch, cfg.num_channels, side, side, generator=generator)
    return torch.randint(0, cfg.vocab_size, (batch, tokens), generator=generator)


def output_tensor(output) -> torch.Tensor:
    """The main tensor of a ``transformers`` output (logits, else the last hidden state)."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if value is not None:
            return value
    raise HwpruneError(f"cannot find logits or a hidden state in a {type(output).__name__}")


SHAPES_KEY = "hwprune_pruned_shapes"
WRAPPED_KEY = "hwprune_seq2seq"  # saved from a Seq2SeqLM: load_pruned wraps it again


def save_pruned(model: nn.Module, folder: str | Path) -> Path:
    """Save a compacted ``transformers`` model so that :func:`load_pruned` rebuilds it exactly.

    Pruning leaves layers of different widths (heads and MLP channels per layer), which a config's single
    ``num_attention_heads`` / ``intermediate_size`` cannot express: ``save_pretrained`` writes the config and
    weights as usual, and the config also records every tensor whose shape differs from what the config
    builds (``hwprune_pruned_shapes``). ``from_pretrained`` alone would refuse those shapes.
    """
    folder, wrapped = Path(folder), isinstance(model, Seq2SeqLM)
    model = model.model if wrapped else model
    with torch.device("meta"):
        fresh = type(model)(model.config)
    built = {n: tuple(t.shape) for n, t in fresh.state_dict().items()}
    shapes = {n: list(t.shape) for n, t in model.state_dict().items() if built.get(n) != tuple(t.shape)}
    # a pruned hidden size rescales every RMSNorm's eps alike (hwprune.graph_mapper.aten_ops.rms_norm)
    eps = {m.variance_epsilon for m in model.modules() if hasattr(m, "variance_epsilon")}
    if len(eps) > 1:
        raise HwpruneError(f"RMSNorm layers of {type(model).__name__} have different eps {sorted(eps)}: save_pruned "
                           "can record only one (config.rms_norm_eps or layer_norm_epsilon)")  # fmt: skip
    saved = {SHAPES_KEY: shapes, WRAPPED_KEY: wrapped}
    eps_key = next((k for k in ("rms_norm_eps", "layer_norm_epsilon") if hasattr(model.config, k)), None)
    if eps and eps_key:  # the config field the family builds its RMSNorms from
        saved[eps_key] = eps.pop()
    before = {k: getattr(model.config, k) for k in saved if hasattr(model.config, k)}
    model.config.update(saved)
    try:
        # the model's own tensor names: transformers 5 renames some (ViT) to an older layout when saving
        native = (
            {"save_original_format": False}
            if "save_original_format" in signature(model.save_pretrained).parameters
            else {}
        )
        model.save_pretrained(folder, **native)
    finally:
        for key in (SHAPES_KEY, WRAPPED_KEY):
            delattr(model.config, key)
        model.config.update(before)
    return folder


def load_pruned(folder: str | Path) -> nn.Module:
    """The model :func:`save_pruned` wrote, with its pruned shapes and weights, in eval mode."""
    from safetensors.torch import load_file

    from hwprune.export.compact import named_tensors, replace_tensor, resize_modules, tied_names

    tf, folder = transformers_module(), Path(folder)
    config = tf.AutoConfig.from_pretrained(folder)
    shapes = getattr(config, SHAPES_KEY, None)
    if shapes is None:
        raise HwpruneError(f"{folder} was not saved by hwprune.models.hf.save_pruned: load it with from_pretrained")
    wrapped = getattr(config, WRAPPED_KEY, False)
    delattr(config, SHAPES_KEY)
    if hasattr(config, WRAPPED_KEY):
        delattr(config, WRAPPED_KEY)
    config._attn_implementation = "sdpa"
    model = getattr(tf, config.architectures[0])(config)
    tensors = named_tensors(model)
    names_of = tied_names(tensors)
    for name, shape in shapes.items():
        old = tensors[name]
        replace_tensor(model, names_of[id(old)], old, torch.empty(shape, dtype=old.dtype))
    resize_modules(model, {name: [] for name in shapes})  # sizes kept in attributes follow the tensors
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state |= load_file(file)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {a for names in names_of.values() if len(names) > 1 for a in names}  # saved under one of their names
    absent = [n for n in missing if n not in tied]
    if absent or unexpected:
        raise HwpruneError(f"{folder}: weights do not match the saved shapes (missing {absent[:3]}, "
                           f"unexpected {unexpected[:3]})")  # fmt: skip
    return (Seq2SeqLM(model) if wrapped else model).eval()
