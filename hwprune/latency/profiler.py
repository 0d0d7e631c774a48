"""The edge profiler: time the whole network with one channel group shrunk, for every group.

Each measurement is appended to a JSONL journal (flushed and fsynced) the moment it is taken; a
run that is killed resumes from the journal, measuring nothing twice. The journal's header holds
what the measurements depend on, and a journal from another setting is refused.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hwprune.errors import HwpruneError
from hwprune.export.compact import compact_model
from hwprune.export.onnx_export import DEFAULT_EXPORTER, export_onnx
from hwprune.graph_mapper.cost import CostModel
from hwprune.graph_mapper.types import ChannelGraph, ChannelGroup
from hwprune.latency.backends import BACKENDS, DEFAULT_BACKEND, measure, onnx_backends
from hwprune.latency.lut import LUT, EdgePoint
from hwprune.latency.measurement import paired_delta_ms
from hwprune.prune.channel import norm_scores, top_k_mask, unit_of
from hwprune.prune.masks import ChannelMask


def profiled_groups(graph: ChannelGraph, round_to: int = 1, min_steps: int = 1) -> list[ChannelGroup]:
    """Groups the profiler and the solver act on: prunable, exact, able to shrink by a whole step."""
    return [g for g in graph.prunable_groups if g.exact and unit_of(g, round_to, min_steps) < g.size]


def kept_for(group: ChannelGroup, point: float, round_to: int = 1) -> int:
    """Channels kept at ``point`` (a kept fraction), a whole number of units (see ``unit_of``)."""
    unit = unit_of(group, round_to)
    return int(min(group.size - unit, max(unit, round(group.size * point / unit) * unit)))


def random_mask(graph: ChannelGraph, rng: np.random.Generator, min_keep: float = 0.1, round_to: int = 1) -> ChannelMask:
    """Each profiled group keeps a uniform random share in [min_keep, 1] (whole units) of random channels."""
    mask = ChannelMask.full(graph)
    for g in profiled_groups(graph, round_to):
        unit = unit_of(g, round_to)
        lo = max(unit, int(np.ceil(g.size * min_keep / unit)) * unit)
        kept = int(rng.integers(lo // unit, g.size // unit + 1)) * unit
        if kept < g.size:
            mask.keep[g.id] = top_k_mask(g, rng.random(g.size), kept)
    return mask


def check_per_op(backend: str, calibration_masks: int) -> None:
    """Refuse ``--per-op`` on a backend that cannot time ops, or with too few masks to fit op costs from."""
    if not BACKENDS.get(backend).reports_op_times:
        reporting = ", ".join(n for n in BACKENDS.names() if BACKENDS.get(n).reports_op_times)
        raise HwpruneError(f"--per-op: backend {backend!r} cannot report per-op timings (these can: {reporting})")
    if calibration_masks < 2:
        raise HwpruneError(
            f"--per-op learns from random masks: give --calibration-masks 2 or more (got {calibration_masks})"
        )


def check_kernel_table(backend: str, from_onnx: bool = False) -> None:
    """Refuse ``--kernel-table`` where ops cannot be timed alone (the backend, or a model given as ONNX)."""
    if not BACKENDS.get(backend).times_ops_alone:
        alone = ", ".join(n for n in BACKENDS.names() if BACKENDS.get(n).times_ops_alone)
        raise HwpruneError(f"--kernel-table: backend {backend!r} cannot time ops alone (these can: {alone})")
    if from_onnx:
        raise HwpruneError("--kernel-table times PyTorch ops alone; a model given as an ONNX file has none")


def _header(graph, example, backend, threads, points, repeats, round_to, passes) -> dict:
    return {
        "kind": "header",
        "model": graph.model_name,
        "fingerprint": graph.fingerprint(),
        "input_shape": list(example.shape),
        "backend": backend,
        "threads": threads,
        "points": list(points),
        "repeats": repeats,
        "round_to": round_to,
        "passes": passes,
    }


JOURNAL_FLAGS = {  # header setting -> the option that sets it, for messages
    "model": "--model",
    "fingerprint": "--model/--input-size",
    "input_shape": "--input-size/--batch",
    "backend": "--backend",
    "threads": "--threads",
    "points": "--points",
    "repeats": "--repeats",
    "round_to": "--round-to",
    "exporter": "--exporter",
}


def _read_journal(path: Path, header: dict | None, repair: bool = True) -> list[dict]:
    """The journal's measurements, every line checked (``hwprune.checks.journal_record``).

    A torn last line (a run killed mid-write: no newline, not JSON) is dropped with a one-line notice
    and, with ``repair``, cut from the file so the next append starts on a fresh line. A journal whose
    header differs from ``header`` (None: not compared) in any setting the measurements depend on is
    refused, naming the setting; ``passes`` may grow (later passes extend the journal consistently).
    """
    from hwprune.checks import JOURNAL_FIX, journal_record

    if not path.exists():
        return []
    if path.is_dir():
        raise HwpruneError(f"journal {path} is a folder: give a file path (--journal)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HwpruneError(f"cannot read journal {path}: {exc.strerror or exc}") from None
    chunks = raw.split(b"\n")
    torn = False
    if chunks[-1].strip():  # the last line has no newline: complete (kept) or torn (dropped)
        try:
            json.loads(chunks[-1].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            torn = True
            chunks = chunks[:-1]
    records = []
    for i, chunk in enumerate(chunks, start=1):
        if not chunk.strip():
            continue
        try:
            rec = json.loads(chunk.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise HwpruneError(
                f"journal {path} line {i} is not UTF-8 text (offset {exc.start}): {JOURNAL_FIX}"
            ) from None
        except ValueError as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise HwpruneError(f"journal {path} line {i} is not valid JSON ({msg}): {JOURNAL_FIX}") from None
        records.append(journal_record(rec, path, i, header=not records))
    if repair and raw and (torn or not raw.endswith(b"\n")):
        from hwprune.files import write_atomically

        write_atomically(path, b"".join(c + b"\n" for c in chunks if c.strip()))
    if torn and repair:  # reported once, by the read that resumes (a check with repair=False stays quiet)
        print(
            f"hwprune: note: journal {path}: dropped a torn last line (a run stopped mid-write); "
            f"resuming from {max(len(records) - 1, 0)} measurement(s)",
            file=sys.stderr,
        )
    if not records:
        return []
    if header is not None:
        _compare_header(path, records[0], header)
    return [rec for rec in records[1:] if rec.get("kind") in ("edge", "calibration")]


def _compare_header(path: Path, old: dict, header: dict) -> None:
    """Refuse a journal written with other settings, naming the first that differs."""
    for key, value in header.items():
        if key in ("kind", "passes"):
            continue
        if key not in old:
            raise HwpruneError(
                f"journal {path} does not record its {key} (an older hwprune wrote it): delete it to measure again"
            )
        have = old[key]
        if key == "points":
            have, value = sorted(have), sorted(value)
        if have == value:
            continue
        flag = JOURNAL_FLAGS.get(key, key)
        if key in ("model", "fingerprint", "input_shape", "backend"):
            raise HwpruneError(
                f"journal {path} belongs to another run ({key} {old[key]} vs {header[key]} now): "
                "delete it or choose another --journal"
            )
        shown = ",".join(f"{p:g}" for p in old[key]) if key == "points" else old[key]
        raise HwpruneError(
            f"journal {path} was measured with {key} {old[key]}, this run asks for {header[key]}: rerun with "
            f"{flag} {shown} to resume it, or delete the journal to start over (its measurements are lost)"
        )


def _append(fh, record: dict) -> None:
    fh.write(json.dumps(record) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def profile_edges(
    model: nn.Module,
    graph: ChannelGraph,
    example: torch.Tensor,
    backend: str = DEFAULT_BACKEND,
    points: tuple[float, ...] = (0.5,),
    threads: int = 1,
    repeats: int = 20,
    journal: str | Path | None = None,
    progress: bool = True,
    exporter: str = DEFAULT_EXPORTER,
    round_to: int = 1,
    calibration_masks: int = 16,
    seed: int = 0,
    passes: int = 1,
    per_op: bool = False,
    kernel_table: bool = False,
) -> LUT:
    """Measure every profiled group at each kept fraction in ``points`` against the dense model.

    With ``passes`` > 1 every group is measured again in later passes over the whole list and its
    point keeps the median saving: a host's speed drifts over minutes, which repeats within one
    measurement cannot average out. Then ``calibration_masks`` random masks (every group shrunk at
    once) are measured: the latency model learns from them how groups interact.

    ``per_op``: the dense model and each calibration mask are also profiled op by op by the backend
    (:mod:`hwprune.latency.op_timing`), so every mask teaches the model each op's cost at once; ``points``
    may then be empty (no single-group points: a ResNet-50 profile in seconds, not minutes).

    ``kernel_table``: each conv/linear op is also timed alone over the channel counts of the
    ``round_to`` grid (:mod:`hwprune.latency.kernel_table`; backends whose ``times_ops_alone`` is set),
    for backends whose latency is jagged in channel count.
    """
    if passes < 1:
        raise HwpruneError(f"--passes is a whole number of passes over the groups, at least 1 (got {passes})")
    if (not points and not per_op) or any(not 0.0 < p < 1.0 for p in points):
        raise HwpruneError(f"--points are kept fractions strictly between 0 and 1 (got {list(points)})")
    engine = BACKENDS.get(backend)
    if per_op:
        check_per_op(backend, calibration_masks)
    if kernel_table:
        check_kernel_table(backend, graph.from_onnx)
    header = _header(graph, example, backend, threads, points, repeats, round_to, passes)
    header["exporter"] = exporter  # the LUT is valid for files from this exporter only (see DEFAULT_EXPORTER)
    if per_op:  # recorded only when set: journals from before the option stay valid
        header["per_op"] = True
    if kernel_table:
        header["kernel_table"] = True
    journal = Path(journal) if journal else None
    records = _read_journal(journal, header) if journal else []
    done = [r for r in records if r["kind"] == "edge"]
    calibration = [r for r in records if r["kind"] == "calibration"]
    done_keys = {(r["group"], r["point"], r.get("pass", 0)) for r in done}
    groups = profiled_groups(graph, round_to)
    scores = norm_scores(graph, model, p=1)
    costs = CostModel(graph)
    todo = [(g, p, k) for k in range(passes) for g in groups for p in points if (g.id, p, k) not in done_keys]
    if isinstance(model, nn.Module):  # an ONNX file's initializers (InitializerParameters) have no mode
        model.eval()
    fh = None
    if journal:
        fresh = not journal.exists() or not journal.read_text().strip()
        fh = open(journal, "a")  # noqa: SIM115 (kept open across the loop, closed below)
        if fresh:
            _append(fh, header)
    try:
        with tempfile.TemporaryDirectory(prefix="hwprune-profile-") as tmp:
            candidates = Candidates(graph, example, backend, Path(tmp), exporter, groups)
            rng = np.random.default_rng(seed)
            masks = [random_mask(graph, rng, round_to=round_to) for _ in range(calibration_masks)]
            if per_op:  # the dense model's own op times: every op's full-width point
                masks.insert(0, ChannelMask.full(graph))
            remaining = masks[len(calibration) :]
            # one bar over edges and calibration masks: the whole profile, never silent for minutes
            total, desc = len(todo) + len(remaining), f"profiling {graph.model_name} on {backend}"
            with tqdm(total=total, desc=desc, unit="point", disable=not progress) as bar:  # closed on interrupt too
                for group, point, pass_ in todo:
                    kept = kept_for(group, point, round_to)
                    mask = ChannelMask.full(graph)
                    mask.keep[group.id] = top_k_mask(group, scores[group.id], kept)
                    base, cand, latency_ms = time_mask(
                        graph,
                        mask,
                        candidates.baseline,
                        backend,
                        example,
                        threads,
                        repeats,
                        exporter,
                        candidates.of(mask),
                    )
                    macs_after, _ = costs.cost({group.id: kept / group.size})
                    record = {
                        "kind": "edge",
                        "group": group.id,
                        "name": group.name,
                        "size": group.size,
                        "kept": kept,
                        "point": point,
                        "pass": pass_,
                        "baseline_ms": base.median_ms,
                        "latency_ms": latency_ms,
                        "iqr_ms": cand.iqr_ms,
                        "macs_before": costs.total_macs,
                        "macs_after": macs_after,
                        "device": base.device,
                        "versions": base.versions,
                    }
                    done.append(record)
                    if fh:
                        _append(fh, record)
                    bar.update()
                bar.set_postfix_str("calibration masks")
                for i, mask in enumerate(remaining, start=len(calibration)):
                    candidate = candidates.of(mask)
                    base, cand, latency_ms = time_mask(
                        graph, mask, candidates.baseline, backend, example, threads, repeats, exporter, candidate
                    )
                    record = {
                        "kind": "calibration",
                        "index": i,
                        "shares": {str(g): float(k.mean()) for g, k in mask.keep.items()},
                        "baseline_ms": base.median_ms,
                        "latency_ms": latency_ms,
                        "device": base.device,
                        "versions": base.versions,
                    }
                    if per_op:
                        ops = engine.op_times(candidate, example, threads=threads, runs=max(5, repeats // 4))
                        record["op_ms"] = {t: ms for t, ms in ops.per_weight_ms.items() if t in costs.tensors}
                        record["rest_ms"] = ops.unattributed_ms
                    calibration.append(record)
                    if fh:
                        _append(fh, record)
                    bar.update()
    finally:
        if fh:
            fh.close()
    meta = {k: v for k, v in header.items() if k != "kind"}
    last = (done + calibration)[-1] if done or calibration else {}
    meta["versions"], meta["device"] = last.get("versions", {}), last.get("device", "")
    pts = _median_over_passes([r for r in done if r.get("pass", 0) < passes])
    kept = ("index", "shares", "baseline_ms", "latency_ms", "op_ms", "rest_ms")
    kernels = {}
    if kernel_table:  # quick (each op alone), so measured afresh on resume rather than journaled
        from hwprune.latency.kernel_table import measure_kernel_table

        dense = compact_model(graph, ChannelMask.full(graph))
        kernels = measure_kernel_table(graph, dense, example, round_to, threads, progress=progress)
    return LUT(meta, pts, [{k: r[k] for k in kept if k in r} for r in calibration], kernels)


def _median_over_passes(records: list[dict]) -> list[EdgePoint]:
    """One EdgePoint per (group, point): median baseline, baseline minus the median saving."""
    fields = set(EdgePoint.__dataclass_fields__)
    by_key: dict[tuple, list[dict]] = {}
    for r in records:
        by_key.setdefault((r["group"], r["point"]), []).append(r)
    out = []
    for rs in by_key.values():
        baseline = float(np.median([r["baseline_ms"] for r in rs]))
        saving = float(np.median([r["baseline_ms"] - r["latency_ms"] for r in rs]))
        merged = {**rs[0], "baseline_ms": baseline, "latency_ms": baseline - saving, "passes": len(rs)}
        merged["iqr_ms"] = float(np.median([r["iqr_ms"] for r in rs]))
        out.append(EdgePoint(**{k: v for k, v in merged.items() if k in fields}))
    return out


def time_mask(graph, mask, baseline, backend, example, threads, repeats, exporter, candidate=None):
    """Time the compacted model of ``mask`` (or ``candidate``, made for it already) interleaved with ``baseline``.

    Returns both Measurements and the candidate's latency as the baseline median minus the median of
    round-by-round differences (drift shared by both within a round cancels).
    """
    if candidate is None:
        candidate = timing_candidate(graph, mask)
    base, cand = measure(backend, [baseline, candidate], example, threads=threads, repeats=repeats, exporter=exporter)
    return base, cand, base.median_ms - paired_delta_ms(base, cand)


def timing_candidate(graph: ChannelGraph, mask: ChannelMask):
    """What a backend times for ``mask``: the compacted model in the form it ships in.

    A GraphModule for a PyTorch model; the compacted ``onnx.ModelProto`` for a graph mapped from an ONNX file.
    """
    if graph.from_onnx:
        from hwprune.export.onnx_compact import compact_onnx

        return compact_onnx(graph, mask)
    return compact_model(graph, mask)


class Candidates:
    """What a profile times: the dense baseline once, and per mask the compacted model as the backend runs it.

    For a PyTorch model on a backend that times ONNX, candidates are cut from the baseline's own exported
    file (:mod:`hwprune.latency.exported_candidates`) instead of exporting each; ``note`` says why not when
    that is impossible. Validation does not use this: it times the very files a user would ship.
    """

    def __init__(self, graph: ChannelGraph, example, backend: str, tmp: Path, exporter: str, groups) -> None:
        from hwprune.latency.exported_candidates import translation_for

        self.graph = graph
        self.baseline = baseline_for(graph, example, backend, tmp, exporter)
        self.translation, self.note = None, ""
        if isinstance(self.baseline, Path) and groups:
            found = translation_for(graph, self.baseline, groups)
            if isinstance(found, str):
                self.note = f"every candidate is exported ({found})"
                print(f"hwprune: note: {self.note}", file=sys.stderr)
            else:
                self.translation = found

    def of(self, mask: ChannelMask):
        if self.translation is None:
            return timing_candidate(self.graph, mask)
        from hwprune.export.onnx_compact import compact_onnx

        return compact_onnx(self.translation.onnx_graph, self.translation.onnx_mask(mask))


def baseline_for(graph: ChannelGraph, example, backend: str, tmp: Path, exporter: str = DEFAULT_EXPORTER):
    """The dense model in the form the backend times every candidate in.

    Candidates are ``compact_model`` GraphModules, so the baseline is one too (the full mask): timing the
    user's eager module against fx GraphModules would count the interpreter's overhead as pruning's
    effect. onnxruntime backends get it exported once, by the exporter the candidates and the shipped
    file go through. A graph mapped from an ONNX file is its normalised file with every channel kept.
    """
    times_onnx = BACKENDS.get(backend).times_onnx
    if graph.from_onnx:
        if not times_onnx:
            raise HwpruneError(
                f"an ONNX file is timed by a backend that runs ONNX ({onnx_backends()}), not {backend!r}"
            )
        return timing_candidate(graph, ChannelMask.full(graph))
    dense = compact_model(graph, ChannelMask.full(graph)).eval()
    if times_onnx:
        path = tmp / "baseline.onnx"
        export_onnx(dense, example, path, exporter)
        return path
    return dense
