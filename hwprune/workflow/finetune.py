"""Fine-tuning stage: train the verified compacted model (built-in trainer or the user's function), re-export."""

from __future__ import annotations


def finetune_and_reexport(job, outcome, data, data_dir, tune) -> None:
    """Fine-tune the verified compacted model in place, then export it again (checked in onnxruntime).

    ``tune`` is the user's ``fn(model)``, or epochs of the built-in trainer on ``data`` (a dataset name,
    whose test split measures accuracy, or the user's loader, which then measures it too).
    """
    from hwprune.export.pipeline import export_verified
    from hwprune.train import TrainConfig, evaluate, train

    compacted = outcome.compacted
    if callable(tune):
        tune(compacted)
        what = f"fine-tuned by {getattr(tune, '__name__', 'your function')}"
    else:
        if isinstance(data, str):
            from hwprune.data import get_dataset, make_loader

            size, channels = int(job.example.shape[-1]), int(job.example.shape[1])
            train_set = get_dataset(data, "train", data_dir=data_dir, image_size=size, channels=channels)
            test_set = get_dataset(data, "test", data_dir=data_dir, image_size=size, channels=channels)
            train_loader = make_loader(train_set, batch_size=64, shuffle=True, seed=0)
            test_loader = make_loader(test_set, batch_size=128, shuffle=False)
        else:
            train_loader = test_loader = data
        before = evaluate(compacted, test_loader, "cpu")
        result = train(compacted, train_loader, test_loader, TrainConfig(epochs=tune, lr=0.01, batch_size=64))
        outcome.record.accuracy_top1 = result.last_top1
        outcome.record.accuracy_top5 = result.last_top5
        source = data if isinstance(data, str) else "your data"
        what = f"fine-tuned {tune} epoch(s) on {source}: top-1 {before.top1:.3f} -> {result.last_top1:.3f}"
    compacted.eval()
    if outcome.export.onnx_path is None:
        outcome.export.notes.append(what)
        return
    _, diff = export_verified(compacted, job.example, outcome.export.onnx_path, outcome.export.exporter)
    outcome.export.notes.append(f"{what}; re-exported ONNX matches in onnxruntime ({diff:.1e})")
