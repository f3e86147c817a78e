"""The R-RoPE ablation (docs/ablation.md): train the toy DiT once per reference placement and seed on the same cached
world with the same budget, measure each the same way, and collect the table and a contact sheet.

    python scripts/run_ablation.py --out runs/ablation [--variants a_released b_no_spatial_offset ...]
        [--seeds a_released=1,2 b_no_spatial_offset=1,2] [--iters 1500] [--prompts 120] [--level simple]
        [--collect-only]

Per run, in order (each variant's first seed before any second seed): `train_video_concat.py --base
configs/video_model/dit_crossattn_toy.yaml configs/training/train_toy.yaml configs/ablation/<variant>.yaml
args.seed=<seed> args.train_iters=<iters> args.save=OUT/<variant>_s<seed>/train`, `scripts/convert_checkpoint.py
to-safetensors` to OUT/<variant>_s<seed>/dit.safetensors, `scripts/probe_references.py` (the reference gain) on a
held-out set made once (OUT/probe_data: `make_toyworld.py --split eval`, 96 clips of held-out toys at the level, and
its latent cache OUT/probe_cache), `scripts/evaluate_toyworld.py --level <level>` into OUT/<variant>_s<seed>/eval,
and the run's row of the contact sheet, OUT/previews/<variant>_s<seed>.png (the frames of the evaluation set's
first SHEET_PROMPTS prompts). After every run OUT/results.json, table.md, ablation.png and contact_sheet.png are
rewritten, so a sweep stopped anywhere leaves every finished run measured in full.
Everything resumes: a training from its `latest`, an evaluation from its finished videos, and finished steps (their
output exists; every one is written under a temporary name and renamed) are skipped. A run that OUT/results.json
already records in full (gain and sampled metrics) and whose preview row exists is skipped without its folder: copy
the committed results.json and previews/ into a new OUT to go on with a sweep on another machine, whose weights are
gone. `--collect-only` rewrites the collected files from what is there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido import files  # noqa: E402 (after the sys.path line)
from kaleido.files import atomic_path  # noqa: E402
from kaleido.toyworld.evaluate import METRICS, RECALL_BY_COUNT, bootstrap, load_eval_set  # noqa: E402
from kaleido.toyworld.world import LEVELS  # noqa: E402
from kaleido.toyworld.writer import read_video  # noqa: E402
from scripts.evaluate_toyworld import video_of  # noqa: E402

MODEL = "configs/video_model/dit_crossattn_toy.yaml"
TRAIN = "configs/training/train_toy.yaml"
SAMPLE = "configs/sampling/sample_toy.yaml"
VARIANTS = ("a_released", "b_no_spatial_offset", "c_time_only", "d_shared_time", "e_no_position")
PROBE_SAMPLES = 96
DEFAULT_SEEDS = {"a_released": (1, 2), "b_no_spatial_offset": (1, 2)}
SHEET_PROMPTS = 3  # the contact sheet shows the evaluation set's prompts 0, 1, 2: 1, 2 and 3 references
SHEET_FRAMES = 5  # frames per prompt in the contact sheet, first and last included
BLOCK_GAP = 12  # pixels of separator between the prompts' blocks of a contact-sheet row
LABEL_WIDTH = 170  # pixels of the contact sheet's label column (the run's name)


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / f"{variant}_s{seed}"


def step(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def probe_set(out: Path, level: str) -> tuple[Path, Path]:
    """The held-out clips (OUT/probe_data) and their latent cache (OUT/probe_cache), made once."""
    data, cache = out / "probe_data", out / "probe_cache"
    python = sys.executable
    if not data.is_dir():
        command = [python, "scripts/make_toyworld.py", str(data), "--samples", str(PROBE_SAMPLES), "--seed", "5"]
        step([*command, "--split", "eval", "--level", level])
    if not cache.is_dir():
        step(
            [
                python,
                "scripts/cache_latents.py",
                "--base",
                MODEL,
                TRAIN,
                f"args.train_data=[{data}]",
                "--out",
                str(cache),
            ]
        )
    return data, cache


def train_and_probe(out: Path, variant: str, seed: int, iters: int, probe: tuple[Path, Path]) -> None:
    folder = run_dir(out, variant, seed)
    overlay = f"configs/ablation/{variant}.yaml"
    python = sys.executable
    weights = folder / "dit.safetensors"
    if not weights.is_file():
        step(
            [
                python,
                "train_video_concat.py",
                "--base",
                MODEL,
                TRAIN,
                overlay,
                f"args.seed={seed}",
                f"args.train_iters={iters}",
                f"args.save={folder / 'train'}",
            ]
        )
        step([python, "scripts/convert_checkpoint.py", "to-safetensors", str(folder / "train"), str(weights)])
    if not (folder / "reference_gain.json").is_file():
        data, cache = probe
        command = [python, "scripts/probe_references.py", "--base", MODEL, overlay, "--weights", str(weights)]
        step([*command, "--cache", str(cache), "--data", str(data), "--out", str(folder / "reference_gain.json")])


def evaluate(out: Path, variant: str, seed: int, prompts: int, level: str) -> None:
    folder = run_dir(out, variant, seed)
    if (folder / "eval" / "summary.json").is_file():
        return
    step(
        [
            sys.executable,
            "scripts/evaluate_toyworld.py",
            "--base",
            MODEL,
            f"configs/ablation/{variant}.yaml",
            SAMPLE,
            "--out",
            str(folder / "eval"),
            "--prompts",
            str(prompts),
            "--level",
            level,
            f"args.load={folder / 'dit.safetensors'}",
        ]
    )


def sheet_row(blocks: list[list[np.ndarray]], height: int, width: int) -> np.ndarray:
    """One row of the contact sheet: SHEET_PROMPTS blocks of SHEET_FRAMES tiles (H, W, 3) uint8 each, left to right,
    SHEET_GAP grey between tiles and BLOCK_GAP between blocks; a block with fewer tiles is grey at the end."""
    gap = files.SHEET_GAP
    block_w = SHEET_FRAMES * (width + gap)
    row = np.empty((height + 2 * gap, SHEET_PROMPTS * block_w + (SHEET_PROMPTS - 1) * BLOCK_GAP + gap, 3), np.uint8)
    row[:] = files.SHEET_SEPARATOR
    for b, tiles in enumerate(blocks):
        for j, tile in enumerate(tiles):
            x = gap + b * (block_w + BLOCK_GAP) + j * (width + gap)
            row[gap : gap + height, x : x + width] = tile
    return row


def preview(out: Path, variant: str, seed: int) -> None:
    """OUT/previews/<run>.png: SHEET_FRAMES frames of each of the first SHEET_PROMPTS evaluation videos, one row;
    and, once, OUT/previews/references.png: those prompts' references, letterboxed as the sampler does, in the
    same geometry. Both are kept across machines with results.json (the sheet is composed from them)."""
    folder = run_dir(out, variant, seed) / "eval"
    target, references = out / "previews" / f"{variant}_s{seed}.png", out / "previews" / "references.png"
    if target.is_file() and references.is_file():
        return
    blocks = []
    for index in range(SHEET_PROMPTS):
        frames = read_video(video_of(folder / "videos", index))
        blocks.append([frames[i] for i in files.frame_indices(len(frames), SHEET_FRAMES)])
    height, width = blocks[0][0].shape[:2]
    target.parent.mkdir(parents=True, exist_ok=True)
    files.write_png(target, Image.fromarray(sheet_row(blocks, height, width)))
    if not references.is_file():
        records = load_eval_set(folder / "set")["prompts"][:SHEET_PROMPTS]
        blocks = [
            [np.asarray(files.letterbox(files.load_reference(REPO / name), height, width)) for name in r["references"]]
            for r in records
        ]
        files.write_png(references, Image.fromarray(sheet_row(blocks, height, width)))


def contact_sheet(out: Path, results: dict) -> None:
    """OUT/contact_sheet.png: the references' row, then one row per run with a preview (label at the left)."""
    folder = out / "previews"
    names = [f"{v}_s{s}" for v in VARIANTS for s in sorted(results.get(v, {}), key=int)]
    rows = [("references", folder / "references.png")] + [(n, folder / f"{n}.png") for n in names]
    rows = [(label, np.asarray(Image.open(path).convert("RGB"))) for label, path in rows if path.is_file()]
    if len(rows) < 2:
        return
    label_w = LABEL_WIDTH
    canvas = Image.new("RGB", (label_w + max(r.shape[1] for _, r in rows), sum(r.shape[0] for _, r in rows)), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, row in rows:
        canvas.paste(Image.fromarray(row), (label_w, y))
        draw.text((6, y + row.shape[0] // 2 - 6), label, fill=(0, 0, 0))
        y += row.shape[0]
    files.write_png(out / "contact_sheet.png", canvas)


def recorded_in_full(entry: dict) -> bool:
    """A run's results.json entry holds both the reference gain and the sampled metrics."""
    return "reference_gain" in entry and all(name in entry for name in METRICS)


def collect(out: Path) -> dict:
    """{variant: {seed: {metric: summary, ..., "reference_gain": {"sigma=<σ>": ...}}}}: OUT/results.json as it was
    (runs measured on another machine), updated with what the run folders hold now."""
    previous = out / "results.json"
    results: dict = json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else {}
    for folder in sorted(p for p in out.glob("*_s*") if p.is_dir()):
        variant, _, seed = folder.name.rpartition("_s")
        entry = {}
        if (folder / "eval" / "summary.json").is_file():
            entry.update(json.loads((folder / "eval" / "summary.json").read_text())["metrics"])
        if (folder / "reference_gain.json").is_file():
            entry["reference_gain"] = json.loads((folder / "reference_gain.json").read_text())["gain"]
        if entry:
            results.setdefault(variant, {}).setdefault(seed, {}).update(entry)
    write_atomically(out / "results.json", json.dumps(results, indent=1) + "\n")
    if results:
        write_atomically(out / "table.md", table(results))
        plot(results, out / "ablation.png")
        contact_sheet(out, results)
    return results


def write_atomically(path: Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")


# The table's rows: (label, how to read one run's entry given the baseline run's), each a (mean, low, high) or
# None when not measured.
BASELINE = ("a_released", "1")


def _gain(sigma: str, region: str):
    def read(entry: dict, baseline: dict):
        value = entry.get("reference_gain", {}).get(f"sigma={sigma}", {}).get(region)
        return None if value is None else (value["gain"], value["low"], value["high"])

    return read


def _loss_change(sigma: str, region: str):
    """The held-out loss with own references minus the baseline run's, clip by clip (the probe gives every run the
    same noised latents), with a bootstrap interval over clips."""

    def read(entry: dict, baseline: dict):
        losses = [
            e.get("reference_gain", {}).get(f"sigma={sigma}", {}).get(region, {}).get("own_losses")
            for e in (entry, baseline)
        ]
        if None in losses or len(losses[0]) != len(losses[1]):
            return None
        change = bootstrap([a - b for a, b in zip(*losses)])
        return change["mean"], change["low"], change["high"]

    return read


def _metric(name: str):
    def read(entry: dict, baseline: dict):
        value = entry.get(name)
        return None if value is None or value.get("mean") is None else (value["mean"], value["low"], value["high"])

    return read


ROWS = (
    ("reference gain, subjects, σ 0.8", _gain("0.8", "subjects")),
    ("reference gain, subjects, σ 0.5", _gain("0.5", "subjects")),
    ("reference gain, whole latent, σ 0.8", _gain("0.8", "all")),
    (f"held-out loss − {BASELINE[0]} s{BASELINE[1]}'s, whole latent, σ 0.8", _loss_change("0.8", "all")),
    (f"held-out loss − {BASELINE[0]} s{BASELINE[1]}'s, whole latent, σ 0.5", _loss_change("0.5", "all")),
    *((name.replace("_", " "), _metric(name)) for name in METRICS),
    # recall falls with the number of references for the shipped model: show it per count
    *(
        (f"reference recall, prompts with {n} reference{'s' * (n > 1)}", _metric(key))
        for n, key in RECALL_BY_COUNT.items()
    ),
)


def table(results: dict) -> str:
    """Markdown: a row per measurement, a column per variant and seed, 'mean [low, high]'."""
    columns = [(variant, seed) for variant in VARIANTS if variant in results for seed in sorted(results[variant])]
    baseline = results.get(BASELINE[0], {}).get(BASELINE[1], {})
    lines = [
        "| measurement | " + " | ".join(f"{variant} s{seed}" for variant, seed in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for label, read in ROWS:
        cells = []
        for variant, seed in columns:
            value = read(results[variant][seed], baseline)
            cells.append("–" if value is None else f"{value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]")
        if any(cell != "–" for cell in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Per run, with its interval: the reference gain on the subjects (σ 0.8 and 0.5), the held-out loss against the
    baseline run's (σ 0.8 and 0.5, whole latent), and the detector's recall when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(variant, seed) for variant in VARIANTS if variant in results for seed in sorted(results[variant])]
    baseline = results.get(BASELINE[0], {}).get(BASELINE[1], {})
    sigmas = ("0.8", "0.5")
    panels = [
        ("reference gain on the subjects", [(f"σ {s}", _gain(s, "subjects")) for s in sigmas]),
        (f"held-out loss − {BASELINE[0][0]} s{BASELINE[1]}'s", [(f"σ {s}", _loss_change(s, "all")) for s in sigmas]),
        ("reference recall (detector)", [("", _metric("reference_recall"))]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(16, 4))
    for axis, (title, reads) in zip(axes, panels):
        for k, (label, read) in enumerate(reads):
            values = [(x, read(results[v][seed], baseline)) for x, (v, seed) in enumerate(columns)]
            values = [(x, value) for x, value in values if value is not None]
            for n, (x, (mean, low, high)) in enumerate(values):
                axis.errorbar(
                    x + 0.15 * k,
                    mean,
                    yerr=[[mean - low], [high - mean]],
                    fmt="o",
                    color=f"C{k}",
                    capsize=3,
                    label=label if n == 0 and label else None,
                )
        axis.set_xticks(range(len(columns)), [f"{v.split('_')[0]} s{s}" for v, s in columns])
        axis.set_title(title)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[1]:
            axis.legend()
    figure.suptitle("R-RoPE ablation on the toy world (95 % bootstrap intervals)")
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, dpi=110)
    plt.close(figure)


def parse_seeds(items: list[str]) -> dict[str, tuple[int, ...]]:
    seeds = dict(DEFAULT_SEEDS)
    for item in items:
        variant, _, values = item.partition("=")
        if variant not in VARIANTS or not values:
            raise ValueError(
                f"--seeds {item}: expected <variant>=<seed>[,<seed>...] with a variant of {list(VARIANTS)}"
            )
        seeds[variant] = tuple(int(v) for v in values.split(","))
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", default=[], help="<variant>=<seed>,...; default 1,2 for a and b, else 1")
    parser.add_argument("--iters", type=int, default=1500, help="optimizer steps per run (the same for every run)")
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--level", choices=tuple(LEVELS), default="simple", help="the world's level of the data")
    parser.add_argument("--collect-only", action="store_true")
    cli = parser.parse_args(argv)
    try:
        seeds = parse_seeds(cli.seeds)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # every variant's first seed before any second one: a partial sweep already covers every variant
    ordered = [(rank, variant, seed) for variant in cli.variants for rank, seed in enumerate(seeds.get(variant, (1,)))]
    runs = [(variant, seed) for _, variant, seed in sorted(ordered, key=lambda run: run[0])]
    if not cli.collect_only:
        recorded = collect(cli.out)
        for variant, seed in runs:
            done = recorded_in_full(recorded.get(variant, {}).get(str(seed), {}))
            if done and (cli.out / "previews" / f"{variant}_s{seed}.png").is_file():
                continue
            train_and_probe(cli.out, variant, seed, cli.iters, probe_set(cli.out, cli.level))
            evaluate(cli.out, variant, seed, cli.prompts, cli.level)
            preview(cli.out, variant, seed)
            recorded = collect(cli.out)
    results = collect(cli.out)
    print(json.dumps({v: sorted(s) for v, s in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
