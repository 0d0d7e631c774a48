"""Hugging Face transformers through the torch.export front-end: whole attention heads (GQA groups with their
query heads), MLP channels, exact compaction of the user's own model, verified ONNX.

Every family is built from a small config with random weights (no download). Each exactness check has a
negative control: the pruned model must differ from the dense one (the check had work), and with the
head tie switched off the check must catch the broken model.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwprune.errors import EquivalenceError
from hwprune.export.compact import compact_model, masked_model
from hwprune.export.pipeline import export_pruned
from hwprune.export.verify import max_rel_diff
from hwprune.graph_mapper import build_channel_graph
from hwprune.prune.channel import random_scores, uniform_channel_mask
from hwprune.prune.gradients import batch_loss
from hwprune.prune.importance import channel_importance
from hwprune.prune.masks import ChannelMask

pytest.importorskip("transformers")

from hwprune.models.hf import FAMILIES, hf_example, hf_model, output_tensor  # noqa: E402


def _mapped(family: str, seed: int = 0):
    model = hf_model(family, seed=seed)
    x = hf_example(model)
    return model, x, build_channel_graph(model, x, family)


def _heads_group(graph, layer: int):
    """The attention group of one layer: the group holding that layer's query projection rows."""
    for g in graph.prunable_groups:
        if any(f".{layer}." in s.tensor and ("q_proj" in s.tensor or "query" in s.tensor or "c_attn" in s.tensor)
               for s in g.producers):  # fmt: skip
            return g
    raise AssertionError(f"no attention group in layer {layer}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_random_mask_over_every_group_compacts_exactly(family):
    model, x, graph = _mapped(family)
    assert graph.gm is model  # fx cannot trace Hugging Face models: torch.export captured it (the user's module)
    assert len(graph.prunable_groups) >= 4  # heads and MLP of both layers
    mask = uniform_channel_mask(graph, random_scores(graph, seed=1), 0.4)
    small = compact_model(graph, mask).eval()
    with torch.no_grad():
        got, want = output_tensor(small(x)), output_tensor(masked_model(model, graph, mask).eval()(x))
        dense = output_tensor(model(x))
    assert max_rel_diff(got, want) <= 1e-4
    assert max_rel_diff(got, dense) > 1e-2  # pruning changed the function: the comparison had work
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_gqa_groups_keep_their_query_heads(family):
    model, x, graph = _mapped(family)
    cfg = model.config
    n_rep = cfg.num_attention_heads // cfg.num_key_value_heads
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    group = _heads_group(graph, 0)
    assert group.size == cfg.num_key_value_heads  # one unit per key/value group
    keep = np.zeros(group.size, dtype=bool)
    keep[1] = True
    mask = ChannelMask({group.id: keep}, graph.model_name, graph.fingerprint())
    attn = compact_model(graph, mask).model.layers[0].self_attn
    assert attn.q_proj.out_features == n_rep * head_dim  # the group's query heads, whole
    assert attn.k_proj.out_features == attn.v_proj.out_features == head_dim
    assert attn.o_proj.in_features == n_rep * head_dim
    kept_q = model.model.layers[0].self_attn.q_proj.weight[n_rep * head_dim : 2 * n_rep * head_dim]
    assert torch.equal(attn.q_proj.weight, kept_q)  # the kept group's own rows, in order


def test_rotary_tables_and_buffers_carry_no_channels():
    _, _, graph = _mapped("llama")
    assert not [g for g in graph.groups if any("rotary" in s.tensor for s in g.slices)]
    assert all(g.size > 1 for g in graph.prunable_groups)


def test_head_tie_off_is_caught_by_the_check(monkeypatch, tmp_path):
    """Negative control: query and key heads meet in the scores, but only the head tie joins the value heads to
    them. Without it the value heads form a group of their own; dropping one leaves the attention with fewer
    value heads than query heads, and the export check refuses the compacted model."""
    from hwprune.graph_mapper import attention_ops

    monkeypatch.setattr(attention_ops, "_tie_whole_heads", lambda *a: True)
    model, x, graph = _mapped("llama")
    v_group = next(g for g in graph.prunable_groups if any("v_proj" in s.tensor for s in g.producers)
                   and not any("q_proj" in s.tensor for s in g.producers))  # fmt: skip
    keep = np.ones(v_group.size, dtype=bool)
    keep[0] = False
    with pytest.raises(EquivalenceError):
        export_pruned(model, graph, ChannelMask({v_group.id: keep}, graph.model_name, graph.fingerprint()), x,
                      tmp_path / "m.onnx")  # fmt: skip


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exported_onnx_matches_in_onnxruntime(family, tmp_path):
    model, x, graph = _mapped(family)
    mask = uniform_channel_mask(graph, random_scores(graph, seed=0), 0.5)
    _, report = export_pruned(model, graph, mask, x, tmp_path / f"{family}.onnx")
    assert report.max_rel_diff <= 1e-4 and report.onnx_max_rel_diff <= 1e-4
    assert report.params_after < report.params_before
    assert (tmp_path / f"{family}.onnx").stat().st_size > 0


class TiedHead(nn.Module):
    """An embedding whose table is also the output head (weight tying), with a hidden layer between."""

    def __init__(self, vocab: int = 20, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mix(self.embed(ids))))


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_tied_weights_stay_tied_and_exact(front_end):
    torch.manual_seed(0)
    model, ids = TiedHead().eval(), torch.randint(0, 20, (2, 5))
    graph = build_channel_graph(model, ids, "tied", front_end=front_end)
    assert graph.prunable_groups  # the embedding's width is read by the tied head
    mask = uniform_channel_mask(graph, random_scores(graph, seed=0), 0.5)
    small = compact_model(graph, mask).eval()
    assert small.head.weight is small.embed.weight  # one tensor, sliced once
    with torch.no_grad():
        assert max_rel_diff(small(ids), masked_model(model, graph, mask)(ids)) <= 1e-5
        assert max_rel_diff(small(ids), model(ids)) > 1e-2


def test_python_api_prunes_a_pretrained_model_to_a_flops_budget():
    """``hwprune.prune`` on a ``PreTrainedModel`` as users hold it: a FLOPs budget met, the user's class back."""
    import hwprune

    model = hf_model("qwen2", seed=0)
    x = hf_example(model)
    result = hwprune.prune(model, x, flops=0.6, progress=False, name="qwen2")
    assert result.met and type(result.model) is type(model)
    assert result.export.flops_after <= 0.6 * 1.03 * result.export.flops_before
    assert result.export.max_rel_diff <= 1e-4


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compacted_model_round_trips_through_save_and_load(family, tmp_path):
    from hwprune.models.hf import load_pruned, save_pruned

    model, x, graph = _mapped(family)
    mask = uniform_channel_mask(graph, random_scores(graph, seed=2), 0.4)
    small = compact_model(graph, mask).eval()
    save_pruned(small, tmp_path / "pruned")
    loaded = load_pruned(tmp_path / "pruned")
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(output_tensor(loaded(x)), output_tensor(small(x)))
    plain = type(model.model if family == "t5" else model)  # T5 is saved unwrapped (Seq2SeqLM holds it)
    with pytest.raises(Exception, match="size"):  # the config alone builds the dense shapes: plain loading refuses
        plain.from_pretrained(tmp_path / "pruned")


def test_hidden_size_through_rms_norm_is_exact_only_with_its_rescaled_eps():
    """Llama's residual stream (embedding, every RMSNorm, q/k/v/gate/up inputs, o/down outputs, lm_head input)
    is one exact group: the compacted RMSNorm divides by the original width through a rescaled eps and
    weight. Negative control: the same compacted model with the original eps and weight differs."""
    model, x, graph = _mapped("llama")
    hidden = next(g for g in graph.prunable_groups if any(s.tensor == "model.embed_tokens.weight" for s in g.slices))
    assert hidden.exact and {"model.norm.weight", "lm_head.weight"} <= {s.tensor for s in hidden.slices}
    assert graph.prunable_macs_share() == pytest.approx(1.0)  # heads, MLP and hidden size: every weighted op
    keep = np.ones(hidden.size, dtype=bool)
    keep[::4] = False
    mask = ChannelMask({hidden.id: keep}, graph.model_name, graph.fingerprint())
    small = compact_model(graph, mask).eval()
    with torch.no_grad():
        want = output_tensor(masked_model(model, graph, mask).eval()(x))
        assert max_rel_diff(output_tensor(small(x)), want) <= 1e-4
        norm, dense_norm = small.model.norm, model.model.norm
        assert norm.variance_epsilon == pytest.approx(dense_norm.variance_epsilon * hidden.size / keep.sum())
        for m, d in zip(small.modules(), model.modules(), strict=True):
            if hasattr(m, "variance_epsilon"):
                m.variance_epsilon, m.weight[:] = d.variance_epsilon, d.weight[torch.as_tensor(keep)]
        assert max_rel_diff(output_tensor(small(x)), want) > 1e-3


def test_activation_importance_scores_every_group_of_a_decoder():
    """Minitron's activation importance on token ids: every group scored from its layers' outputs, heads
    (GQA units) included; a unit whose projections are zeroed scores lowest in its group."""
    model, x, graph = _mapped("llama")
    batches = [(hf_example(model, seed=s), None) for s in range(2)]
    scores = channel_importance("activation", model, graph, batches)
    assert all(scores[g.id].shape == (g.size,) and np.isfinite(scores[g.id]).all() for g in graph.groups)
    group = _heads_group(graph, 0)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    rows = slice(0, head_dim * model.config.num_attention_heads // model.config.num_key_value_heads)
    with torch.no_grad():
        attn = model.model.layers[0].self_attn
        attn.q_proj.weight[rows] = 0
        attn.k_proj.weight[:head_dim] = 0
        attn.v_proj.weight[:head_dim] = 0
    assert channel_importance("activation", model, graph, batches)[group.id].argmin() == 0


def test_gradient_importances_take_next_token_loss_on_a_causal_lm():
    """Taylor/Fisher on (token ids, token ids) batches: the loss is next-token cross-entropy on the logits,
    checked against the gradient of that loss written out by hand."""
    model, x, graph = _mapped("llama")
    out = batch_loss(model, x, x, F.cross_entropy)
    logits = model(x).logits
    want = F.cross_entropy(logits[0, :-1], x[0, 1:])
    assert torch.allclose(out, want)
    scores = channel_importance("fisher", model, graph, [(x, x)])
    assert all(np.isfinite(scores[g.id]).all() and (scores[g.id] > 0).any() for g in graph.prunable_groups)


def test_cli_maps_and_exports_a_hugging_face_model(tmp_path, capsys):
    from hwprune.cli import main

    assert main(["map", "--model", "hf:llama"]) == 0
    assert "5 prunable" in capsys.readouterr().out  # hidden size, heads and MLP of both layers
    out = tmp_path / "llama.onnx"
    assert main(["export", "--model", "hf:llama", "--ratio", "0.5", "--out", str(out)]) == 0
    assert "compacted and verified" in capsys.readouterr().out and out.stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "hf:whisper"], ["unknown Hugging Face family 'whisper'", "llama"]),
        (["--model", "hf:llama", "--hf-config", "/no/such/dir"], ["--hf-config /no/such/dir", "config.json"]),
        (["--model", "resnet18", "--hf-config", "cfg.json"], ["--hf-config is for --model hf:"]),
    ],
)
def test_cli_bad_hugging_face_input_is_one_line(args, needles):
    from tests.test_cli import assert_one_line_error, run_cli

    assert_one_line_error(run_cli("map", *args), *needles)


def test_hf_families_are_listed_and_built_by_name():
    from hwprune.models import get_model, list_models

    assert list_models("hf") == [f"hf:{name}" for name in FAMILIES]
    assert set(list_models("hf")) <= set(list_models("all"))
    model = get_model("hf:gpt2")
    assert type(model).__name__ == "GPT2LMHeadModel" and not model.training


def _informative_norms(model: nn.Module) -> None:
    """Norm weights and biases away from their init values (ones, zeros), so that a wrong norm shows."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) or hasattr(m, "variance_epsilon"):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=generator))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=generator))


@pytest.mark.parametrize("family", ["gpt2", "vit"])
def test_hidden_size_through_layer_norm_is_exact_only_when_zero_padded(family):
    """GPT-2's and ViT's residual stream crosses LayerNorms: one exact group, compacted into ZeroPaddedLayerNorm
    (mean and variance over the original width). Negative control: plain LayerNorms over the kept channels,
    with the same weights, differ from the masked model."""
    from hwprune.layers import ZeroPaddedLayerNorm

    model, x, graph = _mapped(family)
    _informative_norms(model)
    norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    hidden = next(g for g in graph.prunable_groups if norms & {s.tensor for s in g.slices})
    assert hidden.exact and norms <= {s.tensor for s in hidden.slices}  # every norm of the stream, one group
    assert graph.prunable_macs_share() == pytest.approx(1.0)
    keep = np.ones(hidden.size, dtype=bool)
    keep[1::3] = False
    mask = ChannelMask({hidden.id: keep}, graph.model_name, graph.fingerprint())
    small = compact_model(graph, mask).eval()
    padded = [m for m in small.modules() if isinstance(m, ZeroPaddedLayerNorm)]
    assert len(padded) == len(norms) and all(m.width == hidden.size for m in padded)
    with torch.no_grad():
        want = output_tensor(masked_model(model, graph, mask).eval()(x))
        assert max_rel_diff(output_tensor(small(x)), want) <= 1e-4
        for m in padded:
            m.width = m.weight.shape[0]  # the standard LayerNorm over the kept channels
        assert max_rel_diff(output_tensor(small(x)), want) > 1e-3


def test_compacted_layer_norm_is_pruned_again_exactly():
    """Iterative pruning: a compacted GPT-2 (its norms zero-padded) maps again, every group exact."""
    model, x, graph = _mapped("gpt2")
    _informative_norms(model)
    small = compact_model(graph, uniform_channel_mask(graph, random_scores(graph, seed=1), 0.3)).eval()
    again = build_channel_graph(small, x, "gpt2-pruned")
    assert all(g.exact for g in again.prunable_groups) and again.prunable_macs_share() == pytest.approx(1.0)
    mask = uniform_channel_mask(again, random_scores(again, seed=2), 0.3)
    smaller = compact_model(again, mask).eval()
    with torch.no_grad():
        want = output_tensor(masked_model(small, again, mask).eval()(x))
        assert max_rel_diff(output_tensor(smaller(x)), want) <= 1e-4
        assert max_rel_diff(output_tensor(smaller(x)), output_tensor(small(x))) > 1e-2


def test_t5_relative_position_bias_ties_the_heads_of_every_layer():
    """T5 computes its relative position bias (an embedding with one column per head) in the first layer of each
    stack and adds it to every layer's scores: head h of every layer keeps or loses bias column h, so each
    stack's self-attention heads are one group. Cross-attention adds zeros made with the configured head count,
    which no channel carries: those heads are frozen, with the reason."""
    model, x, graph = _mapped("t5")
    _informative_norms(model)
    for stack in ("encoder", "decoder"):
        table = f"model.{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        group = next(g for g in graph.prunable_groups if table in {s.tensor for s in g.slices})
        queries = {s.tensor for s in group.producers if s.tensor.endswith("SelfAttention.q.weight")}
        assert group.size == model.config.num_heads and len(queries) == model.config.num_layers
    cross = [g for g in graph.groups if any("EncDecAttention.q." in s.tensor for s in g.producers)]
    assert cross and all(not g.prunable and "mask" in g.reason for g in cross)
    mask = uniform_channel_mask(graph, random_scores(graph, seed=3), 0.5)
    small = compact_model(graph, mask).eval()
    attn = small.model.encoder.block[1].layer[0].SelfAttention
    assert attn.n_heads == attn.q.out_features // attn.key_value_proj_dim == model.config.num_heads // 2
    with torch.no_grad():
        assert max_rel_diff(small(x), masked_model(model, graph, mask).eval()(x)) <= 1e-4


class PerHeadBias(nn.Module):
    """Hand-written attention with a per-head additive bias: a parameter (prunable with its head) or a buffer
    computed from constants (ALiBi-like slopes): then no channel carries the heads, and they must stay."""

    def __init__(self, learned: bool, width: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)
        bias = torch.linspace(-1, 1, heads).view(1, heads, 1, 1)
        if learned:
            self.bias = nn.Parameter(bias.clone())
        else:
            self.register_buffer("bias", bias)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (proj(x).view(b, s, -1, 4).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.expand(b, -1, s, s))
        return self.out(y.transpose(1, 2).reshape(b, s, -1))


@pytest.mark.parametrize("learned", [True, False])
def test_per_head_attention_mask_follows_the_heads_or_freezes_them(learned):
    torch.manual_seed(0)
    model, x = PerHeadBias(learned).eval(), torch.randn(2, 6, 16)
    graph = build_channel_graph(model, x, "per-head-bias", front_end="export")
    heads = [g for g in graph.groups if any(s.tensor == "q.weight" for s in g.producers)]
    assert len(heads) == 1 and heads[0].size == 4 and heads[0].prunable == learned
    if learned:
        assert "bias" in {s.tensor for s in heads[0].slices}
        mask = ChannelMask({heads[0].id: np.array([True, False, True, False])}, graph.model_name, graph.fingerprint())
        small = compact_model(graph, mask).eval()
        with torch.no_grad():
            assert max_rel_diff(small(x), masked_model(model, graph, mask).eval()(x)) <= 1e-5
            assert small.bias.shape[1] == 2
    else:
        assert "mask" in heads[0].reason


class Bucketed(nn.Module):
    """Comparisons and where on activations: per element, so channels pass through them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 12), nn.Linear(12, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.where(h > 0, h, 0.1 * h) + (h <= -1).float())


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_where_and_comparisons_pass_channels(front_end):
    torch.manual_seed(0)
    model, x = Bucketed().eval(), torch.randn(4, 8)
    graph = build_channel_graph(model, x, "bucketed", front_end=front_end)
    (group,) = graph.prunable_groups
    keep = np.arange(12) % 3 != 0
    mask = ChannelMask({group.id: keep}, graph.model_name, graph.fingerprint())
    small = compact_model(graph, mask).eval()
    with torch.no_grad():
        assert small(x).shape == (4, 3) and max_rel_diff(small(x), masked_model(model, graph, mask)(x)) <= 1e-5
