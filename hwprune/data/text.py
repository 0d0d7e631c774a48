"""Token-id sequences for a language model's data-driven importances (next-token loss), offline.

Each item is ``(ids, ids)``: one int64 tensor ``[tokens]`` twice, because
:func:`hwprune.prune.gradients.batch_loss` shifts a ``(token ids, token ids)`` batch itself to score position
``t`` against token ``t + 1``; the activation importance reads the inputs only.

The text: without ``data_dir``, the help-topics text that ships with CPython (``pydoc_data.topics``, what
``help("if")`` prints: 79 topics, about 465 K characters of English prose and Python code in 3.11), so
calibration needs no download and no file; it is the same on every run of one Python version. With
``data_dir``: every ``*.txt`` file directly in that folder, sorted by name, read as UTF-8 (undecodable bytes
replaced), joined by blank lines.

The ids: if ``data_dir`` holds a Hugging Face tokenizer (``tokenizer.json`` or ``tokenizer_config.json``,
what ``save_pretrained`` writes beside a model) it encodes the text, loaded offline, without special tokens.
Otherwise they are byte-level: each UTF-8 byte ``b`` of the text becomes id ``b % vocab_size``, which is ``b``
itself for any vocabulary of 256 ids or more (every family default and every real model), so ids are
always below the model's vocabulary size. Byte ids mean nothing to a pretrained model's embedding, but
they keep what a random or your own model's importances can use: real text's token frequencies and
repeats; give the model's tokenizer for a pretrained one.

The split: the token stream is cut into consecutive, non-overlapping windows of ``tokens`` ids (a trailing
remainder is dropped); the last tenth of the windows (at least one) is the test split, the others the train
split, so the splits never share a token position. Everything is deterministic (no seed).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from hwprune.data.registry import register_dataset
from hwprune.errors import DataNotFoundError, HwpruneError, first_line

TOKENS = 32  # default sequence length, as hwprune.models.hf.DEFAULT_TOKENS (the example input of hf: models)
BYTE_VOCAB = 256  # byte-level ids are 0..255 before folding into a smaller vocabulary
TEST_FRACTION = 0.1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
NO_TRAINING = (
    "fine-tuning (--finetune-epochs, finetune=) trains a classifier on labelled images; text data only "
    "calibrates a language model's importances: drop it"
)


class TokenSequences(Dataset):
    """``(ids, ids)`` pairs of int64 token ids ``[tokens]``.

    Attributes:
        ids: Int64 tensor ``[N, tokens]``.
        starts: Int64 tensor ``[N]``: where each sequence starts in the whole token stream (train and test
            together), so a test can see that the splits are disjoint.
        tokenizer: ``"bytes"`` or the folder the tokenizer was loaded from.
    """

    def __init__(self, ids: torch.Tensor, starts: torch.Tensor, tokenizer: str) -> None:
        self.ids = ids
        self.starts = starts
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[index], self.ids[index]


@functools.cache
def builtin_text() -> str:
    """CPython's help topics (``pydoc_data.topics``), sorted by topic name and joined by blank lines."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DataNotFoundError(
            "text: this Python has no pydoc_data (the built-in calibration text): pass --data-dir with .txt files"
        ) from None
    return "\n\n".join(topics[name] for name in sorted(topics))


def text_files(data_dir: Path) -> list[Path]:
    """The ``*.txt`` files directly in ``data_dir``, sorted by name; a missing folder or none is one line.

    The CLI calls it when checking its options, so a wrong ``--data-dir`` fails before the model is built.
    """
    if not data_dir.is_dir():
        raise DataNotFoundError(f"text: --data-dir {data_dir} is not a folder; give a folder of .txt files")
    files = sorted(p for p in data_dir.glob("*.txt") if p.is_file())
    if not files:
        raise DataNotFoundError(
            f"text: no .txt files in {data_dir}; put your text in {data_dir}/*.txt, or drop --data-dir for the "
            "built-in text"
        )
    return files


def folder_text(data_dir: Path) -> str:
    """The ``*.txt`` files directly in ``data_dir``, sorted by name and joined by blank lines."""
    files = text_files(data_dir)
    text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    if not text.strip():
        raise DataNotFoundError(f"text: the {len(files)} .txt file(s) in {data_dir} hold no text; add some")
    return text


def has_tokenizer(data_dir: Path | None) -> bool:
    return data_dir is not None and any((data_dir / name).is_file() for name in TOKENIZER_FILES)


def byte_ids(text: str, vocab_size: int) -> torch.Tensor:
    """The UTF-8 bytes of ``text`` as int64 ids, each ``b % vocab_size`` (``b`` when the vocabulary has >= 256)."""
    ids = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int64)
    return ids % vocab_size if vocab_size < BYTE_VOCAB else ids


def tokenizer_ids(text: str, data_dir: Path, vocab_size: int | None) -> torch.Tensor:
    """``text`` encoded by the Hugging Face tokenizer saved in ``data_dir`` (offline, no special tokens)."""
    from hwprune.models.hf import transformers_module

    try:
        tokenizer = transformers_module().AutoTokenizer.from_pretrained(str(data_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 (any failure to load is the user's folder: say so in one line)
        raise HwpruneError(f"text: cannot load the tokenizer in {data_dir} ({first_line(exc)})") from None
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.int64)
    if vocab_size is not None and len(ids) and int(ids.max()) >= vocab_size:
        raise HwpruneError(
            f"text: the tokenizer in {data_dir} gives id {int(ids.max())}, beyond the model's vocabulary of "
            f"{vocab_size}: use the model's own tokenizer"
        )
    return ids


def token_stream(data_dir: Path | None, vocab_size: int | None) -> tuple[torch.Tensor, str]:
    """Every token id of the text, in order, and what tokenised it (``"bytes"`` or the tokenizer's folder)."""
    text = builtin_text() if data_dir is None else folder_text(data_dir)
    if has_tokenizer(data_dir):
        return tokenizer_ids(text, data_dir, vocab_size), str(data_dir)
    return byte_ids(text, vocab_size or BYTE_VOCAB), "bytes"


def split_windows(stream: torch.Tensor, tokens: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, tokens], starts [N])`` of ``split``: the last tenth of the windows is the test split."""
    count = len(stream) // tokens
    n_test = max(1, round(count * TEST_FRACTION)) if count >= 2 else 0
    rows = range(count - n_test) if split == "train" else range(count - n_test, count)
    if not rows:
        have = f"{len(stream)} tokens, {count} sequence(s) of {tokens}"
        raise HwpruneError(
            f"text: {have}: too little for a {split} split; add text or lower --input-size (the sequence length)"
        )
    starts = torch.arange(rows.start, rows.stop, dtype=torch.int64) * tokens
    return stream[: count * tokens].view(count, tokens)[rows.start : rows.stop].clone(), starts


@register_dataset("text", num_classes=None, channels=1, native_size=TOKENS, kind="text")
def text(
    split: str,
    data_dir: Path | None,
    image_size: int | None,
    channels: int | None,
    tokens: int = TOKENS,
    vocab_size: int | None = None,
) -> TokenSequences:
    """CPython's help text offline, or --data-dir's *.txt files (byte ids, or the tokenizer saved there).

    ``tokens`` is the sequence length (the model's token count); ``vocab_size`` the model's vocabulary size,
    which byte-level ids are folded into and a tokenizer's ids are checked against (None: 256 byte ids).
    """
    if image_size is not None or channels is not None:
        raise HwpruneError("dataset 'text' holds token ids: give tokens=N (the sequence length), not image_size")
    if not isinstance(tokens, int) or tokens < 2:
        raise HwpruneError(
            f"text: the sequence length (tokens, --input-size of a text model) must be at least 2 for a next-token "
            f"loss (got {tokens})"
        )
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < 1):
        raise HwpruneError(f"text: vocab_size must be a positive whole number (got {vocab_size})")
    stream, tokenizer = token_stream(data_dir, vocab_size)
    ids, starts = split_windows(stream, tokens, split)
    return TokenSequences(ids, starts, tokenizer)


def model_vocab_size(model: nn.Module) -> int | None:
    """The vocabulary size of a language model: ``config.vocab_size``, else its first embedding's rows.

    None for a model with neither (not a language model).
    """
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(size, int):
        return size
    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return None if embedding is None else embedding.num_embeddings
