"""The Kaleido model: wires text encoder + VAE + DiT + sampler (official `SATVideoDiffusionEngine`;
docs/design/model.md). `load_model` builds it from the `model:` section with its weights, for sampling and training.

Layouts: latents (B, T, C, H, W) everywhere outside the VAE; the VAE takes/returns (B, C, T, H, W).
"""

from __future__ import annotations

import contextlib
import gc
import logging

import torch
from torch import nn

from kaleido.checkpoint import load_dit_into
from sat.config import ConfigError
from sgm.sampling import RFEulerSampler, rf_denoiser
from sgm.util import instantiate_from_config, seeded_random_init_

RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: %s have no checkpoint and were initialised randomly (seed %d). The output is noise, "
    "useful only to check the pipeline. Real weights: put the Kaleido-14B-S2V release on disk and run the 14B "
    "configs (README, 'Use the released weights')."
)


log = logging.getLogger("kaleido")

MODEL_KEYS = ("network_config", "conditioner_config", "first_stage_config", "sampler_config", "scale_factor")


class KaleidoModel(nn.Module):
    def __init__(
        self,
        network: nn.Module,
        conditioner: nn.Module,
        first_stage: nn.Module,
        sampler: RFEulerSampler,
        scale_factor: float = 1.0,
    ):
        super().__init__()
        self.network = network
        self.conditioner = conditioner
        self.first_stage = first_stage
        self.sampler = sampler
        self.scale_factor = scale_factor

    @classmethod
    def from_config(
        cls, model: dict, where=lambda path: "config", external_targets=(), meta_network: bool = False
    ) -> KaleidoModel:
        """Build from the `model:` section (`network_config`, `conditioner_config`, `first_stage_config`,
        `sampler_config` as target/params nodes, and `scale_factor`).

        meta_network: build the DiT on the meta device (no memory, no init) for a checkpoint loaded with assign.
        """
        for key in model:
            if key not in MODEL_KEYS:
                raise ConfigError(f"{where(f'model.{key}')}: unknown key 'model.{key}' (expected {list(MODEL_KEYS)})")
        for key in MODEL_KEYS[:4]:
            if key not in model:
                raise ConfigError(f"{where('model')}: 'model.{key}' is missing")

        def build(key: str):
            return instantiate_from_config(model[key], f"model.{key}", where, external_targets)

        with torch.device("meta") if meta_network else contextlib.nullcontext():
            network = build("network_config")
        return cls(
            network,
            build("conditioner_config"),
            build("first_stage_config"),
            build("sampler_config"),
            float(model.get("scale_factor", 1.0)),
        )

    execution_device: torch.device | None = None  # set when the weights live elsewhere (kaleido.offload)

    @property
    def device(self) -> torch.device:
        """Where the computations run and the inputs are made."""
        return self.execution_device or next(self.network.parameters()).device

    def place(self, device: torch.device, text_encoder_offload: str = "none") -> KaleidoModel:
        """Move components to `device`. text_encoder_offload: 'none' (all there), 'cpu' (the text encoder stays on
        the CPU), 'free' (only the text encoder goes there now; the DiT and VAE follow in release_text_encoder)."""
        if text_encoder_offload not in ("none", "cpu", "free"):
            raise ValueError(f"text_encoder_offload: expected 'none', 'cpu' or 'free', got {text_encoder_offload!r}")
        if text_encoder_offload == "free":
            self.conditioner.to(device)
            self._pending_device = device
        else:
            self.network.to(device)
            self.first_stage.to(device)
            self.conditioner.to(device if text_encoder_offload == "none" else "cpu")
        return self

    def release_text_encoder(self) -> None:
        """Drop the text encoder (its memory is freed), then move the DiT and VAE to the device chosen in place()."""
        self.conditioner = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        device = getattr(self, "_pending_device", None)
        if device is not None:
            self.network.to(device)
            self.first_stage.to(device)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """-> context (B, L_text, text_dim), padded rows zero, on the text encoder's device."""
        if self.conditioner is None:
            raise RuntimeError("the text encoder was released (text_encoder_offload='free'): encode every prompt first")
        return self.conditioner(texts)

    @torch.no_grad()
    def encode_references(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pixels in [-1, 1] -> (1, N, C, H/8, W/8) float32 latents.

        Each reference is its own 1-frame video (a batch of N single frames: the causal VAE treats them
        independently), so references live in the latent space of a video's first frame.
        """
        latents = self.first_stage.encode(images[:, :, None].to(self.device))  # (N, C, 1, h, w)
        return (latents[:, :, 0] * self.scale_factor)[None]

    @torch.no_grad()
    def sample(
        self,
        noise: torch.Tensor,
        context: torch.Tensor,
        uncond_context: torch.Tensor,
        references: torch.Tensor | None,
        description: str = "sampling",
        grid_offset: tuple[int, int] = (0, 0),
        full_grid: tuple[int, int] | None = None,
        callback=None,
    ) -> torch.Tensor:
        """noise (B, T, C, h, w) at σ = 1 -> clean latents (B, T, C, h, w) float32.

        context, uncond_context: (B, L_text, text_dim); references: (1 or B, N, C, h, w) or None.
        CFG is text-only: both branches get the same (clean) references. grid_offset, full_grid: the window of
        the full latent that noise and references cover (sequence parallelism; see KaleidoDiT.forward).
        callback(i, x): called after step i with the state x (the web page's progress and Cancel).
        """
        if references is not None:
            references = references.to(self.device).expand(noise.shape[0], -1, -1, -1, -1)  # one set for every sample
        cond = {"context": context.to(self.device), "references": references}
        uncond = {"context": uncond_context.to(self.device), "references": references}

        def network(x, t, **conditioning):
            return self.network(x, t, grid_offset=grid_offset, full_grid=full_grid, **conditioning)

        return self.sampler(
            rf_denoiser(network), noise.to(self.device), cond, uncond, callback=callback, description=description
        )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> video (B, 3, 4(T − 1) + 1, 8h, 8w) float32 in [-1, 1]."""
        return self.first_stage.decode((latents / self.scale_factor).transpose(1, 2))


def load_model(
    model_config: dict,
    where=lambda path: "config",
    *,
    checkpoint: str | None = None,
    external_targets=(),
    force_inference: bool = False,
    allow_unsafe_pickle: bool = False,
    allow_random_weights: bool = False,
    random_weights_seed: int = 0,
) -> KaleidoModel:
    """The model of a `model:` section with its weights, on the CPU, in eval mode.

    The text encoder and VAE read their `weights_path` params; the DiT is built on the meta device and its
    tensors are assigned from `checkpoint` (SAT directory, .pt, .safetensors or shard folder; memory-mapped: no
    random init, no second copy). force_inference: missing DiT keys only warn (quirk Q18, docs/design/quirks.md).
    Components left without weights get seeded random ones when `allow_random_weights`, else one ConfigError.
    `where(key)` names the file or override that set a config key (sat.config.Config.where).
    """
    model = KaleidoModel.from_config(model_config, where, external_targets, meta_network=bool(checkpoint))
    if checkpoint:
        load_dit_into(model.network, checkpoint, force_inference, allow_unsafe_pickle, random_weights_seed)
    init_missing_weights(model, bool(checkpoint), allow_random_weights, random_weights_seed, where("args"))
    return model.eval()


def init_missing_weights(model: KaleidoModel, dit_loaded: bool, allowed: bool, seed: int, where: str) -> None:
    """Components without a checkpoint get seeded random weights (seed + 0/1/2 for DiT/text encoder/VAE) when
    `allowed`, with a loud warning; otherwise one error naming them."""
    components = {
        "DiT": (model.network, dit_loaded),
        "text encoder": (model.conditioner, bool(getattr(model.conditioner, "weights_path", None))),
        "VAE": (model.first_stage, bool(getattr(model.first_stage, "weights_path", None))),
    }
    unweighted = [name for name, (_, has_weights) in components.items() if not has_weights]
    if not unweighted:
        return
    if not allowed:
        raise ConfigError(
            f"{where}: no weights for {', '.join(unweighted)}: set args.load (DiT) and the weights_path "
            "params of the text encoder and VAE, or args.allow_random_weights=true for a smoke test"
        )
    for offset, (module, has_weights) in enumerate(components.values()):
        if not has_weights:
            seeded_random_init_(module, seed + offset)
    log.warning(RANDOM_WEIGHTS_WARNING, ", ".join(unweighted), seed)
