"""`hwprune evaluate` / `hwprune.evaluate`: accuracy of a saved model as a user has it, checked by hand."""

import numpy as np
import pytest
import torch

import hwprune
from hwprune.cli import main
from hwprune.data import get_dataset, make_loader
from hwprune.export.compact import compact_model, masked_model
from hwprune.export.onnx_export import export_onnx
from hwprune.prune.channel import norm_scores, uniform_channel_mask
from hwprune.train import TrainConfig, train
from hwprune.workflow import ModelInput


def hand_top1(model, split: str) -> float:
    """Top-1 on the digits split, computed here with a plain loop (the reference the command must match)."""
    data = get_dataset("digits", split, image_size=28, channels=1)
    model.eval()
    with torch.no_grad():
        correct = sum(int(model(x.unsqueeze(0)).argmax(1).item() == int(y)) for x, y in data)
    return correct / len(data)


def reported(text: str, split: str) -> float:
    [row] = [ln for ln in text.splitlines() if ln.startswith(f"| {split} |")]
    return float(row.split("|")[2])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """lenet5 trained briefly on digits, its weights file, a 50 % L1 mask and the mask file."""
    tmp = tmp_path_factory.mktemp("eval")
    job = ModelInput.build("lenet5")
    loader = make_loader(get_dataset("digits", "train", image_size=28, channels=1), 64, shuffle=True)
    train(job.model, loader, None, TrainConfig(epochs=2, lr=0.05, batch_size=64))
    job.model.eval()
    torch.save(job.model.state_dict(), tmp / "w.pt")
    graph = job.graph()
    mask = uniform_channel_mask(graph, norm_scores(graph, job.model), 0.5)
    mask.save(tmp / "m.json")
    return job, graph, mask, tmp


def test_evaluate_reports_the_accuracy_a_hand_loop_computes(trained, capsys):
    job, _, _, tmp = trained
    weights = str(tmp / "w.pt")
    argv = ["evaluate", "--model", "lenet5", "--weights", weights, "--data", "digits", "--splits", "train,test"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    test_top1 = reported(out, "test")
    assert test_top1 == pytest.approx(hand_top1(job.model, "test"), abs=1e-4)
    assert reported(out, "train") == pytest.approx(hand_top1(job.model, "train"), abs=1e-4)
    assert test_top1 > 0.5  # trained: informative, well above chance (0.1)
    assert main(["evaluate", "--model", "lenet5", "--data", "digits"]) == 0  # random weights: near chance
    assert reported(capsys.readouterr().out, "test") < test_top1 - 0.3


def test_evaluate_with_a_mask_is_the_masked_model_and_counts_its_size(trained, capsys):
    job, graph, mask, tmp = trained
    argv = ["evaluate", "--model", "lenet5", "--weights", str(tmp / "w.pt"), "--mask", str(tmp / "m.json")]
    assert main([*argv, "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert reported(out, "test") == pytest.approx(hand_top1(masked_model(job.model, graph, mask), "test"), abs=1e-4)
    params = {ln.split("|")[1].strip(): ln.split("|")[2:5] for ln in out.splitlines() if ln.startswith("| params")}
    after, dense, ratio = (c.strip() for c in params["params"])
    assert int(dense.replace(",", "")) == sum(p.numel() for p in job.model.parameters())
    compacted = compact_model(graph, mask)
    assert int(after.replace(",", "")) == sum(p.numel() for p in compacted.parameters()) < int(dense.replace(",", ""))
    assert f"{int(dense.replace(',', '')) / int(after.replace(',', '')):.2f}x" in out


def test_pruned_weights_load_into_the_compacted_model_and_an_onnx_file_runs_as_deployed(trained, capsys):
    job, graph, mask, tmp = trained
    compacted = compact_model(graph, mask)
    with torch.no_grad():  # the pruned model's own (e.g. fine-tuned) weights: differ from the dense slice
        for p in compacted.parameters():
            p.mul_(1.1)
    torch.save(compacted.state_dict(), tmp / "pruned.pt")
    evaluation = hwprune.evaluate(
        ModelInput.build("lenet5").model,
        make_loader(get_dataset("digits", "test", image_size=28, channels=1), 100, shuffle=False),
        example_inputs=job.example,
        mask=mask,
        weights=tmp / "pruned.pt",
    )
    assert evaluation.splits["test"].top1 == pytest.approx(hand_top1(compacted, "test"), abs=1e-4)
    export_onnx(compacted, job.example, tmp / "small.onnx", "dynamo")  # batch 1 fixed: run sample by sample
    assert main(["evaluate", "--onnx", str(tmp / "small.onnx"), "--data", "digits"]) == 0
    out = capsys.readouterr().out
    samples = len(get_dataset("digits", "test", image_size=28, channels=1))
    assert reported(out, "test") == pytest.approx(evaluation.splits["test"].top1, abs=1.5 / samples)
    assert "onnxruntime" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "lenet5", "--weights", "{tmp}/wrong.pt", "--data", "digits"], "shape"),
        (["--model", "lenet5", "--data", "digits", "--splits", "test,test"], "--splits"),
        (["--model", "lenet5", "--data", "nosuchdata"], "nosuchdata"),
        (["--onnx", "{tmp}/small.onnx", "--mask", "{tmp}/m.json", "--data", "digits"], "--mask is for --model"),
        (["--model", "lenet5"], "--data"),
    ],
)
def test_evaluate_refuses_bad_input_in_one_line(trained, extra, message, capsys):
    _, _, _, tmp = trained
    state = {k: torch.zeros(*(np.array(v.shape) + 1)) for k, v in ModelInput.build("lenet5").model.state_dict().items()}
    torch.save(state, tmp / "wrong.pt")
    if not (tmp / "small.onnx").exists():
        export_onnx(ModelInput.build("lenet5").model, torch.randn(1, 1, 28, 28), tmp / "small.onnx", "torchscript")
    rc = main(["evaluate", *(a.format(tmp=tmp) for a in extra)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
