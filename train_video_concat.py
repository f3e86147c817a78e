"""Fine-tune Kaleido (rectified flow, DeepSpeed ZeRO-2 or FSDP2) on a dataset in the official SFT layout.

    python train_video_concat.py --base configs/video_model/dit_crossattn_tiny.yaml configs/training/train_tiny.yaml \
        [key=value ...] [--seed N]
    torchrun --nproc-per-node 8 train_video_concat.py --base MODEL.yaml TRAIN.yaml args.engine=fsdp2 ...

A `lora:` section (configs/training/lora_tiny.yaml, docs/lora.md) trains LoRA adapters instead of the whole DiT.
Optimiser settings come from the YAML `deepspeed:` block (DeepSpeed's config; FSDP2 reads micro-batch, accumulation,
AdamW, clipping and bf16 from it); `args.save` receives SAT checkpoints that sample_video.py loads
(args.load=<save>) and the training state a rerun resumes from (or args.resume_from=<iteration>; args.resume=false
starts over and moves the earlier files to <save>/previous-<n>).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kaleido.data import DatasetError
from kaleido.trainer import TrainArgs, Trainer, TrainingError
from sat.config import ConfigError, load_config, parse_args
from sat.launch import leave_the_report_to_local_rank_0
from sat.parallel import ParallelConfigError
from sgm.util import InstantiationError, use_exact_fp32
from sgm.weights import WeightsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--base", nargs="+", required=True, metavar="YAML", help="config files, merged in order (later wins)"
    )
    parser.add_argument("--seed", type=int, help="same as args.seed=N")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    cli = parser.parse_args(argv)
    use_exact_fp32()  # fp32 settings (VAE, parity configs) mean fp32 on a GPU too: no TF32
    rank = int(os.environ.get("RANK", 0))
    tag = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s {tag}%(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    overrides = [item for item in cli.base if "=" in item] + list(cli.overrides)
    base_files = [item for item in cli.base if "=" not in item]
    if cli.seed is not None:
        overrides.append(f"args.seed={cli.seed}")
    checked = False
    try:
        config = load_config(base_files, overrides, sections=("model", "args", "deepspeed", "lora"))
        args = parse_args(TrainArgs, config)
        checked = True
        Trainer(args, config).train()
    except (ConfigError, InstantiationError, DatasetError, WeightsError, ParallelConfigError) as err:
        if not checked and int(os.environ.get("LOCAL_RANK", 0)) != 0:  # every rank read the same config
            leave_the_report_to_local_rank_0()
            return 2
        print(f"{tag}error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"{tag}error: {err}", file=sys.stderr)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
