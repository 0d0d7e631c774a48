"""Text calibration data (`--data text`): token ids for a language model's data-driven importances, offline.

The built-in corpus is CPython's help text; `--data-dir` gives the user's .txt files and optionally a Hugging
Face tokenizer. Ids must fit the model's vocabulary, splits must be disjoint, and the importances must read
the text (scores change with it); a text set for an image model, or the reverse, fails in one line.
"""

import json

import numpy as np
import pytest
import torch

from hwprune.cli import main
from hwprune.data import dataset_kind, get_dataset, list_datasets, split_loader
from hwprune.data.text import TOKENS, builtin_text
from hwprune.errors import DataNotFoundError, HwpruneError
from hwprune.prune.masks import ChannelMask
from hwprune.results import ResultsStore

pytest.importorskip("transformers")

from hwprune.models.hf import DEFAULT_TOKENS  # noqa: E402
from hwprune.workflow import ModelInput, importance_scores  # noqa: E402

LLAMA_VOCAB = 512  # the hf:llama family default


def _folder(tmp_path, **files):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _one_line_error(capsys, *needles):
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("hwprune: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_registered_as_text_with_the_models_default_length(capsys):
    assert "text" in list_datasets() and dataset_kind("text") == "text" and dataset_kind("digits") == "image"
    assert TOKENS == DEFAULT_TOKENS  # a text model's example and its calibration sequences have one length
    assert main(["datasets"]) == 0
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("text ")]
    assert "language models" in line and "CPython's help text" in line and "--data-dir" in line


def test_builtin_ids_in_range_and_deterministic():
    train = get_dataset("text", "train", vocab_size=LLAMA_VOCAB)
    assert train.ids.dtype == torch.int64 and train.ids.shape[1] == TOKENS and len(train) > 1000
    assert 0 <= int(train.ids.min()) and int(train.ids.max()) < LLAMA_VOCAB
    x, y = train[3]
    assert x is y or torch.equal(x, y)  # (ids, ids): the loss shifts them itself
    assert torch.equal(x, train.ids[3])
    again = get_dataset("text", "train", vocab_size=LLAMA_VOCAB)
    assert torch.equal(train.ids, again.ids)
    # the ids are the UTF-8 bytes of CPython's help topics, in order
    first = bytes(train.ids[:4].flatten().tolist()).decode("utf-8")
    assert builtin_text().startswith(first) and "statement" in first
    assert train.tokenizer == "bytes"


def test_train_and_test_are_disjoint_consecutive_windows():
    train = get_dataset("text", "train", tokens=16)
    test = get_dataset("text", "test", tokens=16)
    starts_train, starts_test = set(train.starts.tolist()), set(test.starts.tolist())
    assert not starts_train & starts_test
    assert min(starts_test) == max(starts_train) + 16  # the test split is the stream's tail, after train
    assert (train.starts.diff() == 16).all() and (test.starts.diff() == 16).all()  # no overlap, no gap
    assert 0.08 < len(test) / (len(train) + len(test)) < 0.12
    assert len(builtin_text().encode()) // 16 == len(train) + len(test)  # only the trailing remainder is dropped


def test_byte_ids_fold_into_a_small_vocabulary(tmp_path):
    text = "héllo, wörld\n" * 40
    folder = _folder(tmp_path, **{"a.txt": text})
    raw = list(text.encode("utf-8"))
    assert max(raw) >= 128  # non-ASCII bytes, above the small vocabularies below
    for vocab, want in ((1000, raw), (256, raw), (100, [b % 100 for b in raw]), (7, [b % 7 for b in raw])):
        train, test = (get_dataset("text", s, folder, tokens=8, vocab_size=vocab) for s in ("train", "test"))
        got = torch.cat([train.ids.flatten(), test.ids.flatten()]).tolist()
        assert got == want[: len(got)] and len(want) - len(got) < 8, vocab
        assert max(got) < vocab
    no_vocab = get_dataset("text", "train", folder, tokens=8)  # None: the 256 byte ids as they are
    assert no_vocab.ids.flatten().tolist() == raw[: no_vocab.ids.numel()]


def test_user_text_files_are_read_in_name_order(tmp_path):
    folder = _folder(tmp_path, **{"b.txt": "second " * 30, "a.txt": "first " * 30, "notes.md": "ignored " * 30})
    data = get_dataset("text", "train", folder, tokens=4, vocab_size=LLAMA_VOCAB)
    got = bytes(data.ids.flatten().tolist()).decode()
    assert got.startswith("first first") and "ignored" not in got
    assert ("first " * 30 + "\n\n" + "second " * 30).startswith(got)


def test_tokenizer_saved_in_the_folder_is_used(tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="building a tokenizer offline needs the tokenizers package")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    text = "the cat sat on the mat and the dog ran to the cat\n" * 20
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    model.train_from_iterator([text], tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    folder = _folder(tmp_path, **{"text.txt": text})
    PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]").save_pretrained(folder)
    assert (folder / "tokenizer.json").is_file()

    train = get_dataset("text", "train", folder, tokens=6, vocab_size=LLAMA_VOCAB)
    test = get_dataset("text", "test", folder, tokens=6, vocab_size=LLAMA_VOCAB)
    assert train.tokenizer == str(folder)
    want = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)(text, add_special_tokens=False)
    got = torch.cat([train.ids.flatten(), test.ids.flatten()]).tolist()
    assert got == want["input_ids"][: len(got)]
    assert int(train.ids.max()) < model.get_vocab_size() < 20  # word ids, not bytes
    with pytest.raises(HwpruneError, match="beyond the model's vocabulary of 3: use the model's own tokenizer"):
        get_dataset("text", "train", folder, tokens=6, vocab_size=3)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(HwpruneError, match="cannot load the tokenizer in"):
        get_dataset("text", "train", folder, tokens=6)


@pytest.mark.parametrize(
    ("files", "split", "opts", "error", "needle"),
    [
        (None, "train", {"tokens": 8}, DataNotFoundError, "is not a folder"),
        ({"a.md": "text"}, "train", {"tokens": 8}, DataNotFoundError, "no .txt files in"),
        ({"a.txt": " \n\n "}, "train", {"tokens": 8}, DataNotFoundError, "hold no text"),
        ({"a.txt": "tiny"}, "train", {"tokens": 8}, HwpruneError, "too little for a train split; add text or lower"),
        ({"a.txt": "x" * 12}, "test", {"tokens": 8}, HwpruneError, "too little for a test split"),  # one window
        ({"a.txt": "x" * 99}, "train", {"tokens": 1}, HwpruneError, "must be at least 2"),
        ({"a.txt": "x" * 99}, "train", {"tokens": 8, "vocab_size": 0}, HwpruneError, "vocab_size must be a positive"),
    ],
)
def test_bad_text_is_one_line(tmp_path, files, split, opts, error, needle):
    folder = tmp_path / "missing" if files is None else _folder(tmp_path, **files)
    with pytest.raises(error) as info:
        get_dataset("text", split, folder, **opts)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_text_takes_no_image_size():
    with pytest.raises(HwpruneError, match="give tokens=N"):
        get_dataset("text", "train", image_size=32)


def test_loader_refuses_text_for_images_and_images_for_tokens():
    with pytest.raises(HwpruneError, match="takes \\[1, 3, 8, 8\\] float input: use an image dataset"):
        split_loader("text", "train", torch.randn(1, 3, 8, 8), 4)
    with pytest.raises(HwpruneError, match="takes token ids: use --data text"):
        split_loader("digits", "train", torch.zeros(1, 32, dtype=torch.int64), 4)
    batch_x, batch_y = next(
        iter(split_loader("text", "train", torch.zeros(2, 12, dtype=torch.int64), 4, vocab_size=50))
    )
    assert batch_x.shape == (4, 12) and torch.equal(batch_x, batch_y) and int(batch_x.max()) < 50


@pytest.fixture(scope="module")
def llama():
    job = ModelInput.build("hf:llama", input_size=16)
    return job, job.graph()


def test_taylor_scores_read_the_text(llama, tmp_path):
    job, graph = llama
    prunable = [g.id for g in graph.prunable_groups]
    builtin = importance_scores(job, graph, "taylor", "text", samples=8)
    again = importance_scores(job, graph, "taylor", "text", samples=8)
    other = importance_scores(job, graph, "taylor", "text", _folder(tmp_path, **{"a.txt": "ab " * 200}), samples=8)
    for gid in prunable:
        assert np.all(np.isfinite(builtin[gid])) and builtin[gid].max() > 0, gid  # gradients reached every group
        np.testing.assert_array_equal(builtin[gid], again[gid])  # the same text, the same scores
    assert any(not np.allclose(builtin[g], other[g], rtol=1e-3) for g in prunable)  # other text, other scores
    activation = importance_scores(job, graph, "activation", "text", samples=8)
    assert all(activation[g].max() > 0 for g in prunable)


def test_cli_mask_with_taylor_on_text(tmp_path):
    out, data_free = tmp_path / "taylor.json", tmp_path / "l1.json"
    args = ["mask", "--model", "hf:llama", "--input-size", "16", "--ratio", "0.3"]
    assert main([*args, "--method", "taylor", "--data", "text", "--imp-samples", "8", "--out", str(out)]) == 0
    assert main([*args, "--method", "l1", "--out", str(data_free)]) == 0
    mask, l1 = ChannelMask.load(out), ChannelMask.load(data_free)
    assert mask.meta["data"] == "text" and mask.meta["imp_samples"] == 8 and mask.meta["input_shape"] == [1, 16]
    assert mask.pruned_groups()
    assert any(not np.array_equal(mask.keep[g], l1.keep[g]) for g in mask.keep)  # the text chose other channels


def test_cli_prune_with_activation_on_text(tmp_path, capsys):
    out, results = tmp_path / "p", tmp_path / "r.csv"
    args = ["prune", "--model", "hf:llama", "--importance", "activation", "--data", "text", "--flops", "0.6"]
    args += ["--backend", "torch-cpu", "--imp-samples", "8", "--repeats", "5", "--sessions", "1", "--out", str(out)]
    assert main([*args, "--results", str(results)]) == 0
    assert "compacted and verified" in capsys.readouterr().out
    mask = ChannelMask.load(out / "mask.json")
    assert mask.meta["method"] == "activation" and mask.pruned_groups()
    [row] = ResultsStore(results).records()
    extra = json.loads(row.extra)
    assert extra["measured_ratio"] <= 0.6 and row.flops < row.flops_before
    assert not any(k.startswith("top1_") for k in extra)  # text calibrates only: no classifier accuracy


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["mask", "--model", "resnet20", "--method", "taylor", "--data", "text"], ["resnet20 takes images"]),
        (["mask", "--model", "hf:vit", "--method", "activation", "--data", "text"], ["hf:vit takes images"]),
        (["mask", "--model", "hf:llama", "--method", "taylor", "--data", "digits"], ["use --data text"]),
        (["mask", "--model", "hf:llama", "--method", "taylor", "--data", "text", "--data-dir", "EMPTY"],
         ["no .txt files in", "drop --data-dir"]),
        (["prune", "--model", "hf:llama", "--flops", "0.6", "--data", "text", "--finetune-epochs", "1"],
         ["text data only calibrates"]),
        (["evaluate", "--model", "resnet20", "--data", "text"], ["this command needs labelled images"]),
    ],
)  # fmt: skip
def test_mismatched_data_is_one_line(tmp_path, capsys, argv, needles):
    (tmp_path / "empty").mkdir()
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    out = ["--out", str(tmp_path / ("m.json" if argv[0] == "mask" else "p"))] if argv[0] != "evaluate" else []
    assert main([*argv, *out]) == 2
    _one_line_error(capsys, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # refused before any work: nothing written


def test_api_prune_of_a_language_model_on_a_token_loader():
    import hwprune
    from hwprune.data import make_loader
    from hwprune.models.hf import hf_example, hf_model

    model = hf_model("llama", seed=0)
    loader = make_loader(get_dataset("text", "train", tokens=16, vocab_size=LLAMA_VOCAB), 4, shuffle=True)
    result = hwprune.prune(
        model, hf_example(model, tokens=16), flops=0.6, importance="taylor", data=loader, imp_samples=8,
        backend="torch-cpu", repeats=5, sessions=1, progress=False,
    )  # fmt: skip
    record = result.report.outcome.record
    assert result.report.measured_ratio <= 0.6 and record.flops < record.flops_before
    assert record.accuracy_top1 is None  # a language model: no classifier accuracy taken on token ids
    with pytest.raises(HwpruneError, match="text data only calibrates"):
        hwprune.prune(model, hf_example(model, tokens=16), flops=0.6, data=loader, finetune=1, progress=False)
