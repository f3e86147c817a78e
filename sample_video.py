"""Sample Kaleido subject-to-video clips for every line of a prompt file.

    python sample_video.py --base configs/video_model/dit_crossattn_tiny.yaml configs/sampling/sample_tiny.yaml \
        [key=value ...] [--seed N] [--save-latents] [--overwrite]

Each line `prompt@@ref1.png@@ref2.png` of args.input_file becomes args.output_dir/<line index>_<prompt>/ with
output.mp4, text.txt and subject_<i>.png. Overrides such as `args.sampling_latent_frames=5` or
`model.sampler_config.params.num_steps=4` apply after the --base files.

Exit status: 0 done; 2 a bad input or setting (one line `error: ...`, before any model work); 1 an output could not
be written; 130 / 143 interrupted by SIGINT / SIGTERM (finished lines are complete, the current one left nothing).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from kaleido.files import InputError, OutputError
from kaleido.lora import LoraError
from kaleido.parallelize import held_parameters
from kaleido.pipeline import (
    SampleArgs,
    check_outputs,
    check_weight_paths,
    prepare_model,
    read_prompts,
    run,
    sharding_plan,
)
from sat import parallel
from sat.config import ConfigError, load_config, parse_args
from sat.launch import leave_the_report_to_local_rank_0
from sat.parallel import resolve_device
from sgm.util import InstantiationError, use_exact_fp32
from sgm.weights import WeightsError

INPUT_ERRORS = (ConfigError, InstantiationError, InputError, WeightsError, LoraError, parallel.ParallelConfigError)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread so that the current line's temporary folder is removed on the
    way out (pipeline.run adds `line`, the number of the line it interrupted)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, frame):
    for each in (signal.SIGINT, signal.SIGTERM):
        signal.signal(each, signal.SIG_IGN)  # the clean-up is not interrupted by a second signal
    raise Interrupted(signum)


def install_signal_handlers() -> dict:
    """SIGINT and SIGTERM raise Interrupted; returns the previous handlers (restored when main returns)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {each: signal.signal(each, _interrupt) for each in (signal.SIGINT, signal.SIGTERM)}


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
    use_exact_fp32()  # fp32 settings (VAE, parity configs) mean fp32 on a GPU too: no TF32
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
    previous_handlers = install_signal_handlers()
    lines, state, checked = None, None, False
    try:
        # The layout, every prompt line, reference image, output path and weight path are checked before any model
        # work, identically on every rank.
        config = load_config(base_files, overrides)
        args = parse_args(SampleArgs, config)
        parallel.check_layout(world_size, args.sequence_parallel_size)
        plan = sharding_plan(args, config, args.sequence_parallel_size)
        lines = read_prompts(args)
        check_outputs(args, lines)
        check_weight_paths(args, config)
        checked = True
        state = parallel.initialize(args.sequence_parallel_size, resolve_device(args.device, local_rank))
        if not state.is_sp_source:  # the source of each sequence-parallel group reports for it
            logging.getLogger().setLevel(logging.WARNING)
        if rank == 0:
            logging.getLogger("kaleido").info(
                "parallel layout: %s%s",
                state.describe(),
                f", sequence split along {'H' if plan.dim == 3 else 'W'}" if plan else "",
            )
        model, cache = prepare_model(args, config, state, resolve_device(args.device, local_rank))
        for key, part, name in (
            ("dit_sharding", model.network, "DiT"),
            ("text_encoder_sharding", model.conditioner, "text encoder"),
        ):
            if getattr(args, key) == "fsdp2" and rank == 0:
                logging.getLogger("kaleido").info(
                    "%s weights sharded over the %d ranks of each sequence-parallel group (FSDP2): this rank holds "
                    "%d parameters",
                    name,
                    state.sp_size,
                    held_parameters(part),
                )
        run(args, model, lines, state, plan)
        if cache is not None and state.is_sp_source:
            logging.getLogger("kaleido").info(cache.describe())
        parallel.wait_for_all_ranks(state)  # every rank's lines are written before any process reports success
    except INPUT_ERRORS as err:
        if not checked and local_rank != 0:  # the same error as local rank 0, which reports it
            leave_the_report_to_local_rank_0()
            return 2
        print(f"{rank_tag}error: {err}", file=sys.stderr)
        return 2
    except OutputError as err:
        print(f"{rank_tag}error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        line = getattr(err, "line", None) or (lines[0].number if lines else 1)
        if state is None or state.is_sp_source:
            print(
                f"{rank_tag}interrupted at line {line}; finished lines are complete; rerun to continue",
                file=sys.stderr,
            )
        return 128 + signum
    finally:
        parallel.shutdown()
        for each, handler in previous_handlers.items():
            signal.signal(each, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
