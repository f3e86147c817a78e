"""Text conditioning: ftfy-lite and cleaning (Q7), the tiny offline tokenizer (docs/design/components.md), and the
umT5 conditioner end to end (mask-multiplied 512-token context, trim-to-longest bitwise)."""

from __future__ import annotations

import os
import sys

import pytest
import sentencepiece as spm
import torch

from scripts.tiny_tokenizer import build_tiny_tokenizer, train_sentencepiece
from scripts.tiny_tokenizer import main as tiny_tokenizer_main
from sgm.text import UMT5TextEncoder, clean_text, ftfy_lite, load_tokenizer
from sgm.umt5 import UMT5Encoder

NEG_KALEIDO = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
PROMPTS = [
    "a red fox runs across a snowy field at dawn, cinematic lighting",
    "A woman in a blue dress holds a cup of coffee and smiles.",
    "色调艳丽,过曝,静态,细节模糊不清,字幕",
    "a zebra sleeps",  # 'z' is not in the tiny vocabulary: <unk>
]
TINY_SIZES = dict(dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="module")
def sentencepiece_model():
    return spm.SentencePieceProcessor(model_proto=train_sentencepiece())


def text_encoder(tokenizer_dir, vocab_size=None, **kwargs) -> UMT5TextEncoder:
    vocab = vocab_size or len(load_tokenizer(tokenizer_dir))
    torch.manual_seed(0)
    return UMT5TextEncoder(str(tokenizer_dir), vocab_size=vocab, **{**TINY_SIZES, **kwargs})


# ------------------------------------------------------------------------------------------------ cleaning


def test_ftfy_lite_steps():
    assert (
        ftfy_lite("It\u2019s \u201cquoted\u201d \u2018x\u2019 \u201ay\u201b \u02bcz \u201ew\u201f")
        == "It's \"quoted\" 'x' 'y' 'z \"w\""
    )
    assert (
        ftfy_lite("\ufb01sh \ufb02ag o\ufb03ce \ufb00 \ufb04 \ufb06 \u0132 \u01c6 \u01cb")
        == "fish flag office ff ffl st IJ d\u017e Nj"
    )
    assert ftfy_lite(NEG_KALEIDO).count(",") == NEG_KALEIDO.count("，") == 26
    assert "，" not in ftfy_lite(NEG_KALEIDO)
    assert ftfy_lite("ＬＯＵＤ\u3000ＮＯＩＳＥ（１）：！") == "LOUD NOISE(1):!"
    assert (
        ftfy_lite("it&#x2019;s &amp;amp; &hellip; &EACUTE;t&eacute; &amp &notanentity;")
        == "it's & \u2026 \u00c9t\u00e9 &amp &notanentity;"
    )
    assert ftfy_lite("a < b &amp; c") == "a < b &amp; c"  # ftfy leaves HTML alone once '<' is seen
    assert ftfy_lite("x &amp;\ny < 1\nz &amp;") == "x &\ny < 1\nz &amp;"
    assert ftfy_lite("a\x00b\x07\x0b\x1f\x7f\u206a\ufeff\ufffcc\td\x0ce") == "abc\td\x0ce"
    assert ftfy_lite("\x1b[31mred\x1b[0m \x1b[1;32mgreen\x1b[m") == "red green"
    assert ftfy_lite("a\r\nb\rc\u2028d\u2029e\u0085f") == "a\nb\nc\nd\ne\nf"
    assert ftfy_lite("cafe\u0301") == "caf\u00e9"  # NFC
    assert ftfy_lite("\ud83d\ude00 \ud83d") == "\U0001f600 \ufffd"  # surrogates


FTFY_CASES = [
    NEG_KALEIDO,
    *PROMPTS,
    "It\u2019s \u201cquoted\u201d \u2018single\u2019 \u201anot\u201b \u02bcx \u201e\u201f",
    "\ufb01sh \ufb02ag o\ufb03ce \ufb00 \ufb04 \ufb05 \ufb06 \u0132\u0133\u0149\u01c4\u01c5\u01c6\u01c7\u01c8\u01c9"
    "\u01ca\u01cb\u01cc\u01f1\u01f2\u01f3",
    "ＬＯＵＤ\u3000ＮＯＩＳＥＳ（１２３）：！？ｶﾀｶﾅ ￠￡￥",
    "Broken text&hellip; it&#x2019;s &amp;amp; &lt;b&gt; &EACUTE;t&eacute; &#8220;x&#8221; &notanentity; &#xZZ; &amp",
    "a < b &amp; c",
    "line1 &amp;\nline2 < 3\nline3 &amp;",
    "tab\there\x00\x01\x07\x0b\x0c\x0e\x1f\x7f\u206a\u206f\ufeffzero\ufff9\ufffa\ufffb\ufffc\ufffd end",
    "\x1b[31mred\x1b[0m and \x1b[1;32mbold green\x1b[m",
    "a\r\nb\rc\u2028d\u2029e",
    "cafe\u0301 n\u0303 A\u030a",
    "emoji \ud83d\ude00 lone \ud83d here \ude00",
    "  lots   of\n\n whitespace\t\t ",
]


def test_ftfy_lite_matches_ftfy():
    import ftfy

    for text in FTFY_CASES:
        assert ftfy_lite(text) == ftfy.fix_text(text), repr(text)
        assert clean_text(text, "lite") == clean_text(text, "ftfy"), repr(text)
    # the documented gap: C1 controls are cp1252 to ftfy (U+0085 -> '…'), a line break to ftfy-lite
    assert ftfy.fix_text("a\x85b") == "a\u2026b"
    assert ftfy_lite("a\x85b") == "a\nb"


def test_clean_text():
    assert clean_text("  a\t\tb \n\n c\u3000d  ", "lite") == "a b c d"
    assert clean_text("&amp;lt;b&amp;gt; <i>", "lite") == "<b> <i>"  # html.unescape twice after ftfy
    assert clean_text(NEG_KALEIDO, "lite") == NEG_KALEIDO.replace("，", ",")
    assert clean_text("\u201cHi\u201d") == '"Hi"'
    with pytest.raises(ValueError, match="unknown text cleaning mode 'whitespace'"):
        clean_text("x", "whitespace")


def test_clean_text_auto_uses_ftfy_when_importable(monkeypatch):
    import ftfy

    monkeypatch.setattr(ftfy, "fix_text", lambda text: "from ftfy")
    assert clean_text("anything", "auto") == "from ftfy"
    assert clean_text("anything", "lite") == "anything"


def test_missing_ftfy(monkeypatch, tokenizer_dir):
    monkeypatch.setitem(sys.modules, "ftfy", None)  # makes `import ftfy` raise ImportError
    with pytest.raises(ImportError, match="pip install ftfy"):
        clean_text("x", "ftfy")
    assert clean_text("\ufb01 \u201cx\u201d", "auto") == 'fi "x"'  # falls back to ftfy-lite
    with pytest.raises(ImportError, match="official-parity"):
        text_encoder(tokenizer_dir, text_clean="ftfy", dtype="float32")


# ------------------------------------------------------------------------------------------------ tokenizer


def test_tiny_tokenizer_matches_sentencepiece(tokenizer_dir, sentencepiece_model):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    tokenizer = load_tokenizer(tokenizer_dir)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    for text in PROMPTS:
        assert tokenizer(text)["input_ids"] == sentencepiece_model.encode(text) + [1], text
    assert 2 in tokenizer("a zebra sleeps")["input_ids"]
    chinese = tokenizer(clean_text(NEG_KALEIDO[:20], "lite"))["input_ids"]  # the trained part
    assert 2 not in chinese and len(chinese) > 10

    from transformers import PreTrainedTokenizerFast

    verbatim = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_dir / "tokenizer.json"), eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    for text in PROMPTS:
        assert verbatim(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_tokenize_padding_and_truncation(tokenizer_dir, sentencepiece_model):
    model = text_encoder(tokenizer_dir, max_length=8, dtype="float32")
    long_text = PROMPTS[0]
    pieces = sentencepiece_model.encode(long_text)
    assert len(pieces) > 8
    ids, mask = model.tokenize(["", "a fox", long_text])
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape == (3, 8)
    assert ids[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert mask[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    short = sentencepiece_model.encode("a fox") + [1]
    assert ids[1].tolist() == short + [0] * (8 - len(short))
    assert mask[1].tolist() == [1] * len(short) + [0] * (8 - len(short))
    assert ids[2].tolist() == pieces[:7] + [1]  # truncation keeps </s> last
    assert mask[2].tolist() == [1] * 8

    model = text_encoder(tokenizer_dir, max_length=512, dtype="float32")
    ids, mask = model.tokenize([NEG_KALEIDO, " a  red\tfox \n"])
    expected = sentencepiece_model.encode(NEG_KALEIDO.replace("，", ",")) + [1]
    assert ids[0, : len(expected)].tolist() == expected and (ids[0, len(expected) :] == 0).all()
    assert int(mask[0].sum()) == len(expected)
    cleaned = sentencepiece_model.encode("a red fox") + [1]  # cleaned before tokenizing
    assert ids[1, : len(cleaned) + 1].tolist() == cleaned + [0]


def test_tiny_tokenizer_is_deterministic(tmp_path, tokenizer_dir):
    tiny_tokenizer_main([str(tmp_path / "again")])
    names = sorted(p.name for p in tokenizer_dir.iterdir())
    assert names == ["tokenizer.json", "tokenizer_config.json"]
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (tokenizer_dir / name).read_bytes()


def test_tokenizer_folder_errors(tmp_path, tokenizer_dir):
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found: .*absent"):
        load_tokenizer(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        FileNotFoundError,
        match=r"incomplete tokenizer folder .*empty: missing tokenizer\.json or "
        r"spiece\.model and tokenizer_config\.json \(found: nothing\)",
    ):
        load_tokenizer(empty)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"partial: missing tokenizer_config\.json \(found: \['tokenizer"):
        UMT5TextEncoder(str(partial), vocab_size=100, **TINY_SIZES)


# ------------------------------------------------------------------------------------------------ conditioner


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_text_encoder_end_to_end(tokenizer_dir, dtype):
    texts = [PROMPTS[0], NEG_KALEIDO[:40], "", " ".join(PROMPTS[:2]) * 4]
    trimmed = text_encoder(tokenizer_dir, dtype=dtype)
    full = text_encoder(tokenizer_dir, dtype=dtype, trim_to_longest=False)
    full.encoder.load_state_dict(trimmed.encoder.state_dict())
    assert not trimmed.training and not any(p.requires_grad for p in trimmed.parameters())

    context = trimmed(texts)
    reference = full(texts)
    torch_dtype = getattr(torch, dtype)
    assert context.shape == (4, 512, 32) and context.dtype == torch_dtype
    # Trim to the longest text, zero-pad: the same values. fp32 to rounding only: some CPUs' kernels sum in an
    # order that depends on the sequence length (4.8e-7 seen); bf16 rounds that away.
    if dtype == "float32":
        torch.testing.assert_close(context, reference, rtol=0, atol=2e-6)
    else:
        assert torch.equal(context, reference)

    ids, mask = trimmed.tokenize(texts)
    lengths = mask.sum(1)
    assert lengths[2] == 1 and 100 < lengths.max() < 512
    with torch.no_grad():
        hidden = trimmed.encoder(ids, mask)
    assert torch.equal(reference, hidden * mask[..., None].to(torch_dtype))  # the same 512-token computation
    for row, n in enumerate(lengths.tolist()):
        assert (context[row, n:] == 0).all()
        assert (context[row, :n].abs().sum(-1) > 0).all()
        assert (hidden[row, n:].abs().sum(-1) > 0).all()  # the raw encoder output is not zero there


def test_text_encoder_loads_weights(tmp_path, tokenizer_dir):
    vocab = len(load_tokenizer(tokenizer_dir))
    torch.manual_seed(1)
    source = UMT5Encoder(vocab_size=vocab, **TINY_SIZES).to(torch.bfloat16)
    path = tmp_path / "umt5.pth"
    torch.save(source.state_dict(), path)
    loaded = UMT5TextEncoder(str(tokenizer_dir), weights_path=str(path), vocab_size=vocab, **TINY_SIZES)
    state = loaded.encoder.state_dict()
    assert set(state) == set(source.state_dict())
    for key, value in source.state_dict().items():
        assert state[key].dtype == torch.bfloat16 and state[key].device.type == "cpu"
        assert torch.equal(state[key], value), key
    ids, mask = loaded.tokenize(PROMPTS[:2])
    with torch.no_grad():
        expected = source(ids, mask) * mask[..., None].to(torch.bfloat16)
    assert torch.equal(loaded(PROMPTS[:2]), expected)

    as_fp32 = UMT5TextEncoder(
        str(tokenizer_dir), weights_path=str(path), vocab_size=vocab, dtype="float32", **TINY_SIZES
    )
    assert all(p.dtype == torch.float32 for p in as_fp32.parameters())

    with pytest.raises(
        ValueError,
        match=r"umt5.pth: weights do not fit UMT5Encoder\n1 shape mismatch:\n  token_embedding.weight: expected",
    ):
        UMT5TextEncoder(str(tokenizer_dir), weights_path=str(path), vocab_size=vocab + 1, **TINY_SIZES)


def test_text_encoder_rejects_small_vocab(tokenizer_dir):
    vocab = len(load_tokenizer(tokenizer_dir))
    with pytest.raises(ValueError, match=f"has {vocab} tokens, more than the encoder's vocab_size {vocab - 1}"):
        UMT5TextEncoder(str(tokenizer_dir), vocab_size=vocab - 1, **TINY_SIZES)
