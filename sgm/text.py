"""Text conditioning: prompt cleaning, the umT5 tokenizer and the frozen umT5 encoder (docs/design/components.md).

Pipeline for each prompt (docs/design/sampling.md; quirk Q7 in docs/design/quirks.md):
    clean (ftfy.fix_text or built-in ftfy_lite -> html.unescape x2 -> strip -> collapse whitespace)
    -> tokenize (pieces + </s>, pad 0 to max_length, truncation keeps max_length-1 pieces + </s>)
    -> umT5 encoder -> hidden * mask: context (B, max_length, dim), rows past each text's length exactly 0.
"""

from __future__ import annotations

import html
import html.entities
import re
import unicodedata
from pathlib import Path

import torch
from torch import nn

from sgm.umt5 import UMT5Encoder, load_umt5_weights
from sgm.util import parse_dtype

__all__ = ["ftfy_lite", "clean_text", "load_tokenizer", "UMT5TextEncoder", "TEXT_CLEAN_MODES"]

TEXT_CLEAN_MODES = ("auto", "ftfy", "lite")

# ---------------------------------------------------------------------------------------------------------
# ftfy-lite: the steps of ftfy 6.x `fix_text` (default config) except mojibake repair and C1-control fixing.

# The 22 code points ftfy 6.3's fix_latin_ligatures replaces (Dutch, Afrikaans, Serbo-Croatian digraphs and the
# Latin typographic ligatures U+FB00-U+FB06).
LATIN_LIGATURES = {
    0x0132: "IJ",
    0x0133: "ij",
    0x0149: "\u02bcn",
    0x01F1: "DZ",
    0x01F2: "Dz",
    0x01F3: "dz",
    0x01C4: "D\u017d",
    0x01C5: "D\u017e",
    0x01C6: "d\u017e",
    0x01C7: "LJ",
    0x01C8: "Lj",
    0x01C9: "lj",
    0x01CA: "NJ",
    0x01CB: "Nj",
    0x01CC: "nj",
    0xFB00: "ff",
    0xFB01: "fi",
    0xFB02: "fl",
    0xFB03: "ffi",
    0xFB04: "ffl",
    0xFB05: "\u017ft",
    0xFB06: "st",
}

# U+3000 ideographic space -> space; U+FF01-U+FFEF -> their NFKC form where that differs.
CHARACTER_WIDTH = {0x3000: " "}
CHARACTER_WIDTH.update(
    (cp, unicodedata.normalize("NFKC", chr(cp)))
    for cp in range(0xFF01, 0xFFF0)
    if unicodedata.normalize("NFKC", chr(cp)) != chr(cp)
)

QUOTES = {cp: "'" for cp in (0x02BC, 0x2018, 0x2019, 0x201A, 0x201B)}
QUOTES.update({cp: '"' for cp in (0x201C, 0x201D, 0x201E, 0x201F)})

CONTROL_CHARS = dict.fromkeys(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)]
)

_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_ANSI_RE = re.compile("\x1b\\[((?:\\d|;)*)([a-zA-Z])")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _build_entities() -> dict[str, str]:
    """HTML5 entities written with ';', plus UPPERCASE spellings of lowercase ones that are not entities themselves."""
    table = {}
    for name, char in html.entities.html5.items():
        if not name.endswith(";"):
            continue
        table["&" + name] = char
        upper = "&" + name.upper()
        if name == name.lower() and html.unescape(upper) == upper:
            table[upper] = char.upper()
    return table


_ENTITIES = _build_entities()


def _unescape_entity(match: re.Match) -> str:
    text = match.group(0)
    if text in _ENTITIES:
        return _ENTITIES[text]
    if text.startswith("&#"):
        decoded = html.unescape(text)
        return text if ";" in decoded else decoded  # an invalid numeric entity stays as written
    return text


def _join_surrogates(match: re.Match) -> str:
    high, low = (ord(c) for c in match.group(0))
    return chr(0x10000 + (high - 0xD800) * 0x400 + (low - 0xDC00))


def _fix_segment(text: str, unescape: bool) -> str:
    """Apply the ftfy-lite steps to one segment until nothing changes (ftfy repeats to a fixed point)."""
    while True:
        before = text
        if unescape:
            text = _ENTITY_RE.sub(_unescape_entity, text)
        text = text.translate(LATIN_LIGATURES)
        text = text.translate(CHARACTER_WIDTH)
        text = text.translate(QUOTES)
        text = (
            text.replace("\r\n", "\n")
            .replace("\r", "\n")
            .replace("\u2028", "\n")
            .replace("\u2029", "\n")
            .replace("\u0085", "\n")
        )
        if _SURROGATE_RE.search(text):
            text = _SURROGATE_RE.sub("\ufffd", _SURROGATE_PAIR_RE.sub(_join_surrogates, text))
        text = _ANSI_RE.sub("", text)
        text = text.translate(CONTROL_CHARS)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def ftfy_lite(text: str) -> str:
    """ftfy 6.x `fix_text` without mojibake repair and C1-control fixing (docs/design/components.md, "ftfy-lite").

    Steps, repeated to a fixed point per line (as ftfy segments text at '\\n'): HTML entities ending in ';'
    unescaped (only while no '<' has been seen, as ftfy's "auto"), 23 Latin ligatures -> letters,
    fullwidth/halfwidth forms -> standard (U+3000 -> space, U+FF01-U+FFEF -> NFKC), curly quotes -> ' and ",
    line breaks (CRLF, CR, U+2028, U+2029, U+0085) -> '\\n', surrogate pairs joined (lone ones -> U+FFFD), ANSI
    escapes removed, control characters removed, NFC.

    Known difference from real ftfy: U+0080-U+009F are not reinterpreted as cp1252 (ftfy turns U+0085 into
    '…' before the line-break step; here it becomes '\\n'), and mojibake such as 'cafÃ©' is left alone.
    """
    fixed = []
    unescape = True
    for segment in re.split(r"(?<=\n)", text):
        if "<" in segment:
            unescape = False  # ftfy turns HTML unescaping off for this and every later segment
        fixed.append(_fix_segment(segment, unescape) if segment else segment)
    return "".join(fixed)


def _ftfy_fix_text():
    try:
        import ftfy
    except ImportError as err:
        raise ImportError(
            "text_clean='ftfy' needs the ftfy package (pip install ftfy): the official-parity profile cleans "
            "prompts with ftfy.fix_text (quirk Q7). Use text_clean='auto' or 'lite' for the built-in ftfy-lite."
        ) from err
    return ftfy.fix_text


def _text_fixer(mode: str):
    """The step-1 fixer for `mode` ('ftfy', 'lite', or 'auto' = ftfy when importable, else ftfy-lite)."""
    if mode not in TEXT_CLEAN_MODES:
        raise ValueError(f"unknown text cleaning mode {mode!r}: expected one of {TEXT_CLEAN_MODES}")
    if mode == "lite":
        return ftfy_lite
    if mode == "ftfy":
        return _ftfy_fix_text()
    try:
        return _ftfy_fix_text()
    except ImportError:
        return ftfy_lite


def _clean_with(fix, text: str) -> str:
    text = fix(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def clean_text(text: str, mode: str = "auto") -> str:
    """Official prompt cleaning: fix_text -> html.unescape twice -> strip -> every whitespace run to ' ' -> strip.

    mode: 'ftfy' (ftfy.fix_text; ImportError if ftfy is missing), 'lite' (built-in `ftfy_lite`), or 'auto'
    (ftfy when importable, else ftfy-lite).
    """
    return _clean_with(_text_fixer(mode), text)


# ---------------------------------------------------------------------------------------------------------
# Tokenizer and conditioner


def load_tokenizer(folder: str | Path):
    """`AutoTokenizer` from a local folder (offline); one clear error if the folder is missing or incomplete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    has_model = (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()
    has_config = (folder / "tokenizer_config.json").is_file()
    if not (has_model and has_config):
        missing = ([] if has_model else ["tokenizer.json or spiece.model"]) + (
            [] if has_config else ["tokenizer_config.json"]
        )
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(
            f"incomplete tokenizer folder {folder}: missing {' and '.join(missing)} (found: {found or 'nothing'})"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:
        raise OSError(
            f"could not load the tokenizer in {folder} ({type(err).__name__}: {err}); a folder with only "
            f"spiece.model also needs the protobuf package"
        ) from err


class UMT5TextEncoder(nn.Module):
    """Frozen umT5 text conditioner: list of prompts -> context (B, max_length, dim).

    tokenizer_path: local folder of the umT5 tokenizer (tokenizer.json or spiece.model, tokenizer_config.json).
    weights_path: Wan2.1 `models_t5_umt5-xxl-enc-bf16.pth` (or .safetensors with the same keys); the encoder is
        built on the meta device and the file's tensors (cast to `dtype`) become its parameters. None: default
        initialisation (random smoke models; the caller may re-initialise).
    dtype: weights and activations ('bfloat16' as the official run; norm statistics and softmax stay fp32).
    text_clean: 'auto' | 'ftfy' | 'lite' (see `clean_text`; 'ftfy' is the official-parity choice, Q7).
    trim_to_longest: run the encoder only on the batch's longest valid length and zero-pad to max_length
        (bitwise identical to encoding all max_length positions; 3-10x less compute for typical prompts).
    The remaining arguments are the encoder sizes (defaults: umT5-XXL).
    """

    def __init__(
        self,
        tokenizer_path: str,
        weights_path: str | None = None,
        max_length: int = 512,
        dtype: str = "bfloat16",
        text_clean: str = "auto",
        trim_to_longest: bool = True,
        vocab_size: int = 256384,
        dim: int = 4096,
        dim_attn: int = 4096,
        dim_ffn: int = 10240,
        num_heads: int = 64,
        num_layers: int = 24,
        num_buckets: int = 32,
        max_distance: int = 128,
    ):
        super().__init__()
        self.max_length = max_length
        self.weights_path = weights_path
        dtype = parse_dtype(dtype)
        self.trim_to_longest = trim_to_longest
        self._fix_text = _text_fixer(text_clean)  # fails early on an unknown mode or a missing ftfy
        self.tokenizer = load_tokenizer(tokenizer_path)
        if len(self.tokenizer) > vocab_size:
            raise ValueError(
                f"tokenizer in {tokenizer_path} has {len(self.tokenizer)} tokens, more than the encoder's "
                f"vocab_size {vocab_size}"
            )
        sizes = dict(
            vocab_size=vocab_size,
            dim=dim,
            dim_attn=dim_attn,
            dim_ffn=dim_ffn,
            num_heads=num_heads,
            num_layers=num_layers,
            num_buckets=num_buckets,
            max_distance=max_distance,
        )
        if weights_path is None:
            self.encoder = UMT5Encoder(**sizes).to(dtype)
        else:
            with torch.device("meta"):
                encoder = UMT5Encoder(**sizes)
            self.encoder = load_umt5_weights(encoder, weights_path, dtype)
        self.encoder.requires_grad_(False)
        self.eval()

    def clean(self, text: str) -> str:
        return _clean_with(self._fix_text, text)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean and tokenize -> ids, mask: (B, max_length) int64 (pieces + </s>, then pad id 0 / mask 0)."""
        if isinstance(texts, str):
            texts = [texts]
        batch = self.tokenizer(
            [self.clean(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return batch["input_ids"].long(), batch["attention_mask"].long()

    def count_tokens(self, text: str) -> int:
        """Tokens of the cleaned `text` with </s>, before truncation: more than max_length means the encoder reads
        only the first max_length - 1 pieces (the sampling job warns with this count)."""
        return len(self.tokenizer(self.clean(text), add_special_tokens=True, verbose=False)["input_ids"])

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, L) -> context (B, L, dim) in `dtype`, rows with mask 0 exactly zero."""
        device = self.encoder.token_embedding.weight.device
        ids, mask = ids.to(device), mask.to(device)
        length = ids.shape[1]
        used = int(mask.sum(dim=1).max()) if self.trim_to_longest else length
        hidden = self.encoder(ids[:, :used], mask[:, :used])
        context = hidden * mask[:, :used, None].to(hidden.dtype)
        if used < length:
            context = torch.nn.functional.pad(context, (0, 0, 0, length - used))
        return context

    def forward(self, texts: list[str]) -> torch.Tensor:
        """-> context (B, max_length, dim) in `dtype`, rows past each text's length exactly zero."""
        ids, mask = self.tokenize(texts)
        return self.encode_ids(ids, mask)
