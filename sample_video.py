"""Sample Kaleido subject-to-video clips for every line of a prompt file.

    python sample_video.py --base configs/video_model/dit_crossattn_tiny.yaml configs/sampling/sample_tiny.yaml \
        [key=value ...] [--seed N] [--save-latents] [--overwrite]

Each line `prompt@@ref1.png@@ref2.png` of args.input_file becomes args.output_dir/<line>_<slug>/ with output.mp4,
text.txt and subject_<i>.png. Overrides such as `args.sampling_latent_frames=5` or
`model.sampler_config.params.num_steps=4` apply after the --base files.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kaleido.files import InputError, read_prompt_file
from kaleido.parallelize import parallelize_dit
from kaleido.pipeline import SampleArgs, build_engine, run, sharding_plan
from sat import parallel
from sat.config import ConfigError, load_config, parse_args
from sat.parallel import resolve_device
from sgm.util import InstantiationError
from sgm.weights import WeightsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--base", nargs="+", required=True, metavar="YAML", help="config files, merged in order (later wins)"
    )
    parser.add_argument("--seed", type=int, help="same as args.seed=N")
    parser.add_argument("--save-latents", action="store_true", help="same as args.save_latents=true")
    parser.add_argument("--overwrite", action="store_true", help="same as args.overwrite=true")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    cli = parser.parse_args(argv)
    world_size, rank, local_rank = parallel.launched_world()
    rank_tag = f"[rank {rank}] " if world_size > 1 else ""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {rank_tag}%(levelname)s %(message)s", datefmt="%H:%M:%S"
    )

    # `--base a.yaml b.yaml key=value` hands the trailing overrides to --base: move them back.
    overrides = [item for item in cli.base if "=" in item] + list(cli.overrides)
    base_files = [item for item in cli.base if "=" not in item]
    if cli.seed is not None:
        overrides.append(f"args.seed={cli.seed}")
    if cli.save_latents:
        overrides.append("args.save_latents=true")
    if cli.overwrite:
        overrides.append("args.overwrite=true")
    try:
        config = load_config(base_files, overrides)
        args = parse_args(SampleArgs, config)
        # The layout, every prompt line and reference image are checked before any model work.
        parallel.check_layout(world_size, args.sequence_parallel_size)
        plan = sharding_plan(args, config, args.sequence_parallel_size)
        lines = read_prompt_file(args.input_file, args.max_references, args.allow_zero_refs)
        state = parallel.initialize(args.sequence_parallel_size, resolve_device(args.device, local_rank))
        if not state.is_sp_source:  # the source of each sequence-parallel group reports for it
            logging.getLogger().setLevel(logging.WARNING)
        if rank == 0:
            logging.getLogger("kaleido").info(
                "parallel layout: %s%s",
                state.describe(),
                f", sequence split along {'H' if plan.dim == 3 else 'W'}" if plan else "",
            )
        engine = build_engine(args, config)
        parallelize_dit(
            engine.network,
            resolve_device(args.device, local_rank),
            attention_backend=args.attention_backend,
            sequence_parallel_size=state.sp_size,
            sequence_parallel_group=state.sp_group,
            compile=args.compile,
        )
        run(args, engine, lines, state, plan)
        parallel.wait_for_all_ranks(state)  # every rank's lines are written before any process reports success
    except (ConfigError, InstantiationError, InputError, WeightsError, parallel.ParallelConfigError) as err:
        print(f"{rank_tag}error: {err}", file=sys.stderr)
        return 2
    finally:
        parallel.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
