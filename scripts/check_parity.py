"""Check this project's numerics against golden parity data produced by the official code.

    python scripts/check_parity.py --golden ../shared/golden [--case dit --case vae]

Reads `manifest.json` (format 'golden parity data v1'): every case names its files, its configs (DiT config,
sampler configs, VAE and umT5 constructor arguments, loss config, shapes), and the tensors of its files are found by
their names (e.g. `out_<n>ref` with `subjects_<n>ref`, `sigmas_<steps>`, `toy_out_<steps>`). Each case is rebuilt
from that description, run with this project's code in float32, and compared. Prints one row per comparison:
name, max abs diff (or max relative diff), tolerance, PASS/FAIL. Exit status 1 if any row fails or a case cannot
be checked. Tolerances are those of the golden README (float32).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaleido.dit import KaleidoDiT  # noqa: E402
from kaleido.keymap import to_ours  # noqa: E402
from kaleido.official import dit_kwargs_from_official  # noqa: E402
from kaleido.rope import ReferencePlacement, Rotary, axis_dims, inverse_frequencies, rope_cos_sin, token_positions  # noqa: E402
from sgm.guiders import VanillaCFG  # noqa: E402
from sgm.loss import RFLoss  # noqa: E402
from sgm.sampling import RFEulerSampler, rf_denoiser  # noqa: E402
from sgm.schedules import resolution_shift_mu, shift_sigma_exp  # noqa: E402
from sgm.umt5 import UMT5Encoder, relative_position_bucket  # noqa: E402
from sgm.vae import WAN_LATENT_MEAN, WAN_LATENT_STD, WanVAE  # noqa: E402
from sgm.weights import load_state_dict_strict  # noqa: E402

# Golden README tolerances (float32, max abs diff unless marked relative).
TOLERANCE = {
    "dit": 2e-5,
    "rope": 1e-6,
    "rope_positions": 0.0,
    "sigmas": 0.0,
    "timesteps_fed": 1e-4,
    "toy_sampler": 5e-5,
    "dit_sampling": 1e-4,
    "loss_sigma": 1e-6,
    "loss_tensor": 2e-5,
    "loss_value_relative": 1e-5,
    "vae_encode": 5e-6,
    "vae_decode": 5e-5,
    "vae_constants": 0.0,
    "umt5": 5e-6,
    "umt5_buckets": 0.0,
}


@dataclass
class Row:
    case: str
    name: str
    diff: float
    tolerance: float
    relative: bool = False
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.diff <= self.tolerance


class TrackedTensors(dict):
    """A dict of tensors that remembers which names were read (to report the ones no check looked at)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> torch.Tensor:
        self.read.add(name)
        return super().__getitem__(name)


class Golden:
    """A golden folder: manifest plus lazily loaded tensor files."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest_file = self.folder / "manifest.json"
        if not manifest_file.is_file():
            raise FileNotFoundError(f"{manifest_file}: not found (--golden must be a folder with manifest.json)")
        self.manifest = json.loads(manifest_file.read_text())
        if not str(self.manifest.get("format", "")).startswith("golden parity data v1"):
            raise ValueError(f"{manifest_file}: unsupported format {self.manifest.get('format')!r}")
        self._files: dict[str, TrackedTensors] = {}
        self._views: dict[str, list[TrackedTensors]] = {}

    def file(self, name: str) -> TrackedTensors:
        if name not in self._files:
            self._files[name] = TrackedTensors(load_file(str(self.folder / name)))
        return self._files[name]

    def case_tensors(self, case: str, weights: bool = False) -> dict[str, torch.Tensor]:
        """All tensors of a case's data files (weights files excluded unless `weights`)."""
        out = {}
        for name in self.manifest["cases"][case]["files"]:
            if ("weights" in name) == weights:
                out.update(dict.items(self.file(name)))
        return out if weights else self._tracked_view(out, case)

    def _tracked_view(self, tensors: dict, case: str) -> TrackedTensors:
        view = TrackedTensors(tensors)
        self._views.setdefault(case, []).append(view)
        return view

    def unread(self, case: str) -> list[str]:
        """Tensor names of a case's data files that no comparison or input read."""
        views = self._views.get(case, [])
        names = set().union(*(v.keys() for v in views))
        read = set().union(*(v.read for v in views))
        return sorted(names - read)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def max_relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-30)).max().item()


def build_golden_dit(golden: Golden, dtype: str = "float32") -> KaleidoDiT:
    """The tiny DiT of case `dit` with its weights (also used by the sampler and loss cases)."""
    case = golden.manifest["cases"]["dit"]
    model = KaleidoDiT(**dit_kwargs_from_official(case["config"]["params"], dtype)).eval()
    load_state_dict_strict(model, to_ours(golden.case_tensors("dit", weights=True)), "golden dit weights")
    return model


# ---------------------------------------------------------------------------------------------------------------
# Cases


def check_dit(golden: Golden) -> list[Row]:
    model = build_golden_dit(golden)
    io = golden.case_tensors("dit")
    rows = []
    with torch.no_grad():
        for name in sorted(io):
            if m := re.fullmatch(r"out_(\d+)ref", name):
                n = int(m.group(1))
                refs = io[f"subjects_{n}ref"] if n else None
                out = model(io["x"], io["timesteps"], io["context"], refs)
                rows.append(Row("dit", name, max_diff(out, io[name]), TOLERANCE["dit"]))
        # Intermediates `<case letter><n>ref_<what>` of one forward with n references.
        groups: dict[int, list[str]] = {}
        for name in io:
            if m := re.fullmatch(r"[a-z](\d+)ref_(.+)", name):
                groups.setdefault(int(m.group(1)), []).append(name)
        for n, names in sorted(groups.items()):
            captured = capture_intermediates(
                model, io["x"], io["timesteps"], io["context"], io[f"subjects_{n}ref"] if n else None
            )
            for name in sorted(names):
                what = name.split("ref_", 1)[1]
                if what not in captured:
                    rows.append(Row("dit", name, float("inf"), TOLERANCE["dit"], note="intermediate not captured"))
                    continue
                rows.append(Row("dit", name, max_diff(captured[what], io[name]), TOLERANCE["dit"]))
    return rows


def capture_intermediates(model: KaleidoDiT, x, timesteps, context, refs) -> dict[str, torch.Tensor]:
    """Named intermediates in the official layouts: tokens (B, L, D), heads (B, heads, L, head_dim)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = []

    def output_of(module, name, transform=lambda t: t):
        hooks.append(module.register_forward_hook(lambda mod, args, out: captured.__setitem__(name, transform(out))))

    hooks.append(
        model.time_embedding.register_forward_hook(
            lambda mod, args, out: captured.__setitem__("timestep_sinusoid", args[0])
        )
    )
    output_of(model.time_embedding, "time_embed_out")
    output_of(model.time_projection, "adaln_projection_out")
    output_of(model.text_embedding, "text_embedding_out")
    output_of(model.patch_embedding, "patch_embed_out", lambda t: t.flatten(2).transpose(1, 2))
    for i, block in enumerate(model.blocks):
        output_of(block, f"layer{i}_out")

        def attention_inputs(mod, args, out, i=i):
            captured[f"layer{i}_selfattn_q_roped"] = args[0].transpose(1, 2)
            captured[f"layer{i}_selfattn_k_roped"] = args[1].transpose(1, 2)

        hooks.append(block.self_attn.attend.register_forward_hook(attention_inputs))
    try:
        model(x, timesteps, context, refs)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def check_rope(golden: Golden) -> list[Row]:
    details = golden.manifest["cases"]["rope"]["details"]
    data = golden.case_tensors("rope")
    rows = []
    for config, entry in details.items():
        if not isinstance(entry, dict) or "args" not in entry:
            continue  # notes
        args = entry["args"]
        placement = ReferencePlacement(max_h=args["max_hw"], max_w=args["max_hw"])
        positions = token_positions(args["n_subj"], args["T"], (args["Hh"], args["Ww"]), placement)
        rows.append(
            Row(
                "rope", f"{config}_pos_thw", max_diff(positions, data[f"{config}_pos_thw"]), TOLERANCE["rope_positions"]
            )
        )
        for axis, dim in zip("thw", axis_dims(args["head_dim"])):
            name = f"{config}_inv_freq_{axis}"
            rows.append(Row("rope", name, max_diff(inverse_frequencies(dim), data[name]), TOLERANCE["rope"]))
        cos, sin = rope_cos_sin(positions, args["head_dim"])
        rows.append(Row("rope", f"{config}_cos", max_diff(cos, data[f"{config}_cos"]), TOLERANCE["rope"]))
        rows.append(Row("rope", f"{config}_sin", max_diff(sin, data[f"{config}_sin"]), TOLERANCE["rope"]))
        q = data[f"{config}_q"].transpose(1, 2)  # official (1, heads, L, d) -> ours (1, L, heads, d)
        rotated = Rotary(cos, sin)(q).transpose(1, 2)
        rows.append(Row("rope", f"{config}_q_rope", max_diff(rotated, data[f"{config}_q_rope"]), TOLERANCE["rope"]))
    return rows


def toy_network(x, timesteps, context, references):
    """The documented golden toy velocity (manifest sampler.loop.toy_network)."""
    per_sample = lambda v: v[:, None, None, None, None]
    return (
        -0.9 * x
        + 0.25 * per_sample(timesteps / 1000)
        + per_sample(context.mean(dim=(1, 2)))
        + 0.5 * references.mean(1, keepdim=True)
    )


def sampler_from_official(params: dict) -> RFEulerSampler:
    guider = params.get("guider_config", {}).get("params", {})
    return RFEulerSampler(
        num_steps=params["num_steps"],
        shift=float(params.get("shift_scale", 7.0)),
        guider=VanillaCFG(float(guider.get("scale", 6.0))),
        progress=False,
    )


def run_sampler(sampler, network, noise, cond_context, uncond_context, references):
    trajectory = []
    out = sampler(
        rf_denoiser(network),
        noise,
        {"context": cond_context, "references": references},
        {"context": uncond_context, "references": references},
        callback=lambda i, x: trajectory.append(x),
    )
    return out, torch.stack(trajectory)


def check_sampler(golden: Golden) -> list[Row]:
    case = golden.manifest["cases"]["sampler"]
    data = golden.case_tensors("sampler")
    samplers = {int(steps): sampler_from_official(config["params"]) for steps, config in case["config"].items()}
    rows = []
    for name in sorted(data):
        if m := re.fullmatch(r"sigmas_(\d+)", name):
            sigmas = samplers[int(m.group(1))].sigmas()
            rows.append(Row("sampler", name, max_diff(sigmas, data[name]), TOLERANCE["sigmas"]))
        elif m := re.fullmatch(r"timesteps_fed_(\d+)", name):
            rows.append(
                Row(
                    "sampler",
                    name,
                    max_diff(samplers[int(m.group(1))].sigmas()[:-1] * 1000, data[name]),
                    TOLERANCE["timesteps_fed"],
                )
            )
    dit = None
    for prefix, tolerance in (("toy", TOLERANCE["toy_sampler"]), ("dit", TOLERANCE["dit_sampling"])):
        if f"{prefix}_noise" not in data:
            continue
        if prefix == "dit":
            dit = build_golden_dit(golden)
        network = toy_network if prefix == "toy" else dit
        for name in sorted(data):
            m = re.fullmatch(rf"{prefix}_out_(\d+)(?:_uc_len(\d+))?", name)
            if not m:
                continue
            steps = int(m.group(1))
            uncond = data[f"{prefix}_uc_crossattn"]
            if m.group(2):
                uncond = uncond[:, : int(m.group(2))]
            with torch.no_grad():
                out, trajectory = run_sampler(
                    samplers[steps],
                    network,
                    data[f"{prefix}_noise"],
                    data[f"{prefix}_cond_crossattn"],
                    uncond,
                    data[f"{prefix}_concat_subjects"],
                )
            rows.append(Row("sampler", name, max_diff(out, data[name]), tolerance))
            traj_name = f"{prefix}_traj_{steps}"
            if not m.group(2) and traj_name in data:
                rows.append(Row("sampler", traj_name, max_diff(trajectory, data[traj_name]), tolerance))
    return rows


def check_loss(golden: Golden) -> list[Row]:
    case = golden.manifest["cases"]["loss"]
    data = golden.case_tensors("loss")
    params = case["config"]["params"]
    sigma_params = params.get("sigma_sampler_config", {}).get("params", {})
    loss = RFLoss(
        p_mean=sigma_params.get("p_mean", 0.0),
        p_std=sigma_params.get("p_std", 1.0),
        schedule_shift=params.get("schedule_shift", True),
    )
    rows = [
        Row(
            "loss",
            "map_sigma_raw",
            max_diff(torch.sigmoid(data["map_z"]), data["map_sigma_raw"]),
            TOLERANCE["loss_sigma"],
        )
    ]
    for shape, entry in case["shift_mu_by_shape"].items():
        name = f"map_sigma_shifted_{shape}"
        shifted = shift_sigma_exp(data["map_sigma_raw"], resolution_shift_mu(*entry["latent_hw"]))
        rows.append(Row("loss", name, max_diff(shifted, data[name]), TOLERANCE["loss_sigma"]))
    model = build_golden_dit(golden)
    with torch.no_grad():
        out = loss(
            model,
            data["x0"],
            {"context": data["crossattn"], "references": data["concat_subjects"]},
            sigma_raw=data["sigma_raw"],
            noise=data["noise"],
        )
    compare = [
        ("sigma", out["sigma"], "loss_sigma"),
        ("timesteps_fed", out["sigma"] * 1000, "timesteps_fed"),
        ("noised_input", out["noised_input"], "loss_tensor"),
        ("model_output", out["prediction"], "loss_tensor"),
        ("target", out["target"], "loss_tensor"),
    ]
    rows += [Row("loss", name, max_diff(value, data[name]), TOLERANCE[kind]) for name, value, kind in compare]
    rows.append(
        Row(
            "loss",
            "loss_per_sample",
            max_relative_diff(out["loss"], data["loss_per_sample"]),
            TOLERANCE["loss_value_relative"],
            relative=True,
        )
    )
    rows.append(
        Row(
            "loss",
            "loss_mean",
            max_relative_diff(out["loss"].mean(), data["loss_mean"]),
            TOLERANCE["loss_value_relative"],
            relative=True,
        )
    )
    return rows


def check_vae(golden: Golden) -> list[Row]:
    case = golden.manifest["cases"]["vae"]
    args = dict(case["constructor_args_WanVAE_"])
    args["temporal_downsample"] = args.pop("temperal_downsample")  # the official spelling
    vae = WanVAE(**args, dtype="float32", norm_constants="float32", norm_math="float32").eval()
    vae.load_wan_state_dict(golden.case_tensors("vae", weights=True), source="golden vae weights")
    data = golden.case_tensors("vae")
    with torch.no_grad():
        results = [
            ("z_video", vae.encode(data["video"]), "vae_encode"),
            ("z_image", vae.encode(data["image"]), "vae_encode"),
            ("mu_video_raw", vae.encode(data["video"], normalize=False), "vae_encode"),
            ("x_decoded", vae.decode(data["latent_in"]), "vae_decode"),
            ("latent_mean", torch.tensor(WAN_LATENT_MEAN), "vae_constants"),
            ("latent_std", torch.tensor(WAN_LATENT_STD), "vae_constants"),
        ]
    return [
        Row("vae", name, max_diff(value, data[name]), TOLERANCE[kind]) for name, value, kind in results if name in data
    ]


def check_umt5(golden: Golden) -> list[Row]:
    case = golden.manifest["cases"]["umt5"]
    args = case["constructor_args"]
    if args.get("shared_pos", False):
        raise ValueError("umt5 case: shared_pos=True (plain T5) is not the umT5 encoder this project implements")
    encoder = UMT5Encoder(
        vocab_size=args["vocab_size"],
        dim=args["dim"],
        dim_attn=args["dim_attn"],
        dim_ffn=args["dim_ffn"],
        num_heads=args["num_heads"],
        num_layers=args["encoder_layers"],
        num_buckets=args["num_buckets"],
    ).eval()
    encoder.load_state_dict(golden.case_tensors("umt5", weights=True), strict=True)
    data = golden.case_tensors("umt5")
    with torch.no_grad():
        hidden = encoder(data["ids"], data["mask"])
        length = data["layer0_pos_bias"].shape[-1]
        rows = [
            Row("umt5", "hidden", max_diff(hidden, data["hidden"]), TOLERANCE["umt5"]),
            Row(
                "umt5",
                "context_kaleido",
                max_diff(hidden * data["mask"][..., None], data["context_kaleido"]),
                TOLERANCE["umt5"],
            ),
            Row(
                "umt5",
                "rel_bucket",
                max_diff(relative_position_bucket(data["rel_pos"], args["num_buckets"]), data["rel_bucket"]),
                TOLERANCE["umt5_buckets"],
            ),
            Row(
                "umt5",
                "layer0_pos_bias",
                max_diff(encoder.blocks[0].pos_embedding(length, length), data["layer0_pos_bias"]),
                TOLERANCE["umt5"],
            ),
        ]
    return rows


CHECKS: dict[str, Callable[[Golden], list[Row]]] = {
    "dit": check_dit,
    "rope": check_rope,
    "sampler": check_sampler,
    "loss": check_loss,
    "vae": check_vae,
    "umt5": check_umt5,
}


@torch.no_grad()  # a scope, not torch.set_grad_enabled(False): callers (tests) keep their autograd state
def run_checks(folder: str | Path, cases: list[str] | None = None) -> tuple[list[Row], list[str]]:
    """Every case of the manifest (or the selected ones) -> (rows, notes).

    A case without a checker, or one that fails to run, is a failing row; tensors nothing read become notes.
    """
    golden = Golden(folder)
    rows, notes = [], []
    for case in golden.manifest["cases"]:
        if cases and case not in cases:
            continue
        if case not in CHECKS:
            rows.append(Row(case, "(case)", float("inf"), 0.0, note=f"no checker for case '{case}'"))
            continue
        try:
            case_rows = CHECKS[case](golden)
        except Exception as err:  # report and continue with the other cases
            case_rows = [Row(case, "(case)", float("inf"), 0.0, note=f"{type(err).__name__}: {err}")]
        rows += case_rows or [Row(case, "(case)", float("inf"), 0.0, note="no comparable tensors found")]
        unread = golden.unread(case)
        if unread:
            notes.append(f"{case}: not compared (informational tensors): {', '.join(unread)}")
    return rows, notes


def format_rows(rows: list[Row]) -> str:
    width = max(len(f"{r.case}/{r.name}") for r in rows)
    lines = [f"{'case/tensor':<{width}}  {'max diff':>10}  {'tolerance':>9}  result"]
    for r in rows:
        kind = " (rel)" if r.relative else ""
        note = f"  {r.note}" if r.note else ""
        lines.append(
            f"{r.case + '/' + r.name:<{width}}  {r.diff:>10.3e}  {r.tolerance:>9.1e}  {'PASS' if r.passed else 'FAIL'}{kind}{note}"
        )
    failed = sum(not r.passed for r in rows)
    lines.append(f"{len(rows) - failed}/{len(rows)} passed" + (f", {failed} FAILED" if failed else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golden", required=True, help="folder with manifest.json and the safetensors files")
    parser.add_argument("--case", action="append", help="check only this case (repeatable)")
    cli = parser.parse_args(argv)
    try:
        rows, notes = run_checks(cli.golden, cli.case)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not rows:
        print("error: no cases checked", file=sys.stderr)
        return 1
    print(format_rows(rows))
    for note in notes:
        print(f"note: {note}")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
