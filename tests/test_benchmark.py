"""scripts/benchmark.py runs and reports what it measured (numbers are recorded in docs/benchmarks/, not asserted)."""
import json
import subprocess
import sys

from kaleido.dit import KaleidoDiT
from sat.config import load_config
from tests.golden import REPO

TINY_MODEL = REPO / "configs/video_model/dit_crossattn_tiny.yaml"


def test_load_mode_synthesizes_and_loads_the_configs_shapes(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts/benchmark.py"), "load", "--synthesize",
                             "--checkpoint", str(tmp_path / "ckpt"), "--config", str(TINY_MODEL)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    params = load_config([str(TINY_MODEL)]).section("model")["network_config"]["params"]
    expected = sum(p.numel() for p in KaleidoDiT(**params).parameters())
    assert record["synthesized"]["parameters"] == record["result"]["parameters"] == expected
    assert (tmp_path / "ckpt/latest").read_text() == "1" and (tmp_path / "ckpt/1/mp_rank_00_model_states.pt").is_file()
    assert record["result"]["on_meta"] == 0 and record["result"]["nonzero_values"] == 0  # synthesized zeros, all loaded
    for key in ("RssAnon", "RssFile", "ru_maxrss"):
        assert record["result"]["memory_gib_after_reading_all"][key] > 0
    assert record["environment"]["torch"] == __import__("torch").__version__
