"""Write a SAT checkpoint the way the official training does: DeepSpeed's own `save_checkpoint`.

    python tests/tools/write_deepspeed_checkpoint.py <state.safetensors> <out_dir> <tag>

<state.safetensors> holds the module state dict with its final key names (`model.diffusion_model.<SAT key>`); a
module tree with exactly those parameter names is built, wrapped by `deepspeed.initialize` (CPU accelerator) and
saved with `exclude_frozen_parameters=True` and the official client state (iteration, LR scheduler, RNG states:
the numpy one is what the weights-only reader must allow-list).
"""

import os
import random
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
for key, value in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
    os.environ.setdefault(key, value)

import deepspeed  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402


def module_with_names(state_dict: dict) -> nn.Module:
    root = nn.Module()
    for key, value in state_dict.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(value.clone()))
    return root


def main(source: str, out_dir: str, tag: str) -> None:
    module = module_with_names(load_file(source))
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 0}}
    engine, *_ = deepspeed.initialize(model=module, config=config)
    client_state = {
        "iteration": int(tag) if tag.isdigit() else 0,
        "client_lr_scheduler": {
            "start_lr": 1e-5,
            "warmup_iter": 1000,
            "num_iters": 1,
            "decay_style": "constant",
            "end_iter": 1,
            "decay_ratio": 0.1,
        },
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": None,
    }
    engine.save_checkpoint(out_dir, tag=tag, client_state=client_state, exclude_frozen_parameters=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
