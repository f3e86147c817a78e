"""The data pipeline end to end: a folder of raw videos in, the official SFT layout out, with a manifest, a list of
everything rejected and a report (scripts/build_dataset.py runs it; docs/data_pipeline.md describes it).

The unit of work is one source video (`process_source`): stage 1 cuts and filters its clips and captions them,
stage 2 grounds the subject phrases, stage 3 filters the candidate references, stage 4 makes each reference differ
from its clip (the configured methods in order; stage 3 again on the results), and the accepted samples are written.
Both runners call exactly this function per source, so they produce the same files:

- local: the sources in sorted order in this process, models loaded once;
- ray: the sources as a Ray Data dataset, mapped by a pool of actors that each load the models once.

Layout of OUT (a sample is visible to the trainer only once its video exists, and the video is written last):

    videos/<id>.mp4, labels/<id>.txt, references/<id>/ref1.png...   the training data
    manifest.jsonl   one line per sample: source, time span, caption, clip scores, per reference its phrase, method
                     and every score
    rejected.jsonl   one line per rejected source, clip, subject or reference: stage, item, reason, score, threshold
    report.json, report.md, report/*.png   counts per stage and reason; contact sheets of kept and rejected
                     references per reason
    .progress/<key>.json   a finished source's records (a rerun skips it); the jsonl files and the report are
                     rebuilt from these after every run, in source order, so they do not depend on the order of work
    .progress/pending/     clips encoded as soon as they have references, moved into videos/ when written

<id> is `<file stem>-<8 hex digits of the source's path relative to RAW>-<first frame>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from kaleido import files
from kaleido.curation.clips import ClipSpan
from kaleido.curation.records import Rejection
from kaleido.curation.references import Candidate, on_white
from kaleido.curation.video import decode, iter_sources

STAGES = ("slice", "caption", "ground", "filter")  # required entries of `stages:`; cross-pair methods come on top
THUMBNAIL = 96  # pixels: the report's reference thumbnails
SHEET_COLUMNS = 12


@dataclass
class BuildArgs:
    """`args:` of a data-pipeline config."""

    runner: str = "local"  # local | ray
    device: str = "cpu"  # where the models run
    dtype: str = "float32"
    seed: int = 0
    extensions: list[str] = field(default_factory=lambda: [".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"])
    max_references: int = 3
    cross_pair: list[str] = field(default_factory=lambda: ["cross_clip", "white"])  # methods, in order of preference
    video_height: int | None = None  # written clips resized to this height (the width follows); None: as the source
    ray_address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); None: a local instance
    ray_actors: int = 1  # actors of the model pool
    ray_gpus_per_actor: float = 0.0

    def validate(self) -> None:
        if self.runner not in ("local", "ray"):
            raise ValueError(f"runner: expected local or ray, got {self.runner!r}")
        if not 1 <= self.max_references <= 3:
            raise ValueError(f"max_references: expected 1 to 3, got {self.max_references}")
        if not self.cross_pair:
            raise ValueError("cross_pair: expected at least one method")
        if self.ray_actors < 1:
            raise ValueError(f"ray_actors: expected at least 1, got {self.ray_actors}")
        if self.video_height is not None and (self.video_height < 16 or self.video_height % 2):
            raise ValueError(f"video_height: expected an even number >= 16, got {self.video_height}")


@dataclass
class Stages:
    """The built stages: slice, caption, ground, filter, and the cross-pair methods in order."""

    slice: object
    caption: object
    ground: object
    filter: object
    cross_pair: list = field(default_factory=list)


@dataclass
class Found:
    """A clip that has references: its span, its encoded video (waiting in .progress/pending), its caption, its
    kept candidates (best first) and its name in the report."""

    span: ClipSpan
    video: Path
    caption: str
    candidates: list[Candidate]
    item: str

    def time_of(self, candidate: Candidate) -> float:
        """Seconds into the source of the frame the candidate was seen in."""
        return self.span.seconds[0] + candidate.frame_index / self.span.fps


def source_key(relative: str) -> str:
    return hashlib.sha256(relative.encode()).hexdigest()[:8]


def sample_id(relative: str, start: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(relative).stem)[:48] or "video"
    return f"{stem}-{source_key(relative)}-{start:06d}"


def process_source(source: Path, raw: Path, out: Path, stages: Stages, args: BuildArgs) -> dict:
    """Run every stage on one source and write its accepted samples; return its record (also written to
    OUT/.progress/<key>.json): {"source", "samples": [manifest lines], "rejected": [records], "facts"}."""
    relative = source.relative_to(raw).as_posix()
    clips, rejected, facts = stages.slice(source)
    found: list[Found] = []
    for span in clips:
        frames = decode(source, span.fps, start=span.start / span.fps, count=span.frames, height=args.video_height)
        item = f"{relative}#{span.start}-{span.start + span.frames}"
        if len(frames.frames) < span.frames:
            rejected.append(Rejection("slice", item, "decode_short", len(frames.frames), span.frames))
            continue
        answer = stages.caption(frames.frames, item)
        if isinstance(answer, Rejection):
            rejected.append(answer)
            continue
        caption, phrases = answer
        candidates, missing = stages.ground(frames.frames, phrases, item)
        kept, dropped = stages.filter(candidates, item)
        rejected += missing + dropped
        if kept:
            kept = sorted(kept, key=lambda c: -c.score)[: args.max_references]
            # encoded now, so that a long source's clips are not all held in memory until cross-pairing
            pending = out / ".progress" / "pending" / f"{sample_id(relative, span.start)}.mp4"
            pending.parent.mkdir(parents=True, exist_ok=True)
            files.write_mp4(pending, frames.frames, fps=round(span.fps))
            found.append(Found(span, pending, caption, kept, item))
        else:
            rejected.append(Rejection("filter", item, "no_reference"))
    references = cross_pair(found, stages, args, rejected)
    samples = []
    for clip, made in zip(found, references):
        span, caption = clip.span, clip.caption
        if not made:
            rejected.append(Rejection("cross_pair", clip.item, "no_reference"))
            clip.video.unlink()
            continue
        identifier = sample_id(relative, span.start)
        write_sample(out, identifier, clip.video, caption, [c.frame for c in made])
        samples.append(
            {
                "id": identifier,
                "source": relative,
                "start": round(span.seconds[0], 6),
                "end": round(span.seconds[1], 6),
                "frames": span.frames,
                "fps": span.fps,
                "shot": list(span.shot),
                "caption": caption,
                "clip_scores": span.scores,
                "references": [
                    {"file": f"ref{k + 1}.png", "phrase": c.phrase, "method": c.method, "detection": c.score}
                    | {"frame": c.frame_index, "scores": c.scores}
                    for k, c in enumerate(made)
                ],
            }
        )
    record = {"source": relative, "facts": facts, "samples": samples, "rejected": [r.record() for r in rejected]}
    progress = out / ".progress"
    thumbnails(progress / "thumbs" / source_key(relative), references, rejected)
    files.write_text(progress / f"{source_key(relative)}.json", json.dumps(record, sort_keys=True) + "\n")
    return record


def cross_pair(found: list[Found], stages: Stages, args: BuildArgs, rejected: list[Rejection]) -> list[list[Candidate]]:
    """Per clip in `found`, its references made by the first method that works for each subject and that passes
    the filter again (subjects for which none does are rejected)."""
    made: list[list[Candidate | None]] = [[None] * len(clip.candidates) for clip in found]
    for method in stages.cross_pair:
        todo = [(i, j) for i, refs in enumerate(made) for j, ref in enumerate(refs) if ref is None]
        if not todo:
            break
        results = method.make(found, todo)
        for (i, j), result in zip(todo, results):
            if result is None:
                continue
            item = found[i].item
            kept, dropped = stages.filter([result], item, made=True)
            rejected.extend(dropped)
            if kept:
                made[i][j] = kept[0]
    for i, refs in enumerate(made):
        for j, ref in enumerate(refs):
            if ref is None:
                candidate = found[i].candidates[j]
                image = on_white(candidate.frame, candidate.mask)
                rejected.append(Rejection("cross_pair", f"{found[i].item}#{candidate.phrase}", "unpaired", image=image))
    return [[ref for ref in refs if ref is not None] for refs in made]


def write_sample(out: Path, identifier: str, video: Path, caption: str, images: list) -> None:
    """references/<id>/ (a folder renamed into place), then labels/<id>.txt, then the encoded clip `video` renamed
    to videos/<id>.mp4 last."""
    with files.atomic_directory(out / "references" / identifier, overwrite=True) as folder:
        for k, image in enumerate(images):
            Image.fromarray(image).save(folder / f"ref{k + 1}.png", format="PNG")
    files.write_text(out / "labels" / f"{identifier}.txt", caption + "\n")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    os.replace(video, out / "videos" / f"{identifier}.mp4")


def thumbnails(folder: Path, references: list[list[Candidate]], rejected: list[Rejection]) -> None:
    """Small PNGs of the kept references (kept_<n>.png) and of the rejected ones (<reason>_<n>.png)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    kept = [c.frame for refs in references for c in refs]
    dropped = [(r.reason, r.image) for r in rejected if r.image is not None]
    for n, image in enumerate(kept):
        thumbnail(image).save(folder / f"kept_{n:03d}.png")
    for n, (reason, image) in enumerate(dropped):
        thumbnail(image).save(folder / f"{reason}_{n:03d}.png")


def thumbnail(image: np.ndarray) -> Image.Image:
    picture = Image.fromarray(image)
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    return files.letterbox(picture, THUMBNAIL, THUMBNAIL)


def finish(out: Path, sources: list[str]) -> dict:
    """Rebuild manifest.jsonl, rejected.jsonl and the report from the progress records of `sources` (in order)."""
    records = []
    for relative in sources:
        path = out / ".progress" / f"{source_key(relative)}.json"
        if path.is_file():
            records.append(json.loads(path.read_text(encoding="utf-8")))
    samples = [s for r in records for s in r["samples"]]
    rejected = [x for r in records for x in r["rejected"]]
    files.write_text(out / "manifest.jsonl", "".join(json.dumps(s, sort_keys=True) + "\n" for s in samples))
    files.write_text(out / "rejected.jsonl", "".join(json.dumps(x, sort_keys=True) + "\n" for x in rejected))
    by_reason = Counter((x["stage"], x["reason"]) for x in rejected)
    methods = Counter(ref["method"] for s in samples for ref in s["references"])
    report = {
        "sources": len(sources),
        "sources_done": len(records),
        "samples": len(samples),
        "references": sum(methods.values()),
        "reference_methods": dict(sorted(methods.items())),
        "rejected": {f"{stage}/{reason}": n for (stage, reason), n in sorted(by_reason.items())},
    }
    files.write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    lines = [
        "# Data pipeline report",
        "",
        f"{report['sources_done']} of {report['sources']} sources done; {report['samples']} samples with "
        f"{report['references']} references ({', '.join(f'{m}: {n}' for m, n in methods.items()) or 'none'}).",
        "",
        "| stage | reason | rejected | sheet |",
        "|---|---|---|---|",
    ]
    sheets = contact_sheets(out, [r["source"] for r in records])
    for (stage, reason), n in sorted(by_reason.items()):
        sheet = f"[{reason}.png](report/{reason}.png)" if reason in sheets else ""
        lines.append(f"| {stage} | {reason} | {n} | {sheet} |")
    if "kept" in sheets:
        lines += ["", "Kept references: [report/kept.png](report/kept.png)"]
    files.write_text(out / "report.md", "\n".join(lines) + "\n")
    return report


def contact_sheets(out: Path, sources: list[str]) -> set[str]:
    """report/kept.png and report/<reason>.png: the thumbnails of every source, in source order."""
    groups: dict[str, list[Path]] = {}
    for relative in sources:
        folder = out / ".progress" / "thumbs" / source_key(relative)
        for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            groups.setdefault(path.stem.rsplit("_", 1)[0], []).append(path)
    report = out / "report"
    if report.exists():
        shutil.rmtree(report)
    report.mkdir()
    for name, paths in groups.items():
        rows = -(-len(paths) // SHEET_COLUMNS)
        sheet = Image.new("RGB", (SHEET_COLUMNS * (THUMBNAIL + 2), rows * (THUMBNAIL + 2)), files.SHEET_SEPARATOR)
        for n, path in enumerate(paths):
            with Image.open(path) as image:
                sheet.paste(
                    image.convert("RGB"),
                    ((n % SHEET_COLUMNS) * (THUMBNAIL + 2), (n // SHEET_COLUMNS) * (THUMBNAIL + 2)),
                )
        files.write_png(report / f"{name}.png", sheet)
    return set(groups)


def clean_unfinished(out: Path, relative: str) -> None:
    """Remove what an interrupted run left of a source that has no progress record (its samples start with the
    source's id prefix)."""
    prefix = sample_id(relative, 0)[: -len("000000")]
    for pattern in (f"videos/{prefix}*", f"labels/{prefix}*", f"references/{prefix}*", f".progress/pending/{prefix}*"):
        for path in out.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def pending_sources(raw: Path, out: Path, args: BuildArgs) -> tuple[list[Path], list[Path]]:
    """(all sources under RAW, those without a progress record)."""
    suffixes = tuple(s.lower() for s in args.extensions)
    sources = list(iter_sources(raw, suffixes))
    done = {p.stem for p in (out / ".progress").glob("*.json")}
    return sources, [s for s in sources if source_key(s.relative_to(raw).as_posix()) not in done]


def run_local(raw: Path, out: Path, stages: Stages, args: BuildArgs, progress=None) -> dict:
    sources, todo = pending_sources(raw, out, args)
    for source in todo:
        clean_unfinished(out, source.relative_to(raw).as_posix())
        process_source(source, raw, out, stages, args)
        if progress is not None:
            progress.update(1)
    return finish(out, [s.relative_to(raw).as_posix() for s in sources])


def check_stages(config, args: BuildArgs) -> set[str]:
    """The names of the models the used stages need (the four of STAGES and the methods in args.cross_pair).

    `stages:` may hold more cross-pair methods than args.cross_pair picks (an overlay adds methods; one option
    chooses among them): those are checked but not built, and models only they name are not loaded. Any other
    unknown stage, a missing stage, a model no stage names and a stage naming a model `models:` lacks are errors
    naming the key; every component's target and params are checked before any model is loaded."""
    from sat.config import ConfigError
    from sgm.util import check_component

    models_config, stages_config = config.section("models"), config.section("stages")
    wanted = {*STAGES, *args.cross_pair}
    for name in sorted(wanted - set(stages_config)):
        raise ConfigError(f"{config.where('stages')}: 'stages.{name}' is missing (a target: and params: node)")
    for name, node in stages_config.items():
        method = name in wanted or (isinstance(node, dict) and "target" in node)
        factory = check_component(node, f"stages.{name}", config.where) if method else None
        if name not in wanted and not hasattr(factory, "make"):
            raise ConfigError(
                f"{config.where(f'stages.{name}')}: stage 'stages.{name}' is not used (stages: {list(STAGES)} and "
                f"the methods in args.cross_pair {args.cross_pair})"
            )

    def models_of(names) -> set[str]:
        return {
            value.split(".", 1)[1]
            for name in names
            for value in (stages_config[name].get("params") or {}).values()
            if isinstance(value, str) and value.startswith("models.")
        }

    named, used = models_of(stages_config), models_of(wanted)
    for name in models_config:
        if name not in named:
            raise ConfigError(f"{config.where(f'models.{name}')}: model 'models.{name}' is used by no stage")
    for name in sorted(named - set(models_config)):
        raise ConfigError(f"{config.where('stages')}: a stage names 'models.{name}', which `models:` lacks")
    for name, node in models_config.items():
        check_component(model_node(name, node, args), f"models.{name}", config.where)
    return used


def model_node(name: str, node: dict, args: BuildArgs) -> dict:
    """A `models:` entry with the run's device and dtype and the key its errors name, unless it sets them."""
    from sgm.util import parse_dtype

    node = dict(node)
    params = {"key": f"models.{name}.params.model_id", "device": args.device, "dtype": parse_dtype(args.dtype)}
    node["params"] = params | dict(node.get("params") or {})
    return node


def check_models(config, args: BuildArgs) -> None:
    """check_stages, and every model found on disk (or a tiny one built), without loading any: for a runner whose
    workers load them, so that a missing model is one clear error before any work."""
    from kaleido.vision import ModelLoadError, resolve_model

    for name in sorted(check_stages(config, args)):
        for key, value in (config.section("models")[name].get("params") or {}).items():
            if key.endswith("model_id") and value is not None:  # model_id, and base_model_id of FLUX Redux
                folder = resolve_model(str(value), f"models.{name}.params.{key}")
                if not any((folder / index).is_file() for index in ("config.json", "model_index.json")):
                    raise ModelLoadError(
                        f"models.{name}.params.{key}: {folder} holds no model (no config.json or model_index.json)"
                    )


def build_stages(config, args: BuildArgs) -> Stages:
    """Load the models of `models:` once, then build the stages of `stages:`; a stage parameter whose value is
    "models.<name>" gets that model (check_stages says what is checked first)."""
    from sgm.util import instantiate_from_config

    models_config, stages_config = config.section("models"), config.section("stages")
    referenced = check_stages(config, args)
    models = {}
    for name in sorted(referenced):
        node = model_node(name, models_config[name], args)
        models[name] = instantiate_from_config(node, f"models.{name}", config.where)
    built = {}
    for name, node in stages_config.items():
        if name not in {*STAGES, *args.cross_pair}:
            continue
        node = dict(node)
        params = dict(node.get("params") or {})
        for key, value in params.items():
            if isinstance(value, str) and value.startswith("models."):
                params[key] = models[value.split(".", 1)[1]]
        node["params"] = params
        built[name] = instantiate_from_config(node, f"stages.{name}", config.where)  # models as built objects
    return Stages(*(built[name] for name in STAGES), cross_pair=[built[name] for name in args.cross_pair])
