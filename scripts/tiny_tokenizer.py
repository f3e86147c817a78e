"""Build a tiny umT5-style SentencePiece tokenizer offline (docs/design/components.md), for tests and smoke configs.

    python scripts/tiny_tokenizer.py OUT_DIR

Unigram model trained in memory (no protobuf, no network), pad 0, eos 1, unk 2, no BOS, identity
normalisation, saved as a transformers T5Tokenizer (tokenizer.json + tokenizer_config.json) that
`AutoTokenizer.from_pretrained(OUT_DIR)` loads. Deterministic: the same files on every run.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

# A few English prompts and part of the Kaleido negative prompt as it looks after cleaning (ftfy turns the
# fullwidth commas into ASCII ones), so that cleaned Chinese text tokenizes to real pieces, not only <unk>.
TRAINING_SENTENCES = (
    "a red fox runs across a snowy field at dawn, cinematic lighting",
    "two people walk on the beach with a small dog, the camera follows them",
    "A woman in a blue dress holds a cup of coffee and smiles.",
    "a man and a woman sit at a wooden table in a quiet cafe",
    "色调艳丽,过曝,静态,细节模糊不清,字幕",
)
REPETITIONS = 30


def train_sentencepiece(vocab_size: int = 120) -> bytes:
    """The serialized SentencePiece unigram model (in memory, single-threaded, hence deterministic)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_SENTENCES * REPETITIONS),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        normalization_rule_name="identity",
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 120) -> Path:
    """Train the tiny tokenizer and save it to `out_dir` (created if needed) -> `out_dir` as a Path.

    `vocab_size` is a soft limit (the tiny corpus yields fewer pieces; hard_vocab_limit is off).
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    processor = spm.SentencePieceProcessor(model_proto=train_sentencepiece(vocab_size))
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(out_dir))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python scripts/tiny_tokenizer.py OUT_DIR")
    print(build_tiny_tokenizer(argv[0]))


if __name__ == "__main__":
    main()
