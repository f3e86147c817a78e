"""Convert and inspect DiT checkpoints (docs/design/training.md: checkpoints; docs/design/model.md: weight layouts).

    python scripts/convert_checkpoint.py wan2sat <Wan2.1 shard folder | .safetensors> <SAT dir> [--iteration 1]
    python scripts/convert_checkpoint.py sat2wan <SAT dir | .pt | .safetensors> <Wan2.1 folder> [--max-shard-size 10GB]
    python scripts/convert_checkpoint.py to-safetensors <SAT dir | .pt> <out.safetensors> [--dtype bfloat16]
    python scripts/convert_checkpoint.py inspect <checkpoint | release folder> [--config model.yaml] [--json]
    python scripts/convert_checkpoint.py merge-lora <checkpoint> <adapter.safetensors> <out> [--scale 1.0]
        [--format sat|wan|safetensors]      the DiT with a LoRA adapter merged into its weights (docs/lora.md)

Nothing is written on error (exit status 2, one line `error: <path>: ...`); an existing output needs --overwrite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido import convert  # noqa: E402 (after the sys.path line)
from sgm.weights import group_key, unsafe_pickle_option  # noqa: E402 (after the sys.path line)

DEFAULT_CONFIG = "configs/video_model/dit_crossattn_14B_wanvae.yaml"


def one_line(message: str) -> str:
    """A multi-line report joined into one line ('3 missing keys: a; b')."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return "".join(line + (" " if line.endswith(":") else "; ") for line in lines).rstrip("; ")


def report_dropped(names: list[str], what: str) -> None:
    if names:
        groups = sorted({group_key(n) for n in names})
        print(f"dropped {len(names)} {what}: {', '.join(groups)}", file=sys.stderr)


def size_argument(text: str) -> int:
    try:
        return convert.parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def format_report(report: dict) -> str:
    title = f"[{report['part']}] " if "part" in report else ""
    if report.get("error"):
        return f"{title}{report['path']}: unreadable: {report['error']}"
    if report.get("part") == "tokenizer":
        return f"{title}{report['path']}: " + (
            "absent (no tokenizer files)" if report["absent"] else ", ".join(report["files"])
        )
    if report.get("absent"):
        return f"{title}absent ({report['path']} not found)"
    lines = [
        f"{title}{report['path']}",
        f"  format: {report['format']}" + (f", iteration {report['iteration']}" if "iteration" in report else ""),
        f"  kind: {report['kind']}" + (f", layout {report['layout']}" if "layout" in report else ""),
        f"  keys: {report['keys']:,}",
        f"  parameters: {report['parameters']:,}",
        "  dtypes: " + ", ".join(f"{k} × {v}" for k, v in report["dtypes"].items()),
        f"  looks like: {report['looks_like']}",
    ]
    if report.get("ignored_other_components"):
        lines.append(f"  ignored: {report['ignored_other_components']} tensors of other components (conditioner.*)")
    if "matches" in report:
        against = f"the DiT of {report['config']}" if report["kind"] == "DiT" else "the module these sizes build"
        lines.append(
            f"  vs {against}: " + ("matches (same keys and shapes)" if report["matches"] else "does not match")
        )
        if report.get("architecture_differences"):
            lines.append(f"    {report['architecture_differences']}")
        lines += [f"    {line}" for line in report.get("problems", "").splitlines()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    wan2sat = commands.add_parser("wan2sat", help="Wan2.1 (or diffusers) DiT safetensors -> SAT directory")
    wan2sat.add_argument("--iteration", default="1", help="iteration folder and `latest` content (default 1)")
    sat2wan = commands.add_parser("sat2wan", help="any DiT checkpoint -> Wan2.1 sharded safetensors + config.json")
    sat2wan.add_argument(
        "--max-shard-size", default="10GB", type=size_argument, help="per shard, e.g. 10GB, 5GiB (default 10GB)"
    )
    sat2wan.add_argument("--num-heads", type=int, help="config.json num_heads (default hidden size // 128)")
    to_st = commands.add_parser("to-safetensors", help="SAT checkpoint -> one safetensors file (SAT names) + .json")
    to_st.add_argument(
        "--dtype", choices=("bfloat16", "float16", "float32"), help="cast the weights (default: keep their dtype)"
    )
    merge = commands.add_parser("merge-lora", help="a DiT checkpoint with a LoRA adapter merged in")
    merge.add_argument("input")
    merge.add_argument("adapter", help="LoRA safetensors (our layout or the Wan ecosystem's)")
    merge.add_argument("--scale", type=float, default=1.0, help="the adapter's strength (default 1)")
    merge.add_argument("--format", choices=("sat", "wan", "safetensors"), default="sat", help="output (default sat)")
    merge.add_argument("--skip-unknown", action="store_true", help="skip adapter keys that are no LoRA of the DiT")
    for sub in (wan2sat, sat2wan, to_st, merge):
        if sub is not merge:
            sub.add_argument("input")
        sub.add_argument("output")
        sub.add_argument("--ignore-unused", action="store_true", help="drop (and report) tensors outside the DiT")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing output")
    inspect = commands.add_parser("inspect", help="report keys, sizes, dtypes and the fit to a model config")
    inspect.add_argument("path")
    inspect.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"model YAML of the DiT to compare with ({DEFAULT_CONFIG})"
    )
    inspect.add_argument("--json", action="store_true", help="print the reports as JSON")
    for sub in (sat2wan, to_st, inspect, merge):
        sub.add_argument(
            "--allow-unsafe-pickle", action="store_true", help="full unpickling of torch files (trusted files only)"
        )
    cli = parser.parse_args(argv)
    with unsafe_pickle_option("--allow-unsafe-pickle"):  # refusals name this tool's flag
        return run(cli)


def run(cli: argparse.Namespace) -> int:
    try:
        if cli.command == "wan2sat":
            report_dropped(
                convert.wan_to_sat(cli.input, cli.output, cli.iteration, cli.ignore_unused, cli.overwrite),
                "tensors outside the T2V DiT",
            )
            print(f"wrote {cli.output}")
        elif cli.command == "sat2wan":
            shards = convert.sat_to_wan(
                cli.input,
                cli.output,
                cli.max_shard_size,
                cli.num_heads,
                cli.ignore_unused,
                cli.overwrite,
                cli.allow_unsafe_pickle,
            )
            print(f"wrote {cli.output} ({len(shards)} shard{'s' if len(shards) > 1 else ''} + config.json)")
        elif cli.command == "to-safetensors":
            dtype = getattr(torch, cli.dtype) if cli.dtype else None
            dropped = convert.sat_to_safetensors(
                cli.input, cli.output, cli.ignore_unused, cli.overwrite, cli.allow_unsafe_pickle, dtype
            )
            report_dropped(dropped, "client-state entries that are not JSON (RNG states)")
            print(f"wrote {cli.output} and {cli.output}.json")
        elif cli.command == "merge-lora":
            convert.merge_lora(
                cli.input,
                cli.adapter,
                cli.output,
                cli.scale,
                cli.format,
                cli.ignore_unused,
                cli.overwrite,
                cli.allow_unsafe_pickle,
                cli.skip_unknown,
            )
            print(f"wrote {cli.output} ({cli.format}, {cli.adapter} merged at {cli.scale})")
        else:
            config = Path(cli.config)
            if not config.is_file() and not config.is_absolute() and (REPO / config).is_file():
                config = REPO / config  # the default works from any working directory
            reports = convert.inspect_path(cli.path, config, cli.allow_unsafe_pickle)
            for report in reports:
                report["config"] = cli.config
            print(json.dumps(reports, indent=2, default=str) if cli.json else "\n".join(map(format_report, reports)))
            return 2 if any(r.get("error") for r in reports) else 0
    except OSError as err:  # FileExistsError of an existing output carries its own message
        print(f"error: {one_line(f'{err.filename}: {err.strerror}' if err.filename else str(err))}", file=sys.stderr)
        return 2
    except ValueError as err:  # WeightsError, ConvertError, ConfigError: the message starts with the path
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
