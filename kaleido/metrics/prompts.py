"""Prompt sets: our prompt file (`prompt@@ref1@@ref2` lines) or OpenS2V-Eval's JSON files, read as they are.

OpenS2V-Eval (Hugging Face dataset BestWishYsh/OpenS2V-Eval) ships Open-Domain_Eval.json (180 items),
Human-Domain_Eval.json and Single-Domain_Eval.json next to an Images/ folder. Each maps an id to its entry:

    "multiobject_3": {"img_paths": ["Images/multiobject/.../1.jpg", ...],   reference images, relative to the set
                      "prompt": "The video ...",
                      "class_label": ["Dog", "Ball"],                        one per reference
                      "synthesis_flag": "True" | "wrong" | ...}              not used in scoring

The category of an item is its id without the trailing _<n> (singleobj, singlehuman, singleface, multiobject,
humanobj, faceobj, multiface, multihuman); the domain (which Total weights apply) is the file name's prefix.
"""

from __future__ import annotations

import json
from pathlib import Path

from kaleido import files
from kaleido.files import InputError
from kaleido.metrics.base import EvalItem

DOMAINS = ("Open-Domain", "Human-Domain", "Single-Domain")
# OpenS2V scores FaceSim on these categories only, against the reference stored under a man/woman folder.
FACE_CATEGORIES = ("singlehuman", "singleface", "faceobj", "humanobj")
FACE_FOLDERS = ("/man/", "/woman/", "/crop_man/", "/crop_woman/")


def read_prompt_set(path: str | Path, image_root: str | Path | None = None) -> list[EvalItem]:
    """The items of a prompt file (.txt) or an OpenS2V-Eval JSON file (.json), every reference checked to decode.

    image_root: the folder OpenS2V's img_paths are relative to (default: the JSON file's folder). A prompt file's
    references are relative to the working directory, as in sample_video.py. InputError (one line) on bad input.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_opens2v(path, image_root)
    if image_root is not None:
        raise InputError(f"args.image_root applies to OpenS2V JSON prompt sets only, not to {path}")
    return [
        EvalItem(str(line.index), line.text, line.references)
        for line in files.read_prompt_file(path, max_references=3, allow_zero_refs=True)
    ]


def read_opens2v(path: Path, image_root: str | Path | None = None) -> list[EvalItem]:
    if not path.is_file():
        raise InputError(f"{path}: prompt set not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected an object mapping ids to entries (OpenS2V-Eval format)")
    root = Path(image_root) if image_root is not None else path.parent
    items = []
    for identifier, entry in data.items():
        where = f"{path}: {identifier}"
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise InputError(f"{where}: expected an entry with 'prompt', 'img_paths' and 'class_label'")
        paths = entry.get("img_paths") or []
        labels = entry.get("class_label") or []
        if len(labels) != len(paths):
            raise InputError(f"{where}: {len(paths)} img_paths but {len(labels)} class_label entries")
        references = tuple(root / p for p in paths)
        for reference in references:
            files.check_image(reference, where)
        category = identifier.rsplit("_", 1)[0]
        items.append(
            EvalItem(
                identifier,
                entry["prompt"],
                references,
                tuple(str(label) for label in labels),
                category,
                face_reference_of(category, paths),
            )
        )
    return items


def face_reference_of(category: str, img_paths: list[str]) -> int | None:
    """OpenS2V's FaceSim reference: in a face category, the first image under a man/woman folder."""
    if category not in FACE_CATEGORIES:
        return None
    return next((i for i, p in enumerate(img_paths) if any(f in f"/{p}" for f in FACE_FOLDERS)), None)


def domain_of(path: str | Path) -> str:
    """The OpenS2V domain a prompt set belongs to: its file name's prefix ('Human-Domain_Eval.json' ->
    'Human-Domain'); anything else is scored with the Open-Domain weights."""
    name = Path(path).name
    return next((d for d in DOMAINS if name.startswith(d)), "Open-Domain")
