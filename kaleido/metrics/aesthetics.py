"""Aesthetics (OpenS2V-Eval's aesthetic score): the LAION improved aesthetic predictor, an MLP on CLIP ViT-L/14
image embeddings, averaged over 32 evenly sampled frames. Scores are roughly 1-10 (OpenS2V's Total maps 4..7 to
0..1).

The MLP's weights are a state dict file (`head`): LAION's sac+logos+ava1-l14-linearMSE.pth, which OpenS2V ships
as aesthetic-model.pth, with the layout of AestheticHead. `tiny:aesthetic` is a seeded random head for the tiny
CLIP, built on first use next to the tiny models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kaleido.metrics.base import Sample, pick_frames
from kaleido.vision import ModelNotFound, tiny_root

TINY_HEAD = "tiny:aesthetic"


class AestheticHead(nn.Module):
    """(N, D) unit CLIP image embeddings -> (N,) scores. The dropouts only keep LAION's key names (layers.0, 2, 4,
    6, 7); they do nothing in eval mode."""

    def __init__(self, width: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(width, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


def resolve_head(head: str, key: str) -> Path:
    """The weights file of `head` (a path, or tiny:aesthetic: built on first use); ModelNotFound when missing."""
    if head == TINY_HEAD:
        path = tiny_root() / "aesthetic" / "head.pth"
        if not path.is_file():
            from kaleido.files import atomic_path

            with torch.random.fork_rng(devices=[]), atomic_path(path) as tmp:
                torch.manual_seed(0)
                torch.save(AestheticHead(width=16).state_dict(), tmp)  # the tiny CLIP's 16-d embeddings
        return path
    path = Path(head).expanduser()
    if not path.is_file():
        raise ModelNotFound(
            f"{key}: {head!r} is not a file; download the LAION aesthetic predictor once, e.g. "
            "hf download BestWishYsh/OpenS2V-Weight aesthetic-model.pth, and give its path"
        )
    return path


class Aesthetics:
    name = "aesthetics"

    def __init__(self, image_text, head: str, frames: int = 32):
        """image_text: kaleido.vision.ImageText on CLIP ViT-L/14 (openai/clip-vit-large-patch14)."""
        self.image_text, self.frames = image_text, frames
        state = torch.load(resolve_head(head, "metrics.aesthetics.params.head"), map_location="cpu", weights_only=True)
        self.head = AestheticHead(width=state["layers.0.weight"].shape[1])
        self.head.load_state_dict(state)
        self.head.eval()

    @torch.inference_mode()
    def score(self, sample: Sample) -> float:
        embeddings = self.image_text.image_embeddings(pick_frames(sample.frames, self.frames))
        return float(self.head(torch.from_numpy(embeddings)).mean())
