"""The evaluation run (scripts/evaluate.py): a prompt set and a folder of `<id>.mp4` videos in, OUT_DIR/scores.jsonl
and the summary out.

A config has three sections: `models:` (kaleido.vision wrappers, each `target:`/`params:`, loaded once), `metrics:`
(one `target:`/`params:` node per metric, keyed by its score name; a parameter "models.<name>" receives that model)
and `args:` (EvalArgs). Every model, reference and video is checked before a model is loaded.

OUT_DIR/scores.jsonl holds one record per item of the prompt set, in its order:

    {"id", "category", "video", "status": "scored" | "missing_video" | "bad_video",
     <every name of SCORE_NAMES>: float | null, "reasons": {name: why it is null}, "seconds": {name: seconds}}

It is rewritten (atomically) after every video, so an interrupted run resumes: a rerun keeps the scored records
that have every configured metric and scores the rest (--overwrite scores everything again).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kaleido import files
from kaleido.metrics import total as totals
from kaleido.metrics.base import EvalItem, NotScored, Sample, VideoError, read_video, video_info
from kaleido.metrics.prompts import DOMAINS, domain_of, read_prompt_set

SCORE_NAMES = (
    "motion_amplitude",
    "motion_smoothness",
    "aesthetics",
    "face_sim",
    "gme_score",
    "nexus_score",
    "clip_t",
    "clip_i",
    "dino_i",
    "natural_score",
)
SECTIONS = ("models", "metrics", "args")


@dataclass
class EvalArgs:
    """`args:` of an evaluation config."""

    device: str = "cpu"  # where the models run
    dtype: str = "float32"
    domain: str = "auto"  # which Total weights: auto (from an OpenS2V file name, else Open-Domain) or a DOMAINS name
    image_root: str | None = None  # the folder OpenS2V img_paths are relative to; None: the JSON file's folder
    video_size: list[int] | None = None  # [height, width] every video must have; None: what most videos have
    video_frames: int | None = None  # frames every video must have; None: what most videos have

    def validate(self) -> None:
        if self.domain not in ("auto", *DOMAINS):
            raise ValueError(f"domain: expected auto or one of {list(DOMAINS)}, got {self.domain!r}")
        if self.video_size is not None and len(self.video_size) != 2:
            raise ValueError(f"video_size: expected [height, width], got {self.video_size}")


def check_config(config, args: EvalArgs) -> set[str]:
    """Check every metric and model node without loading anything; return the names of the models the metrics use.
    A metric keyed by another name than its score name, an unused model and a missing one are errors."""
    from kaleido.curation.pipeline import model_node
    from sat.config import ConfigError
    from sgm.util import check_component

    models_config, metrics_config = config.section("models"), config.section("metrics")
    if not metrics_config:
        raise ConfigError(f"{config.where('metrics')}: no metrics configured (metrics: a target:/params: per metric)")
    used = set()
    for name, node in metrics_config.items():
        factory = check_component(node, f"metrics.{name}", config.where)
        if getattr(factory, "name", None) != name:
            raise ConfigError(
                f"{config.where(f'metrics.{name}')}: metrics.{name} is {node['target']}, whose score is named "
                f"{getattr(factory, 'name', None)!r}: key each metric by its score name"
            )
        for key, value in (node.get("params") or {}).items():
            if isinstance(value, str) and value.startswith("models."):
                model = value.split(".", 1)[1]
                if model not in models_config:
                    raise ConfigError(f"{config.where(f'metrics.{name}.params.{key}')}: models.{model} is not set")
                used.add(model)
    for name in models_config:
        if name not in used:
            raise ConfigError(f"{config.where(f'models.{name}')}: model 'models.{name}' is used by no metric")
        check_component(model_node(name, models_config[name], args), f"models.{name}", config.where)
    return used


def check_models(config, used: set[str]) -> None:
    """Every used model, and the aesthetic head, is on disk (a tiny one is built): ModelNotFound, one line,
    otherwise."""
    from kaleido.metrics.aesthetics import resolve_head
    from kaleido.vision import resolve_model

    for name in sorted(used):
        model_id = (config.section("models")[name].get("params") or {}).get("model_id")
        if model_id is not None:
            resolve_model(str(model_id), f"models.{name}.params.model_id")
    for name, node in config.section("metrics").items():
        head = (node.get("params") or {}).get("head")
        if head is not None:
            resolve_head(str(head), f"metrics.{name}.params.head")


def build_metrics(config, args: EvalArgs, used: set[str]) -> list:
    """Load the used models once, then build the metrics in config order."""
    from kaleido.curation.pipeline import model_node
    from sgm.util import instantiate_from_config

    models = {
        name: instantiate_from_config(
            model_node(name, config.section("models")[name], args), f"models.{name}", config.where
        )
        for name in sorted(used)
    }
    metrics = []
    for name, node in config.section("metrics").items():
        params = {
            key: models[value.split(".", 1)[1]] if isinstance(value, str) and value.startswith("models.") else value
            for key, value in (node.get("params") or {}).items()
        }
        metrics.append(instantiate_from_config({**node, "params": params}, f"metrics.{name}", config.where))
    return metrics


def check_videos(items: list[EvalItem], videos: Path, args: EvalArgs) -> dict[str, tuple[str, str]]:
    """Problems of the items' videos, by id: (status, one-line reason). A missing or unreadable video, or one whose
    size or length differs from args.video_size / args.video_frames (default: what most videos have)."""
    problems, infos = {}, {}
    for item in items:
        path = videos / f"{item.id}.mp4"
        if not path.is_file():
            problems[item.id] = ("missing_video", f"{path} not found")
            continue
        try:
            infos[item.id] = video_info(path)
        except VideoError as err:
            problems[item.id] = ("bad_video", str(err))
    if infos:
        common = Counter((i.height, i.width) for i in infos.values()).most_common(1)[0][0]
        size = tuple(args.video_size) if args.video_size else common
        length = args.video_frames or Counter(i.frames for i in infos.values()).most_common(1)[0][0]
        for identifier, info in infos.items():
            if (info.height, info.width) != size or info.frames != length:
                problems[identifier] = (
                    "bad_video",
                    f"{videos / f'{identifier}.mp4'} is {info.height}x{info.width}, {info.frames} frames; "
                    f"expected {size[0]}x{size[1]}, {length} frames (args.video_size, args.video_frames)",
                )
    return problems


def empty_record(item: EvalItem, video: Path, status: str, reason: str | None, names: list[str]) -> dict:
    record = {"id": item.id, "category": item.category, "video": str(video), "status": status}
    record |= {name: None for name in SCORE_NAMES}
    record["total"] = None
    record["reasons"] = {
        name: reason if reason is not None else "not in the config's metrics"
        for name in SCORE_NAMES
        if reason is not None or name not in names
    }
    record["seconds"] = {}
    return record


def score_item(item: EvalItem, video: Path, metrics: list, domain: str) -> dict:
    """Load the video and references, run every metric; a metric that cannot score leaves null and its reason."""
    names = [m.name for m in metrics]
    record = empty_record(item, video, "scored", None, names)
    sample = Sample(item, read_video(video), [files.load_reference(p) for p in item.references])
    for metric in metrics:
        start = time.perf_counter()
        try:
            record[metric.name] = float(metric.score(sample))
        except NotScored as reason:
            record["reasons"][metric.name] = str(reason)
        record["seconds"][metric.name] = round(time.perf_counter() - start, 4)
    record["total"], reason = totals.video_total(record, domain)
    record["total"] = None if record["total"] is None else 100 * record["total"]
    if reason:
        record["reasons"]["total"] = reason
    return record


def read_scores(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["id"]] = record
    return records


def is_complete(record: dict | None, names: list[str]) -> bool:
    """A record of an earlier run that has a value or a reason for every configured metric."""
    if not record or record.get("status") != "scored":
        return False
    return all(name in SCORE_NAMES and (record[name] is not None or name in record["reasons"]) for name in names)


def evaluate(
    config,
    args: EvalArgs,
    prompts: Path,
    videos: Path,
    out: Path,
    overwrite: bool = False,
    report: Callable[[str], None] = print,
) -> dict:
    """The whole run; returns the summary. Problems with videos are reported (one line each) and counted."""
    used = check_config(config, args)
    items = read_prompt_set(prompts, args.image_root)
    domain = domain_of(prompts) if args.domain == "auto" else args.domain
    check_models(config, used)
    problems = check_videos(items, videos, args)
    for identifier, (status, reason) in problems.items():
        report(f"{identifier}: {reason} (scored as {status.replace('_', ' ')})")
    names = list(config.section("metrics"))
    kept = {} if overwrite else read_scores(out / "scores.jsonl")
    records = {}
    for item in items:
        if item.id not in problems and is_complete(kept.get(item.id), names):
            records[item.id] = kept[item.id]
    todo = [item for item in items if item.id not in records and item.id not in problems]
    report(f"{len(items)} items: {len(records)} scored earlier, {len(todo)} to score, {len(problems)} without a video")
    metrics = build_metrics(config, args, used) if todo else []
    for item in items:
        if item.id in problems:
            status, reason = problems[item.id]
            records[item.id] = empty_record(item, videos / f"{item.id}.mp4", status, reason, names)
    for done, item in enumerate(todo, 1):
        video = videos / f"{item.id}.mp4"
        try:
            records[item.id] = score_item(item, video, metrics, domain)
        except VideoError as err:  # the header read but the frames do not decode
            report(f"{item.id}: {err} (scored as bad video)")
            records[item.id] = empty_record(item, video, "bad_video", str(err), names)
        write_scores(out, [records[i.id] for i in items if i.id in records])
        report(f"[{done}/{len(todo)}] {item.id}: total {_fmt(records[item.id]['total'])}")
    ordered = [records[item.id] for item in items]
    write_scores(out, ordered)
    summary = summarize(ordered, domain, names)
    files.write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    files.write_text(out / "summary.md", summary_markdown(summary))
    return summary


def write_scores(out: Path, records: list[dict]) -> None:
    files.write_text(out / "scores.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def group_summary(records: list[dict], domain: str, names: list[str]) -> dict:
    """Averages of one group of records: per metric its raw mean over the videos that have it and how many were
    null; OpenS2V's normalised metrics and Total (x 100, as published)."""
    scored = [r for r in records if r["status"] == "scored"]
    metrics = {}
    for name in names:
        values = [r[name] for r in scored if r[name] is not None]
        metrics[name] = {
            "mean": sum(values) / len(values) if values else None,
            "scored": len(values),
            "null": len(records) - len(values),
            "seconds_per_video": _mean([r["seconds"][name] for r in scored if name in r.get("seconds", {})]),
        }
    table = totals.table(scored, domain)
    return {
        "videos": len(records),
        "scored": len(scored),
        "missing_video": sum(r["status"] == "missing_video" for r in records),
        "bad_video": sum(r["status"] == "bad_video" for r in records),
        "metrics": metrics,
        "opens2v": {
            "total": None if table["total"] is None else 100 * table["total"],
            "partial": 100 * table["partial"],
            "normalised": {n: None if v is None else 100 * v for n, v in table["normalised"].items()},
            "counted": table["counted"],
            "lacking": table["lacking"],
        },
    }


def summarize(records: list[dict], domain: str, names: list[str]) -> dict:
    categories = sorted({r["category"] for r in records})
    groups = {"overall": group_summary(records, domain, names)}
    if len(categories) > 1:
        groups |= {c: group_summary([r for r in records if r["category"] == c], domain, names) for c in categories}
    return {
        "domain": domain,
        "metrics": names,
        "missing_videos": [r["id"] for r in records if r["status"] == "missing_video"],
        "bad_videos": [r["id"] for r in records if r["status"] == "bad_video"],
        "groups": groups,
    }


def summary_markdown(summary: dict) -> str:
    names = summary["metrics"]
    weights = list(totals.WEIGHTS[summary["domain"]])
    lines = [
        "# Evaluation summary",
        "",
        f"Domain: {summary['domain']} (the Total's weights). Raw means per metric over the videos that have it; "
        "'null' counts videos without a value (missing or bad video, metric not applicable). "
        "See docs/evaluation.md for how each number relates to published OpenS2V-Eval results.",
        "",
        "| group | videos | scored | missing | bad | " + " | ".join(names) + " |",
        "|---" * (5 + len(names)) + "|",
    ]
    for group, g in summary["groups"].items():
        cells = [f"{_fmt(g['metrics'][n]['mean'])} ({g['metrics'][n]['null']} null)" for n in names]
        row = [group, g["videos"], g["scored"], g["missing_video"], g["bad_video"], *cells]
        lines.append("| " + " | ".join(map(str, row)) + " |")
    lines += [
        "",
        "## OpenS2V-Eval normalisation (x 100, as published)",
        "",
        "| group | Total | " + " | ".join(weights) + " |",
        "|---" * (2 + len(weights)) + "|",
    ]
    for group, g in summary["groups"].items():
        o = g["opens2v"]
        total = (
            _fmt(o["total"], 2)
            if o["total"] is not None
            else f"- (lacks {', '.join(o['lacking'])}; {_fmt(o['partial'], 2)} without)"
        )
        lines.append("| " + " | ".join([group, total, *(_fmt(o["normalised"][n], 2) for n in weights)]) + " |")
    if summary["missing_videos"] or summary["bad_videos"]:
        lines += ["", f"Missing videos: {', '.join(summary['missing_videos']) or 'none'}."]
        lines += [f"Bad videos: {', '.join(summary['bad_videos']) or 'none'}."]
    return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
