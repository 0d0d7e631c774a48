"""Prune-at-initialization sweeps: pruner x compression x seed, one results row per run.

For each run: build the model with the seed (re-drawn with Synaptic-Flow's initialisation unless
``init="model"``, :mod:`hwprune.models.init`), take the reference pruning set (``samples_per_class`` = 10
samples of each class, batches of 256, class-contiguous), prune at initialization to the density the
compression names (:func:`~hwprune.prune.weight_masking.density_from`: ``ratio`` x keeps 1/x,
``exponent`` x keeps 10^-x), count the input-to-output paths the mask leaves, train with the mask
enforced, evaluate (top-1, top-5, testing time; with ``sparse_eval`` also through the CSR execution
path of :mod:`hwprune.models.sparse_csr`), mark the run ``collapsed``, ``untrainable`` or ``ok``
(:mod:`hwprune.at_init.status`), count the masked model's parameters and effective FLOPs, and append one
:class:`~hwprune.results.RunRecord` to the results store.

FLOPs of a masked model (``flops`` column): the dense model is counted once with
:func:`hwprune.graph_mapper.flops.count_flops`; each layer whose weight is masked contributes its dense FLOPs times
the layer's kept-weight density (an unstructured zero removes exactly its multiply-adds, assuming a
sparse kernel that skips zeros); layers without a mask and parameter-free ops (pooling, additions) count
in full. ``flops_before`` is the dense count. ``params`` is the number of parameters the masked model
keeps (all parameters minus the masked-out weights), ``params_before`` the dense count.

``density`` is kept/total over the pruned (prunable) tensors, ``density_whole_model`` over every
parameter. ``target_value`` is the compression exactly as given; ``extra.compression_mode`` says how to
read it. ``extra`` also holds per-layer density and effective FLOPs, ``status``, ``collapsed`` (no
input-to-output path), ``paths_log10`` and the layers keeping no weight, the logits' spread over the
pruning set after masking (:func:`~hwprune.at_init.status.logit_spread`), the kept weights' sign purity
(:func:`~hwprune.at_init.status.sign_purity`), whether the mask was shuffled, the per-epoch training loss
and test top-1, the testing time(s) and the pruning settings.

Masks follow Synaptic-Flow's selection rule by default (``mask_rule="reference"``: remove the
``int((1-d)·N)`` lowest scores and every tie of the threshold, so 100-round SynFlow gives the reference's
mask); ``exact`` keeps exactly ``round(d·N)``. Each run's seed reaches every scorer that draws random
numbers (``rand``, the GCS re-initialisation); the GCS scorers run in train mode unless
``gcs_train_mode`` is False.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune.at_init.status import chance_ceiling, log10_paths, logit_spread, run_status, sign_purity
from hwprune.data import dataset_info, get_dataset, make_loader
from hwprune.errors import HwpruneError
from hwprune.graph_mapper.flops import count_flops
from hwprune.models import get_model, model_spec
from hwprune.models.init import INITS, reference_init
from hwprune.models.sparse_csr import to_sparse_csr
from hwprune.prune.masks import WeightMask
from hwprune.prune.scorers import GCS_SCORERS, WEIGHT_SCORERS, pruning_set
from hwprune.prune.weight_masking import (
    COMPRESSION_MODES,
    RULES,
    density_from,
    detect_collapse,
    layer_densities,
    prune_weights,
)
from hwprune.results import ResultsStore, RunRecord, current_git_sha
from hwprune.train import TrainConfig, evaluate, train

log = logging.getLogger(__name__)

SWEEP_PRUNERS = ("rand", "mag", "snip", "grasp", "synflow")
SWEEP_COMPRESSIONS = (1, 2, 5, 10, 15, 20)
SYNFLOW_ROUNDS = 100
TIMING_REPEATS = 3


@dataclass
class SweepSetup:
    """Model and data settings shared by every run of a sweep (recorded in ``extra``)."""

    model_name: str
    dataset: str
    num_classes: int
    in_channels: int
    image_size: int
    init: str = "reference"


def masked_flops(per_module_flops: dict[str, int], total_flops: int, mask: WeightMask) -> tuple[int, dict[str, int]]:
    """Effective FLOPs of a weight-masked model: each masked layer's dense FLOPs x its kept density.

    Args:
        per_module_flops: Dense FLOPs of each parameter-owning leaf module (qualified name -> FLOPs).
        total_flops: Dense FLOPs of the whole model (includes parameter-free ops, counted in full).
        mask: The weight mask; a module's density is that of its ``<module>.weight`` tensor.

    Returns:
        ``(effective total, {module: effective FLOPs})`` rounded to integers.
    """
    per_layer: dict[str, int] = {}
    removed = 0.0
    for module, flops in per_module_flops.items():
        keep = mask.keep.get(f"{module}.weight" if module else "weight")
        density = float(keep.sum()) / keep.size if keep is not None and keep.size else 1.0
        per_layer[module] = int(round(flops * density))
        removed += flops * (1.0 - density)
    return int(round(total_flops - removed)), per_layer


def _setup(model_name: str, dataset: str, image_size: int | None, channels: int | None, init: str) -> SweepSetup:
    info = dataset_info(dataset)
    spec = model_spec(model_name)
    if info.num_classes is None:
        raise HwpruneError(f"dataset {dataset!r} does not fix its number of classes; the sweep needs it")
    size = image_size or spec.default_input_size
    chans = channels or info.channels
    return SweepSetup(model_name, dataset, int(info.num_classes), int(chans), int(size), init)


def _build(setup: SweepSetup, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = get_model(
        setup.model_name, num_classes=setup.num_classes, in_channels=setup.in_channels, input_size=setup.image_size
    )
    return reference_init(model) if setup.init == "reference" else model


def _check(
    pruners: Sequence[str], compressions: Sequence[float], mode: str, seeds: Sequence[int], rule: str, init: str
) -> None:
    if init not in INITS:
        raise HwpruneError(f"unknown init {init!r}: use one of {', '.join(INITS)}")
    if rule not in RULES:
        raise HwpruneError(f"unknown mask rule {rule!r}: use one of {', '.join(RULES)}")
    if mode not in COMPRESSION_MODES:
        raise HwpruneError(f"unknown compression mode {mode!r}: use one of {', '.join(COMPRESSION_MODES)}")
    if not pruners or not compressions or not seeds:
        raise HwpruneError("a sweep needs at least one pruner, one compression and one seed")
    for p in pruners:
        if p not in WEIGHT_SCORERS:
            raise HwpruneError(f"unknown pruner {p!r}: use one of {', '.join(WEIGHT_SCORERS.names())}")
    for c in compressions:
        density_from(c, mode)  # one-line error for a value outside the mode's range


def run_sweep(
    model_name: str,
    dataset: str,
    pruners: Sequence[str] = SWEEP_PRUNERS,
    compressions: Sequence[float] = SWEEP_COMPRESSIONS,
    compression_mode: str = "ratio",
    seeds: Iterable[int] = (0,),
    epochs: int = 10,
    *,
    train_config: TrainConfig | None = None,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    scope: str = "global",
    synflow_rounds: int = SYNFLOW_ROUNDS,
    rounds: int = 1,
    schedule: str = "exponential",
    samples_per_class: int = 10,
    prune_batch_size: int = 256,
    pre_epochs: int = 0,
    dense_classifier: bool = False,
    mask_rule: str = "reference",
    gcs_train_mode: bool = True,
    prune_train_mode: bool = False,
    init: str = "reference",
    sparse_eval: bool = False,
    shuffle_mask: bool = False,
    results_path: str | Path = "runs/results.csv",
    out_dir: str | Path | None = None,
    save_weights: bool = False,
    progress: bool = True,
) -> list[RunRecord]:
    """Prune at initialization and train, for every (pruner, compression, seed); one results row each.

    Args:
        model_name: A model from :func:`hwprune.models.list_models` (e.g. ``vgg16``, ``lenet5``).
        dataset: A dataset from :func:`hwprune.data.list_datasets` (e.g. ``cifar10``, ``digits``).
        pruners: Weight scorers (``rand``, ``mag``, ``snip``, ``grasp``, ``synflow`` ...).
        compressions: Compressions, read in ``compression_mode``.
        compression_mode: ``ratio`` (x keeps 1/x) or ``exponent`` (x keeps 10^-x, Synaptic-Flow's flag).
        seeds: Seeds; each seeds the model initialisation, every scorer that draws random numbers (rand,
            the GCS re-initialisation) and the training.
        epochs: Training epochs after pruning (overrides ``train_config.epochs``).
        train_config: Training settings (``TrainConfig()`` when None); its seed is replaced per run.
        data_dir: Where on-disk datasets live (digits and synthetic ignore it).
        image_size: Input side; the model's default input size when None.
        channels: Input channels; the dataset's native channels when None.
        scope: ``global`` (one threshold, the reference) or ``local`` (per layer) masking.
        synflow_rounds: Pruning rounds for SynFlow (100 in the paper).
        rounds: Pruning rounds for every other pruner (1 = single shot).
        schedule: Density schedule across rounds: ``exponential`` (d^(k/n)) or ``linear``.
        samples_per_class: Pruning-set samples of each class (10 in the reference).
        prune_batch_size: Batch size of the pruning set (256 in the reference).
        pre_epochs: Dense training before pruning (the seed's ``--pre-epochs``, e.g. 200 for Mag);
            applies to every pruner of the sweep; 0 prunes at initialization.
        dense_classifier: Leave the classifier dense.
        mask_rule: ``reference`` (Synaptic-Flow's kept count and tie rule) or ``exact`` (round(d·N)).
        gcs_train_mode: Score the GCS family in train mode (batch statistics, as its reference does);
            False scores them in eval mode (running statistics).
        prune_train_mode: Score the other data-based scorers (SNIP, GraSP) in train mode too (Synaptic-Flow's
            ``--prune-train-mode``; its default, False, scores them in eval mode).
        init: ``reference`` re-draws the weights as Synaptic-Flow's models do (Kaiming-normal, zero
            biases, batch norm 1/0); ``model`` keeps the builder's own initialisation.
        sparse_eval: Also time the test pass through the CSR execution path (dense and CSR interleaved,
            median of three passes each) and record both with the largest logit difference.
        shuffle_mask: Permute each tensor's kept positions at random (seeded by the run's seed) before
            training: Frankle et al. 2021's layerwise-shuffle control, which keeps a method's per-layer
            densities and discards its choice of weights (``extra.shuffled``).
        results_path: The results CSV (appended to, created if missing).
        out_dir: Where masks (and weights with ``save_weights``) are written; nothing when None.
        save_weights: Also save each trained model's state dict (for weight histograms).
        progress: Show a tqdm progress bar over the runs.

    Returns:
        The records appended, in run order.

    Raises:
        HwpruneError: For an unknown pruner, model or dataset, or a compression outside its mode.
    """
    pruners, compressions, seeds = list(pruners), list(compressions), list(seeds)
    _check(pruners, compressions, compression_mode, seeds, mask_rule, init)
    config = (train_config or TrainConfig()).replace(epochs=epochs)
    setup = _setup(model_name, dataset, image_size, channels, init)
    train_set = get_dataset(
        dataset, "train", data_dir=data_dir, image_size=setup.image_size, channels=setup.in_channels
    )
    test_set = get_dataset(dataset, "test", data_dir=data_dir, image_size=setup.image_size, channels=setup.in_channels)
    prune_batches = pruning_set(
        make_loader(train_set, batch_size=512, shuffle=False), setup.num_classes, samples_per_class, prune_batch_size
    )
    test_loader = make_loader(test_set, batch_size=config.batch_size, shuffle=False)
    store = ResultsStore(results_path)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    sha = current_git_sha()
    example = prune_batches[0][0][:1]
    dense_report = count_flops(_build(setup, 0), example)

    grid = [(p, c, s) for s in seeds for c in compressions for p in pruners]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid), desc=f"{model_name}/{dataset}", unit="run")
    records = []
    try:
        for pruner, compression, seed in grid:
            if bar is not None:
                bar.set_postfix_str(f"{pruner} c={compression:g} seed={seed}")
            record = _one_run(
                setup,
                pruner,
                compression,
                compression_mode,
                seed,
                config=config,
                train_set=train_set,
                test_loader=test_loader,
                prune_batches=prune_batches,
                dense_flops=dense_report,
                scope=scope,
                rounds=synflow_rounds if pruner == "synflow" else rounds,
                schedule=schedule,
                samples_per_class=samples_per_class,
                pre_epochs=pre_epochs,
                dense_classifier=dense_classifier,
                mask_rule=mask_rule,
                gcs_train_mode=gcs_train_mode,
                prune_train_mode=prune_train_mode,
                sparse_eval=sparse_eval,
                shuffle_mask=shuffle_mask,
                out=out,
                save_weights=save_weights,
                git_sha=sha,
            )
            store.append(record)
            records.append(record)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return records


def _one_run(
    setup: SweepSetup,
    pruner: str,
    compression: float,
    mode: str,
    seed: int,
    *,
    config: TrainConfig,
    train_set,
    test_loader,
    prune_batches,
    dense_flops,
    scope: str,
    rounds: int,
    schedule: str,
    samples_per_class: int,
    pre_epochs: int,
    dense_classifier: bool,
    mask_rule: str,
    gcs_train_mode: bool,
    prune_train_mode: bool,
    sparse_eval: bool,
    shuffle_mask: bool,
    out: Path | None,
    save_weights: bool,
    git_sha: str | None,
) -> RunRecord:
    density = density_from(compression, mode)
    run_config = config.replace(seed=seed)
    model = _build(setup, seed)
    train_loader = make_loader(train_set, batch_size=run_config.batch_size, shuffle=True, seed=seed)
    if pre_epochs > 0:
        train(model, train_loader, None, run_config.replace(epochs=pre_epochs))
        model.to("cpu")
    options = scorer_options(
        pruner, seed, dense_classifier=dense_classifier, gcs_train_mode=gcs_train_mode, train_mode=prune_train_mode
    )
    start = time.perf_counter()
    mask = prune_weights(
        model,
        pruner,
        prune_batches,
        density,
        scope=scope,
        rounds=rounds,
        schedule=schedule,
        model_name=setup.model_name,
        rule=mask_rule,
        **options,
    )
    prune_seconds = time.perf_counter() - start
    if shuffle_mask:
        mask = mask.shuffled(seed)
    empty_layers = detect_collapse(mask)
    paths = log10_paths(model, mask, (setup.in_channels, setup.image_size, setup.image_size))
    collapsed = bool(empty_layers) or paths == -math.inf
    mask.apply(model)
    spread = logit_spread(model, prune_batches)
    purity = sign_purity(model, mask)

    result = train(model, train_loader, test_loader, run_config, weight_mask=mask)
    evaluation = evaluate(model, test_loader, run_config.device)
    model.to("cpu")
    test_size = len(test_loader.dataset)
    status = run_status(collapsed, _fraction(evaluation.top1), setup.num_classes, test_size)

    layers = layer_densities(mask)
    kept = sum(r["kept"] for r in layers)
    masked_total = sum(r["total"] for r in layers)
    params_before = sum(p.numel() for p in model.parameters())
    params = params_before - (masked_total - kept)
    flops, per_layer_flops = masked_flops(dense_flops.per_module_flops, dense_flops.flops, mask)

    artifacts = {}
    if out is not None:
        shuffled = "_shuffled" if shuffle_mask else ""
        stem = f"{setup.model_name}_{setup.dataset}_{pruner}_{mode}{compression:g}_s{seed}{shuffled}"
        mask.save(out / f"{stem}.mask.json")
        artifacts["mask"] = str(out / f"{stem}.mask.json")
        if save_weights:
            torch.save(model.state_dict(), out / f"{stem}.pt")
            artifacts["weights"] = str(out / f"{stem}.pt")
    extra = {
        "compression_mode": mode,
        "target_density": density,
        "layers": [r["name"] for r in layers],
        "layer_modules": list(per_layer_flops),
        "layer_density": {r["name"]: r["density"] for r in layers},
        "layer_kept": {r["name"]: [r["kept"], r["total"]] for r in layers},
        "layer_flops": per_layer_flops,
        "layer_flops_dense": dict(dense_flops.per_module_flops),
        "status": status,
        "collapsed": collapsed,
        "collapsed_layers": empty_layers,
        "paths_log10": paths,
        "chance_ceiling": chance_ceiling(setup.num_classes, test_size),
        "logit_spread_at_init": spread,
        "sign_purity_at_init": purity,
        "shuffled": shuffle_mask,
        "train_loss": [h.train_loss for h in result.history],
        "test_top1_curve": [h.test_top1 for h in result.history],
        "init": setup.init,
        "testing_seconds": evaluation.seconds,
        "test_loss": evaluation.loss,
        "best_top1": result.best_top1,
        "train_seconds": result.train_seconds,
        "prune_seconds": prune_seconds,
        "rounds": rounds,
        "schedule": schedule,
        "scope": scope,
        "samples_per_class": samples_per_class,
        "pre_epochs": pre_epochs,
        "epochs": run_config.epochs,
        "dense_classifier": dense_classifier,
        "mask_rule": mask_rule,
        "scorer_options": {k: v for k, v in options.items() if k != "dense_classifier"},
        "image_size": setup.image_size,
        "in_channels": setup.in_channels,
        "num_classes": setup.num_classes,
        "mask_violations": result.mask_violations,
    }
    if sparse_eval:
        extra.update(testing_times(model, test_loader))
    return RunRecord(
        git_sha=git_sha,
        model=setup.model_name,
        dataset=setup.dataset,
        method=pruner,
        mask_kind="weight",
        target_kind="density",
        target_value=float(compression),
        density=kept / masked_total if masked_total else 1.0,
        density_whole_model=params / params_before if params_before else 1.0,
        params=params,
        params_before=params_before,
        flops=flops,
        flops_before=dense_flops.flops,
        flops_counter=dense_flops.counter,
        accuracy_top1=_fraction(evaluation.top1),
        accuracy_top5=_fraction(evaluation.top5),
        seed=seed,
        notes=f"prune at init, {mode} compression {compression:g} (density {density:.6g}): {status}",
        artifacts=artifacts or None,
        extra=extra,
    )


def testing_times(model: nn.Module, loader, repeats: int = TIMING_REPEATS) -> dict[str, float]:
    """Test-pass seconds of ``model`` on CPU, dense and through CSR, interleaved; medians of ``repeats`` each.

    Returns:
        ``testing_seconds_dense`` and ``testing_seconds_csr`` (medians), and ``csr_max_abs_diff``: the
        largest logit difference between the two paths on the first batch (float rounding only).
    """
    model = model.cpu().eval()
    sparse = to_sparse_csr(model)
    dense_s, csr_s = [], []
    for _ in range(repeats):
        dense_s.append(evaluate(model, loader, "cpu").seconds)
        csr_s.append(evaluate(sparse, loader, "cpu").seconds)
    x = next(iter(loader))[0]
    with torch.no_grad():
        diff = float((model(x) - sparse(x)).abs().max())
    return {
        "testing_seconds_dense": statistics.median(dense_s),
        "testing_seconds_csr": statistics.median(csr_s),
        "csr_max_abs_diff": diff,
    }


def _fraction(value: float) -> float | None:
    return None if value != value else float(value)  # NaN (empty test set) -> not measured


def scorer_options(
    pruner: str, seed: int, *, dense_classifier: bool = False, gcs_train_mode: bool = True, train_mode: bool = False
) -> dict:
    """The options a sweep run passes to the scorer ``pruner``: only those it accepts.

    ``seed`` goes to every scorer that takes one (rand's draw, the GCS re-initialisation), so different
    seeds give different runs and the same seed the same run; ``gcs_train_mode`` to the GCS family and
    ``train_mode`` to the other scorers that take one (snip, grasp).
    """
    import inspect

    options: dict = {"dense_classifier": dense_classifier, "seed": seed}
    if pruner in GCS_SCORERS:
        options["train_mode"] = gcs_train_mode
    else:
        options["train_mode"] = train_mode  # kept only by the scorers that take it (snip, grasp)
    accepted = set(inspect.signature(WEIGHT_SCORERS.get(pruner)).parameters)
    return {k: v for k, v in options.items() if k in accepted}
