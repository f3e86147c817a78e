"""Measurements that are recorded, never asserted (docs/benchmarks/). One JSON line per run on stdout.

    python scripts/benchmark.py load --checkpoint DIR [--synthesize] [--config MODEL.yaml] [--device cpu]

load: host memory and time to build the DiT of `--config` (default: the 14B one) from a SAT checkpoint the way
`sample_video.py` does (meta-device build, memory-mapped weights-only read, tensors assigned). `--synthesize` first
writes a checkpoint of the config's exact shapes (bf16 zeros) to `--checkpoint`: one file-backed buffer streamed
to disk, so writing a 28.6 GB file needs no 28.6 GB of RAM. The measurement runs in a fresh subprocess so that its
peak RSS is that of the load alone.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from kaleido.checkpoint import SAT_MODEL_FILE, load_dit_into  # noqa: E402
from kaleido.keymap import SAT_PREFIX, to_layout  # noqa: E402
from sat.config import load_config  # noqa: E402
from sgm.util import instantiate_from_config  # noqa: E402

DEFAULT_CONFIG = REPO / "configs/video_model/dit_crossattn_14B_wanvae.yaml"


def memory_status() -> dict[str, float]:
    """Resident memory of this process in GiB: anonymous (heap: real copies) and file-backed (mapped checkpoint
    pages, reclaimable page cache), from /proc/self/status; peak RSS from getrusage."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) / 2**20
    fields["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {k: round(v, 3) for k, v in fields.items()}


def build_meta_dit(config_file: str | Path) -> torch.nn.Module:
    config = load_config([str(config_file)], ["args.model_root=unused"])
    with torch.device("meta"):
        return instantiate_from_config(config.section("model")["network_config"], "model.network_config", config.where)


def synthesize(config_file: str | Path, folder: Path) -> dict:
    """A SAT directory with the config's DiT shapes in bf16 (all zeros), written without holding it in RAM."""
    meta = build_meta_dit(config_file).state_dict()
    sat = to_layout(meta, "sat")
    total = sum(t.numel() for t in sat.values())
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        blob = torch.from_file(str(Path(scratch) / "blob.bin"), shared=True, size=total, dtype=torch.bfloat16)  # sparse file
        module, offset = {}, 0
        for key, tensor in sat.items():
            module[SAT_PREFIX + key] = blob[offset:offset + tensor.numel()].view(tensor.shape)
            offset += tensor.numel()
        (folder / "1").mkdir(exist_ok=True)
        torch.save({"module": module, "iteration": 1}, folder / "1" / SAT_MODEL_FILE)
    (folder / "latest").write_text("1")
    return {"keys": len(module), "parameters": total, "bytes": 2 * total, "write_s": round(time.perf_counter() - started, 1)}


def measure_load(config_file: str | Path, checkpoint: str | Path, device: str, mmap_shared: bool = False) -> dict:
    before = memory_status()
    started = time.perf_counter()
    network = build_meta_dit(config_file)
    built = time.perf_counter()
    # A shared mapping reads the same pages as the product's private one, but is not refused by the kernel's
    # overcommit check on a host with less RAM + swap than the file size. Never used on a user's file.
    with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED if mmap_shared else mmap.MAP_PRIVATE):
        load_dit_into(network, checkpoint)
    loaded = time.perf_counter()
    after_load = memory_status()
    result = {"build_meta_s": round(built - started, 3), "load_s": round(loaded - built, 3), "memory_gib_before": before,
              "memory_gib_after_load": after_load,
              "parameters": sum(p.numel() for p in network.parameters()),
              "dtypes": sorted({str(p.dtype) for p in network.parameters()}),
              "on_meta": sum(p.is_meta for p in network.parameters())}
    # Read every weight once (what a move to the GPU does): the pages come from the file, no anonymous copy.
    touched = time.perf_counter()
    nonzero = sum(int(torch.count_nonzero(p)) for p in network.parameters())
    result["read_all_s"] = round(time.perf_counter() - touched, 3)
    result["memory_gib_after_reading_all"] = memory_status()
    result["nonzero_values"] = nonzero
    if device != "cpu":
        network.to(device)
        torch.cuda.synchronize()
        result["to_device_s"] = round(time.perf_counter() - loaded, 3)
        result["memory_gib_after_to_device"] = memory_status()
        result["cuda_allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 3)
    return result


def environment() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    load = modes.add_parser("load", help="host memory and time of building the DiT from a SAT checkpoint")
    load.add_argument("--checkpoint", required=True, type=Path, help="SAT directory (written first with --synthesize)")
    load.add_argument("--config", default=str(DEFAULT_CONFIG), help="model YAML whose network_config is built")
    load.add_argument("--synthesize", action="store_true", help="write a zero checkpoint of the config's shapes first")
    load.add_argument("--device", default="cpu", help="also move the loaded DiT there (e.g. cuda)")
    load.add_argument("--mmap-shared", action="store_true",
                      help="map the file shared (hosts whose RAM + swap is smaller than the file; benchmark files only)")
    load.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # the measurement itself, in a fresh process
        print(json.dumps(measure_load(args.config, args.checkpoint, args.device, args.mmap_shared)))
        return 0
    record = {"mode": "load", "config": str(args.config), "checkpoint": str(args.checkpoint), "mmap": "shared" if args.mmap_shared else "private",
              "environment": environment()}
    if args.synthesize:
        record["synthesized"] = synthesize(args.config, args.checkpoint)
    child = subprocess.run([sys.executable, __file__, "load", "--child", "--checkpoint", str(args.checkpoint),
                            "--config", str(args.config), "--device", args.device, *(["--mmap-shared"] if args.mmap_shared else [])],
                           capture_output=True, text=True)
    if child.returncode:
        print(child.stderr, file=sys.stderr)
        return child.returncode
    record["result"] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
