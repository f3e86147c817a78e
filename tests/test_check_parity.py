import copy
import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from kaleido.dit import KaleidoDiT
from kaleido.keymap import to_layout
from kaleido.official import dit_kwargs_from_official
from scripts.check_parity import main, run_checks
from sgm.util import seeded_random_init_
from tests.golden import golden_dir, manifest


def test_golden_data_passes_every_case(capsys):
    rows, _ = run_checks(golden_dir())
    assert {r.case for r in rows} == set(manifest()["cases"])
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]
    names = {f"{r.case}/{r.name}" for r in rows}
    assert {
        "dit/out_0ref",
        "dit/out_1ref",
        "dit/out_3ref",
        "dit/b1ref_layer1_out",
        "sampler/dit_out_4",
        "vae/x_decoded",
        "umt5/hidden",
        "loss/loss_mean",
        "rope/real14b_q_rope",
    } <= names
    assert main(["--golden", str(golden_dir())]) == 0
    assert "FAIL" not in capsys.readouterr().out


def copy_golden(tmp_path):
    target = tmp_path / "golden"
    shutil.copytree(golden_dir(), target)
    return target


def test_a_perturbed_output_fails(tmp_path, capsys):
    folder = copy_golden(tmp_path)
    io = load_file(str(folder / "dit_io.safetensors"))
    io["out_3ref"] = io["out_3ref"] + 1e-3
    save_file(io, str(folder / "dit_io.safetensors"))
    assert main(["--golden", str(folder), "--case", "dit"]) == 1
    out = capsys.readouterr().out
    assert "dit/out_3ref" in out and "FAIL" in out.split("dit/out_3ref")[1].splitlines()[0]


def test_unknown_case_and_broken_weights_fail_instead_of_crashing(tmp_path):
    folder = copy_golden(tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    data["cases"]["dit"]["config"]["params"]["num_layers"] = 3  # weights hold 2 layers
    data["cases"]["future_case"] = {"files": []}
    (folder / "manifest.json").write_text(json.dumps(data))
    rows, _ = run_checks(folder, ["dit", "future_case"])
    failing = {r.case: r.note for r in rows if not r.passed}
    assert "no checker for case 'future_case'" in failing["future_case"]
    assert "missing" in failing["dit"]


def test_sizes_and_reference_counts_come_from_the_manifest(tmp_path):
    """A golden set of the same format with another DiT size and a 2-reference case is checked as described."""
    folder = copy_golden(tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    params = copy.deepcopy(data["cases"]["dit"]["config"]["params"])
    params.update(hidden_size=48, num_layers=3, num_attention_heads=2, inner_hidden_size=80, text_dim=24)
    params["modules"]["pos_embed_config"]["params"].update(hidden_size_head=24, max_h=20, max_w=20)
    params["modules"]["adaln_layer_config"]["params"]["hidden_size_head"] = 48
    params["time_embed_dim"] = 48
    data["cases"] = {"dit": {**data["cases"]["dit"], "config": {**data["cases"]["dit"]["config"], "params": params}}}
    (folder / "manifest.json").write_text(json.dumps(data))

    model = seeded_random_init_(KaleidoDiT(**dit_kwargs_from_official(params, "float32")), seed=5).eval()
    save_file(to_layout(model.state_dict(), "sat"), str(folder / "dit_weights.safetensors"))
    g = torch.Generator().manual_seed(0)
    x, t, context = torch.randn(1, 2, 16, 4, 6, generator=g), torch.tensor([700.0]), torch.randn(1, 5, 24, generator=g)
    refs = torch.randn(1, 2, 16, 4, 6, generator=g)
    with torch.no_grad():
        io = {"x": x, "timesteps": t, "context": context, "subjects_2ref": refs, "out_2ref": model(x, t, context, refs)}
    save_file(io, str(folder / "dit_io.safetensors"))
    rows, _ = run_checks(folder)
    assert [(r.name, r.passed) for r in rows] == [("out_2ref", True)]

    io["out_2ref"] = io["out_2ref"].flip(1)  # frames in the wrong order
    save_file(io, str(folder / "dit_io.safetensors"))
    assert main(["--golden", str(folder)]) == 1
