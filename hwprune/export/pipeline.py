"""Mask -> compacted model -> verified ONNX file, with the check that runs on every export."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx, nn

from hwprune.errors import EquivalenceError, HwpruneError, VerificationError, first_line
from hwprune.export.compact import compact_model, masked_model
from hwprune.export.onnx_export import check_onnx, export_onnx, input_shape, ort_session, run_onnx, token_ids
from hwprune.export.verify import (
    DEFAULT_TOLERANCE,
    calibrate_for_check,
    check_finite,
    max_rel_diff,
    nonfinite_summary,
    randomize_for_check,
    vacuity,
)
from hwprune.files import check_writable, staged
from hwprune.graph_mapper.flops import count_flops
from hwprune.graph_mapper.types import ChannelGraph
from hwprune.prune.masks import ChannelMask


@dataclass
class ExportReport:
    """What an export produced and how well it matched the masked model."""

    model: str
    onnx_path: str | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_rel_diff: float | None  # compacted vs masked (None when inexact groups were pruned)
    onnx_max_rel_diff: float | None
    exporter: str | None
    groups_pruned: int
    channel_density: float
    notes: list[str] = field(default_factory=list)
    random_max_rel_diff: float | None = None  # the same compaction of a randomised copy vs its masked model
    onnx_random_max_rel_diff: float | None = None  # the same export of the randomised compacted model
    check_seed: int | None = None  # seed of the randomised copy (None: checked on the user's weights only)
    onnx_input_shape: list | None = None  # what the file's input declares: a name for each dynamic axis
    onnx_second_shape: list[int] | None = None  # the second input it was checked at (None: its axes are static)
    onnx_second_max_rel_diff: float | None = None  # ONNX vs compacted model at that second input

    def table(self) -> str:
        def row(name, before, after):
            return f"| {name} | {before:,} | {after:,} | {after / before:.3f} |"

        lines = [
            f"## {self.model}: compacted and verified",
            "",
            "| | before | after | ratio |",
            "|---|---:|---:|---:|",
            row("params", self.params_before, self.params_after),
            row("FLOPs", self.flops_before, self.flops_after),
            "",
            "FLOPs: fvcore, one multiply-add counts as one FLOP.",
            f"Groups pruned: {self.groups_pruned}; channel density over prunable groups {self.channel_density:.3f}.",
        ]
        randomised = f"randomised weights (seed {self.check_seed})"
        if self.max_rel_diff is not None:
            line = f"Compacted vs masked model: max relative difference {self.max_rel_diff:.2e} on your weights"
            if self.random_max_rel_diff is not None:
                line += f", {self.random_max_rel_diff:.2e} on {randomised}"
            lines.append(line + ".")
        if self.onnx_path:
            line = (
                f"ONNX ({self.exporter} exporter) vs compacted model in onnxruntime: "
                f"max relative difference {self.onnx_max_rel_diff:.2e} -> {self.onnx_path}"
            )
            if self.onnx_random_max_rel_diff is not None:
                line += f"; the same export on {randomised}: {self.onnx_random_max_rel_diff:.2e}"
            lines.append(line)
            if self.onnx_second_shape is not None:
                lines.append(
                    f"ONNX input {_shape(self.onnx_input_shape)} (named axes dynamic): also checked in onnxruntime "
                    f"at input {_shape(self.onnx_second_shape)}, max relative difference "
                    f"{self.onnx_second_max_rel_diff:.2e}"
                )
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class CompactionProof:
    """What :func:`prove_compaction` established.

    ``diff`` compares the compacted with the masked model on the user's weights, ``random_diff`` the
    same graph and mask compacted from a copy with randomised parameters and buffers (both None when
    inexact groups were pruned); ``random_compacted`` is that compacted copy (for the export check).
    """

    compacted: nn.Module
    diff: float | None
    random_diff: float | None = None
    random_compacted: nn.Module | None = None
    seed: int | None = None
    notes: list[str] = field(default_factory=list)


def randomized_graph(
    graph: ChannelGraph, seed: int = 0, example: torch.Tensor | None = None, mask: ChannelMask | None = None
) -> ChannelGraph:
    """The same graph (groups, sites, rewrites) over a deep copy of its module with random values.

    Compaction is a function of the graph and mask only, so compacting this copy exercises exactly
    what compacting the user's model does, on values where every channel is distinct. With an
    ``example``, every layer is rescaled to pass on activations of order one on it
    (:func:`calibrate_for_check`), measured on the masked model when ``mask`` is given (the model the
    check compares against), so that a wrong channel in an early layer still reaches the output.
    """
    gm = copy.deepcopy(graph.gm)
    site_buffers = {s.tensor for s in graph.sites} & {name for name, _ in gm.named_buffers()}
    randomize_for_check(gm, seed, buffers=site_buffers).eval()
    random_graph = dataclasses.replace(graph, gm=gm)
    if example is not None:
        target = gm if mask is None else masked_model(gm, random_graph, mask)
        factors = calibrate_for_check(target, example)
        if target is not gm:  # the same factors for the copy that is compacted
            tensors = dict(gm.named_parameters()) | dict(gm.named_buffers())
            with torch.no_grad():
                for name, factor in factors.items():
                    tensors[name].mul_(factor)
    return random_graph


def _require_finite_input(example: torch.Tensor, name: str) -> None:
    bad = nonfinite_summary(example)
    if bad:
        raise VerificationError(f"the example input for {name} has non-finite values ({bad}): give a finite input")


def _require_finite_reference(reference, what: str) -> None:
    bad = nonfinite_summary(reference)
    if bad:
        raise VerificationError(
            f"{what} is not finite ({bad}): no equivalence can be proved on it; check the weights and the input"
        )


def prove_compaction(
    model: nn.Module,
    graph: ChannelGraph,
    mask: ChannelMask,
    example: torch.Tensor,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    randomized: bool = True,
    seed: int = 0,
    compactor: Callable[[ChannelGraph, ChannelMask], nn.Module] | None = None,
) -> CompactionProof:
    """Compact ``model`` and prove the compacted model equal to the masked model on every exact group.

    The proof runs on the user's weights and (``randomized``) on a copy with random parameters and
    buffers compacted with the same graph and mask, so that it cannot pass vacuously (init weights
    make BatchNorm the identity on every channel; a zero-initialised head outputs zeros). It fails
    with a one-line :class:`VerificationError` on non-finite weights, inputs or reference outputs and
    when the reference that carries the proof is zero or constant, and with an
    :class:`EquivalenceError` (carrying the difference) when a comparison exceeds ``tolerance``.
    ``compactor`` replaces :func:`compact_model` (tests pass deliberately wrong compactions).
    """
    mask.validate(graph)
    name = graph.model_name
    check_finite(model, name)
    _require_finite_input(example, name)
    compact = compactor if compactor is not None else compact_model  # looked up now: tests patch it
    proof = CompactionProof(compact(graph, mask), None, seed=seed if randomized else None)
    random_graph = None
    if randomized:
        random_graph = randomized_graph(graph, seed, example, mask)
        proof.random_compacted = compact(random_graph, mask).eval()
    if any(not graph.groups[g].exact for g in mask.pruned_groups()):
        return proof
    oracle = masked_model(model, graph, mask).eval()
    with torch.no_grad():
        reference = oracle(example)
        del oracle  # a whole copy of the model: not kept while the randomised copies exist
        _require_finite_reference(reference, f"the masked {name}'s output on your weights")
        try:
            actual = proof.compacted(example)
        except Exception as exc:  # a size attribute the compaction left stale fails here, in any op
            cause = (
                "a layer keeps a channel count that its op handler does not update (see `resized_by`); please "
                "report it with the model and mask"
                if isinstance(graph.gm, fx.GraphModule)
                else "its code computes a size from a fixed number (mapped with torch.export, only tensors and "
                "layers are resized); freeze that layer's groups or write the size from the input's shape"
            )
            raise EquivalenceError(f"compacted {name} does not run ({first_line(exc)}): {cause}", float("inf")) from exc
        proof.diff = diff = max_rel_diff(actual, reference)
    if not diff <= tolerance:
        raise EquivalenceError(
            f"compacted {name} differs from the masked model by {diff:.2e} on your weights (relative, tolerance "
            f"{tolerance:.0e}): this is a mapper bug, please report it with the model and mask",
            diff,
        )
    vacuous = vacuity(reference, tolerance)
    if random_graph is None:
        if vacuous:
            raise VerificationError(
                f"cannot verify compacted {name}: the masked model's output on your weights is {vacuous}, so no "
                "comparison against it can fail; verify on randomised weights (the default)"
            )
        return proof
    random_oracle = masked_model(random_graph.gm, random_graph, mask).eval()
    with torch.no_grad():
        random_reference, random_actual, exact = _in_float64(random_oracle, proof.random_compacted, example)
        del random_oracle
        random_tolerance = min(tolerance, FLOAT64_TOLERANCE) if exact else tolerance
        random_vacuous = vacuity(random_reference, random_tolerance)
        if random_vacuous:
            raise VerificationError(
                f"cannot verify compacted {name}: the masked model's output is {random_vacuous} even on randomised "
                f"weights (seed {seed}), so no comparison against it can fail: does the output depend on the input "
                "and on the pruned channels?"
            )
        proof.random_diff = random_diff = max_rel_diff(random_actual, random_reference)
    if not random_diff <= random_tolerance:
        precision = "float64" if exact else "float32"
        raise EquivalenceError(
            f"compacted {name} differs from the masked model by {random_diff:.2e} on randomised weights (seed "
            f"{seed}, {precision}; {diff:.2e} on your weights; relative, tolerance {random_tolerance:.0e}): this "
            "is a mapper bug, please report it with the model and mask",
            random_diff,
        )
    if vacuous:
        proof.notes.append(
            f"the masked model's output on your weights is {vacuous}, so that comparison could not fail; "
            "equivalence rests on the randomised-weights check"
        )
    return proof


# the randomised comparison in float64: rounding stays below 1e-13 on every zoo model, a wrong channel above 1e-4
FLOAT64_TOLERANCE = 1e-9


def _in_float64(reference: nn.Module, actual: nn.Module, example: torch.Tensor) -> tuple:
    """Outputs of ``reference`` and ``actual`` on ``example`` and whether every step ran in float64.

    ``reference`` is converted in place (it is a throwaway copy), ``actual`` converted and converted back
    (float32 -> float64 -> float32 is exact), so no copy is made. The randomised
    copy's values are arbitrary, so its comparison may as well be free of rounding: in float32 a
    deep network's rounding alone reaches 3e-5 of the output (EfficientNet-B7), close to the
    tolerance, and a wrong channel whose effect fades to 1.6e-4 (ShuffleNet) is barely seen; in
    float64 rounding stays below 1e-13 and the check can be 1e5 times stricter. Float32 (and False)
    when an op has no float64 kernel or a step computes in another precision.
    """
    if example.is_floating_point() and isinstance(reference, fx.GraphModule) and isinstance(actual, fx.GraphModule):
        dtype = next((p.dtype for p in actual.parameters() if p.is_floating_point()), torch.float32)
        try:
            x = example.double()
            ref, ref_pure = _run_checking_float64(reference.double(), x)
            out, out_pure = _run_checking_float64(actual.double(), x)
            return ref, out, ref_pure and out_pure
        except Exception:  # an op without a float64 kernel, a float32 tensor made inside: float32 decides
            reference.to(dtype)
        finally:
            actual.to(dtype)
    return reference(example), actual(example), False


def _run_checking_float64(gm: fx.GraphModule, example: torch.Tensor) -> tuple:
    """Run ``gm``; also say whether every floating-point value it computed was float64."""
    pure = True

    class Probe(fx.Interpreter):
        def run_node(self, n):
            nonlocal pure
            out = super().run_node(n)
            values = out if isinstance(out, (list, tuple)) else [out]
            pure = pure and all(
                v.dtype == torch.float64 for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()
            )
            return out

    return Probe(gm).run(example), pure


def compact_and_verify(
    model: nn.Module,
    graph: ChannelGraph,
    mask: ChannelMask,
    example: torch.Tensor,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    randomized: bool = True,
    seed: int = 0,
    compactor: Callable[[ChannelGraph, ChannelMask], nn.Module] | None = None,
) -> tuple[nn.Module, float | None]:
    """Compact ``model`` and check it against the masked model on every exact group.

    See :func:`prove_compaction`; returns the compacted model and the difference on the user's weights.
    """
    proof = prove_compaction(
        model, graph, mask, example, tolerance, randomized=randomized, seed=seed, compactor=compactor
    )
    return proof.compacted, proof.diff


def _shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def second_input(example: torch.Tensor, shape: list) -> torch.Tensor | None:
    """The second input at which a token-ids file with dynamic axes is checked; None for any other file.

    ``shape`` is what the file's input declares (:func:`~hwprune.export.onnx_export.input_shape`). Where the
    token axis is dynamic, the first half of the example's tokens (valid ids at another length; two tokens
    from one); where the batch axis is, one more row (the same ids reversed). A length or batch size the
    exporter baked into an op (a reshape, a mask) then shows as a difference or an error.
    """
    if not token_ids(example) or len(shape) != 2:
        return None
    batch_dynamic, tokens_dynamic = (not isinstance(d, int) for d in shape)
    x = example
    if tokens_dynamic:
        x = x[:, : x.shape[1] // 2] if x.shape[1] >= 2 else x.repeat(1, 2)
    if batch_dynamic:
        x = torch.cat([x, x.flip(1)])
    return x if x is not example else None


@dataclass
class OnnxCheck:
    """An ONNX file compared in onnxruntime with the module it came from (:func:`compare_onnx`).

    ``diff`` at the example (``reference`` is the module's output there); for token ids whose file declares
    dynamic axes (``input_shape``), ``second_diff`` at :func:`second_input` (``second_shape``; ``inf`` with
    ``second_error`` when the file or the module does not run there). ``exporter`` wrote the file; ``notes``
    say why a file of token ids is static.
    """

    diff: float
    reference: object
    input_shape: list
    second_shape: list[int] | None = None
    second_diff: float | None = None
    second_error: str | None = None
    exporter: str | None = None
    notes: list[str] = field(default_factory=list)

    def second_failure(self, tolerance: float, weights: str) -> str | None:
        """Why the file's dynamic axes cannot ship (it differs at the second input), or None when they can."""
        if self.second_diff is None or self.second_diff <= tolerance:
            return None
        what = (
            f"does not run ({self.second_error})"
            if self.second_error
            else f"differs from the model by {self.second_diff:.2e}"
        )
        return (
            f"the {self.exporter or 'ONNX'} export with input {_shape(self.input_shape)} {what} at input "
            f"{_shape(self.second_shape)} on {weights} (relative, tolerance {tolerance:.0e}): exported again static"
        )


def compare_onnx(module: nn.Module, example: torch.Tensor, path: str | Path) -> OnnxCheck:
    """Compare the ONNX file at ``path`` with ``module`` in onnxruntime, at ``example`` and at a second input.

    The second input (:func:`second_input`) exists where the file declares dynamic axes for token ids; a
    static file has no second comparison (``second_diff`` None), which is not a failure: it says what the
    file is. Judging the differences is the caller's.
    """
    session = ort_session(path)
    with torch.no_grad():
        reference = module(example)
    check = OnnxCheck(max_rel_diff(run_onnx(session, example), reference), reference, input_shape(session))
    second = second_input(example, check.input_shape)
    if second is not None:
        check.second_shape = list(second.shape)
        try:
            with torch.no_grad():
                check.second_diff = max_rel_diff(run_onnx(session, second), module(second))
        except Exception as exc:  # onnxruntime or the module refuses the other shape: the axis is not truly dynamic
            check.second_diff, check.second_error = float("inf"), first_line(exc)
    return check


def _export_compared(
    module: nn.Module, example: torch.Tensor, path: Path, exporter: str, *, dynamic: bool
) -> OnnxCheck:
    """Export ``module`` (token ids with dynamic axes when ``dynamic``), check the file, compare it at both inputs."""
    notes: list[str] = []
    used = export_onnx(module, example, path, exporter, dynamic=dynamic, notes=notes)
    check_onnx(path)
    check = compare_onnx(module, example, path)
    check.exporter = used
    shape = check.input_shape
    if token_ids(example) and (len(shape) != 2 or isinstance(shape[1], int)):  # say why it runs at one length only
        why = "exported static" if not dynamic else "torch.export specialised the token axis to the example"
        check.notes = notes or [
            f"the ONNX file's input is {_shape(check.input_shape)} ({why}): it runs at {example.shape[1]} tokens only"
        ]
    return check


def export_pruned(
    model: nn.Module,
    graph: ChannelGraph,
    mask: ChannelMask,
    example: torch.Tensor,
    onnx_path: str | Path | None,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: str = "dynamo",
    *,
    randomized: bool = True,
    seed: int = 0,
) -> tuple[nn.Module, ExportReport]:
    """Compact, verify, export to ONNX, verify again in onnxruntime; write nothing unless all pass.

    With ``randomized`` (the default) both proofs also run on a randomised copy: the compaction (see
    :func:`prove_compaction`) and the export path (the randomised compacted model exported with the
    same exporter to a temporary file and compared in onnxruntime), so neither can pass vacuously.
    The shipped file holds the user's weights and is compared on them.
    """
    if onnx_path is not None:
        onnx_path = check_writable(onnx_path)
    model.eval()
    proof = prove_compaction(model, graph, mask, example, tolerance, randomized=randomized, seed=seed)
    compacted, diff = proof.compacted, proof.diff
    before, after = count_flops(model, example), count_flops(compacted, example)
    notes = list(proof.notes)
    if diff is None:
        notes.append(
            "inexact groups pruned (a weight-free op mixes their channels): the compacted model "
            "is not expected to equal the masked model; ONNX is still checked against it"
        )
    onnx_diff, onnx_random_diff, used, shipped = None, None, None, None
    name = graph.model_name
    if onnx_path is not None:
        with staged(onnx_path) as tmp:
            for dynamic in (True, False):  # dynamic axes (token ids) unless they do not hold at a second input
                shipped = _export_compared(compacted, example, tmp, exporter, dynamic=dynamic)
                used, onnx_diff = shipped.exporter, shipped.diff
                vacuous = _onnx_matched(shipped, name, tolerance, "your weights")
                random_check = None
                if proof.random_compacted is None:
                    if vacuous:
                        raise VerificationError(
                            f"cannot verify the ONNX export of {name}: the compacted model's output on your weights "
                            f"is {vacuous}, so no comparison against it can fail; nothing was written"
                        )
                else:
                    random_check = _check_export_path(proof, example, shipped, name, tolerance, seed)
                    onnx_random_diff = random_check.diff
                failure = shipped.second_failure(tolerance, "your weights") or (
                    random_check and random_check.second_failure(tolerance, f"randomised weights (seed {seed})")
                )
                if not failure:
                    break
                notes.append(failure)
            notes += shipped.notes
            if vacuous and proof.random_compacted is not None:
                notes.append(
                    f"the compacted model's output on your weights is {vacuous}, so the onnxruntime comparison "
                    "of the shipped file could not fail; the export path is proved on randomised weights"
                )
    report = ExportReport(
        model=name,
        onnx_path=str(onnx_path) if onnx_path else None,
        params_before=before.params,
        params_after=after.params,
        flops_before=before.flops,
        flops_after=after.flops,
        max_rel_diff=diff,
        onnx_max_rel_diff=onnx_diff,
        exporter=used,
        groups_pruned=len(mask.pruned_groups()),
        channel_density=mask.channel_density(graph),
        notes=notes,
        random_max_rel_diff=proof.random_diff,
        onnx_random_max_rel_diff=onnx_random_diff,
        check_seed=proof.seed,
        onnx_input_shape=shipped.input_shape if shipped else None,
        onnx_second_shape=shipped.second_shape if shipped else None,
        onnx_second_max_rel_diff=shipped.second_diff if shipped else None,
    )
    return compacted, report


def _onnx_matched(check: OnnxCheck, name: str, tolerance: float, weights: str) -> str | None:
    """Raise unless the ONNX file matched the compacted model at the example; say if that could not fail."""
    _require_finite_reference(check.reference, f"compacted {name}'s output on {weights}")
    if not check.diff <= tolerance:
        raise EquivalenceError(
            f"ONNX export of {name} differs from the compacted model in onnxruntime by {check.diff:.2e} on "
            f"{weights} (relative, tolerance {tolerance:.0e}); nothing was written",
            check.diff,
        )
    return vacuity(check.reference, tolerance)


def _check_export_path(
    proof: CompactionProof, example: torch.Tensor, shipped: OnnxCheck, name: str, tolerance: float, seed: int
) -> OnnxCheck:
    """Export the randomised compacted model as the shipped file was (exporter, axes), compare in onnxruntime.

    The file is temporary; a mismatch at the second input is the caller's to judge (it exports again static).
    """
    exporter = shipped.exporter
    with tempfile.TemporaryDirectory(prefix="hwprune-check-") as tmp:
        path = Path(tmp) / "randomised.onnx"
        check = _export_compared(
            proof.random_compacted, example, path, exporter, dynamic=shipped.second_shape is not None
        )
        if check.exporter != exporter:
            raise VerificationError(
                f"the {exporter} exporter exported {name} but failed on its randomised copy (seed {seed}); the "
                "export path could not be verified: try the other exporter"
            )
    vacuous = _onnx_matched(check, name, tolerance, f"randomised weights (seed {seed})")
    if vacuous:
        raise VerificationError(
            f"cannot verify the ONNX export of {name}: the compacted model's output is {vacuous} even on randomised "
            f"weights (seed {seed}), so no comparison against it can fail; nothing was written"
        )
    return check


def export_checked(
    module: nn.Module, example: torch.Tensor, path: str | Path, exporter: str, tolerance: float = DEFAULT_TOLERANCE
) -> OnnxCheck:
    """Export ``module`` to ``path`` and check it in onnxruntime against the module; nothing written on failure.

    For a module already proved (a compacted model, fine-tuned or not) whose ONNX file must be rewritten.
    Token ids are exported with dynamic axes and checked at a second input too (:func:`second_input`); a file
    whose dynamic axes do not hold there is exported again static, with a note saying why.
    """
    path = Path(path)
    fallback: list[str] = []
    with staged(path) as tmp:
        for dynamic in (True, False):
            check = _export_compared(module.eval(), example, tmp, exporter, dynamic=dynamic)
            if not check.diff <= tolerance:
                raise HwpruneError(
                    f"ONNX export differs from the model by {check.diff:.2e}; nothing was written to {path}"
                )
            failure = check.second_failure(tolerance, "the model's weights")
            if not failure:
                break
            fallback.append(failure)
    check.notes[:0] = fallback
    return check


def export_verified(module: nn.Module, example: torch.Tensor, path: str | Path, exporter: str) -> tuple[str, float]:
    """:func:`export_checked`, returning the exporter used and the relative difference at the example."""
    check = export_checked(module, example, path, exporter)
    return check.exporter, check.diff
