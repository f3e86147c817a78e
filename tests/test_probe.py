"""The reference gain (kaleido/toyworld/probe.py, scripts/probe_references.py): 1 for a network that reads the clean
latent off its references, 0 for one that ignores them; the subject mask follows the VAE's frame groups; the script
runs on a real cache and refuses bad input in one line."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kaleido.toyworld.probe import reference_gain, subject_mask
from scripts.tiny_dataset import write_tiny_dataset
from tests.golden import REPO
from tests.test_training import BASE


class ReferenceReader(nn.Module):
    """Knows x0 from the first reference (the samples below make it so): predicts the exact velocity."""

    def forward(self, noised, timestep, context, references):
        sigma = (timestep / 1000).view(-1, 1, 1, 1, 1)
        return (noised - references[:, :1]) / sigma


class ReferenceIgnorer(nn.Module):
    def forward(self, noised, timestep, context, references):
        return noised * 0.5


def samples(counts=(1, 1, 2, 2)):
    generator = torch.Generator().manual_seed(0)
    items = []
    for i, count in enumerate(counts):
        frame = torch.randn(3, 4, 6, generator=generator)
        items.append(
            {
                "x0": frame.expand(2, 3, 4, 6).clone(),  # (t, C, h, w): the same frame twice
                "context": torch.randn(5, 8, generator=generator),
                "references": frame.expand(count, 3, 4, 6).clone(),
                "id": f"s{i}",
            }
        )
    return items


def write_meta(folder, items):
    (folder / "meta").mkdir()
    for item in items:
        box = [4, 4, 12, 12]  # pixels, on a latent cell grid of stride 4
        meta = {"subjects": [{"box": [box, None, None, None, box]}]}
        (folder / "meta" / f"{item['id']}.json").write_text(json.dumps(meta))


def test_gain_is_one_for_a_reference_reader_and_zero_for_a_network_that_ignores_them(tmp_path):
    items = samples()
    write_meta(tmp_path, items)
    reader = reference_gain(ReferenceReader(), items, (0.5, 0.9), meta_folder=tmp_path, stride=4)
    assert set(reader) == {"sigma=0.5", "sigma=0.9"}
    for entry in reader.values():
        for region in ("all", "subjects"):
            assert entry[region]["own"] < 1e-10 < entry[region]["other"]
            assert entry[region]["gain"] == pytest.approx(1.0) and entry[region]["low"] == pytest.approx(1.0)
            assert entry[region]["samples"] == 4
    ignorer = reference_gain(ReferenceIgnorer(), items, (0.5,))
    assert set(ignorer["sigma=0.5"]) == {"all"}  # no ground truth given: no subject region
    entry = ignorer["sigma=0.5"]["all"]
    assert entry["own"] == entry["other"] > 0 and entry["gain"] == entry["low"] == entry["high"] == 0.0


def test_per_sample_losses_are_in_order_and_pair_across_networks_and_data():
    """own_losses: one per sample, in order, averaging to "own"; sample i is noised the same whatever the other
    samples are, so changing one sample changes its loss only (what lets runs be compared clip by clip)."""
    items = samples()
    first = reference_gain(ReferenceIgnorer(), items, (0.5,))["sigma=0.5"]["all"]
    assert len(first["own_losses"]) == 4
    assert sum(first["own_losses"]) / 4 == pytest.approx(first["own"], abs=1e-6)
    reader = reference_gain(ReferenceReader(), items, (0.5,))["sigma=0.5"]["all"]["own_losses"]
    assert max(reader) < 1e-10
    items[1]["x0"] = items[1]["x0"] * 3
    second = reference_gain(ReferenceIgnorer(), items, (0.5,))["sigma=0.5"]["all"]["own_losses"]
    assert [a == b for a, b in zip(first["own_losses"], second)] == [True, False, True, True]


def test_a_reference_count_with_one_sample_is_an_error():
    with pytest.raises(ValueError, match=r"every reference count needs two samples or more; \[3\] has one"):
        reference_gain(ReferenceIgnorer(), samples((1, 1, 3)))


def test_subject_mask_covers_the_boxes_in_their_latent_frames(tmp_path):
    meta = tmp_path / "m.json"
    # frame 0 -> latent frame 0; frame 6 -> latent frame 2 (frames 5..8); boxes in pixels, stride 4
    meta.write_text(json.dumps({"subjects": [{"box": [[4, 8, 13, 16], None, None, None, None, None, [0, 0, 3, 3]]}]}))
    mask = subject_mask(meta, (3, 16, 6, 8), stride=4)
    expected = torch.zeros(3, 1, 6, 8)
    expected[0, 0, 2:4, 1:4] = 1  # rows 8..16 px -> cells 2, 3; columns 4..13 px -> cells 1, 2, 3
    expected[2, 0, 0:1, 0:1] = 1
    assert torch.equal(mask, expected)


def run_script(*arguments):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "scripts/probe_references.py"), "--base", *BASE, *arguments]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_the_script_measures_a_checkpoint_on_a_cache(tmp_path):
    from sat.config import load_config
    from sgm.util import instantiate_from_config

    data = write_tiny_dataset(tmp_path / "data", samples=[{"refs": 1}, {"refs": 1}])
    small = ["args.video_size=[32,48]", "args.num_frames=5"]
    command = [sys.executable, str(REPO / "scripts/cache_latents.py"), "--base", *BASE, f"args.train_data=[{data}]"]
    made = subprocess.run(
        [*command, *small, "--out", str(tmp_path / "cache")], cwd=REPO, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr[-2000:]
    config = load_config(BASE, [], sections=("model", "args", "deepspeed"))
    torch.manual_seed(0)
    network = instantiate_from_config(config.section("model")["network_config"], "net", config.where)
    save_file(network.state_dict(), tmp_path / "dit.safetensors")
    out = tmp_path / "gain.json"
    result = run_script(
        "--weights", str(tmp_path / "dit.safetensors"), "--cache", str(tmp_path / "cache"), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["samples"] == 2 and set(report["gain"]) == {"sigma=0.5", "sigma=0.8"}
    entry = report["gain"]["sigma=0.8"]["all"]
    assert entry["own"] > 0 and entry["other"] > 0 and entry["low"] <= entry["gain"] <= entry["high"]
    assert not list(tmp_path.glob("*partial*"))  # hidden temporary names included


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--sigmas", "0", "--data", "."], "--sigmas: expected noise levels in (0, 1], got [0.0]"),
        (["--data", "configs"], "--data configs: no meta/ folder"),
    ],
)
def test_bad_input_is_one_line(arguments, message):
    result = run_script("--weights", "none.safetensors", "--cache", "none", *arguments)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
