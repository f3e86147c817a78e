"""The data pipeline on Ray Data: the pending sources as a dataset, mapped by a pool of actors that each build the
stages (and load the models) once and run `process_source` on their sources, exactly as the local runner does, so
the output is the same. Every actor writes into OUT, so OUT must be on storage that all nodes share, and imports this
project from the path it has here, so every node needs the checkout at the same path.

On an existing cluster: start it (`ray start --head` on one node, `ray start --address=<head>:6379` on the others),
then run build_dataset.py on a node of it with `args.runner=ray args.ray_address=auto` (or set RAY_ADDRESS);
`args.ray_actors` actors are started, each with `args.ray_gpus_per_actor` GPUs. Without an address a local Ray
instance is started on this machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from kaleido.curation.pipeline import BuildArgs, build_stages, clean_unfinished, finish, pending_sources, process_source


class SourceWorker:
    """A Ray Data actor: the stages built once; a batch of sources (relative paths) processed in turn."""

    def __init__(self, raw: str, out: str, config, args: BuildArgs):
        self.raw, self.out, self.args = Path(raw), Path(out), args
        self.stages = build_stages(config, args)

    def __call__(self, batch: dict) -> dict:
        for relative in batch["source"]:
            clean_unfinished(self.out, str(relative))
            record = process_source(self.raw / str(relative), self.raw, self.out, self.stages, self.args)
            batch.setdefault("samples", []).append(len(record["samples"]))
        return {"source": batch["source"], "samples": batch["samples"]}


def run_ray(raw: Path, out: Path, config, args: BuildArgs) -> dict:
    import ray

    if not ray.is_initialized():
        local = {"include_dashboard": False} if args.ray_address is None else {}
        ray.init(address=args.ray_address, log_to_driver=False, **local)
    # the actors import this project from the same path (on a cluster: a checkout at this path on every node)
    repo = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    sources, todo = pending_sources(raw, out, args)
    if todo:
        items = [{"source": source.relative_to(raw).as_posix()} for source in todo]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            SourceWorker,
            fn_constructor_kwargs={"raw": str(raw), "out": str(out), "config": config, "args": args},
            batch_size=1,
            concurrency=args.ray_actors,
            num_gpus=args.ray_gpus_per_actor,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
        dataset.materialize()
    return finish(out, [source.relative_to(raw).as_posix() for source in sources])
