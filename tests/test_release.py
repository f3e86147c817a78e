"""The release on disk: a model root in the official layout (docs/design/training.md), written from a tiny model in
every official file format, is found from `args.model_root` with the paths of the shipped 14B configs and gives
the same latents as the in-memory model. Plus the loading options and errors of the real-weights path."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import sample_video
from kaleido.keymap import SAT_PREFIX, to_layout
from kaleido.pipeline import SampleArgs, build_model, configured_paths
from sat.config import ConfigError, load_config, parse_args
from sat.parallel import free_port
from scripts.tiny_tokenizer import build_tiny_tokenizer
from tests.golden import REPO

TINY = [str(REPO / "configs/video_model/dit_crossattn_tiny.yaml"), str(REPO / "configs/sampling/sample_tiny.yaml")]
RELEASE = [
    str(REPO / "configs/video_model/dit_crossattn_14B_wanvae.yaml"),
    str(REPO / "configs/sampling/sample_wanvae_concat_14b.yaml"),
]
SMALL = ["args.sampling_image_size=[32,48]", "args.sampling_latent_frames=2", "model.sampler_config.params.num_steps=2"]
PROMPT = "A ball and a leaf.@@red.png@@green.png"
LATENT = "0_A_ball_and_a_leaf./latent.safetensors"


def shipped_path_overrides() -> list[str]:
    """The weight-path entries of the shipped 14B configs, verbatim (`${args.model_root}/...`), as overrides."""
    overrides = []
    for file in RELEASE:
        data = yaml.safe_load(Path(file).read_text())
        if "load" in data.get("args", {}):
            overrides.append(f"args.load={data['args']['load']}")
        for component, node in data.get("model", {}).items():
            for key, value in (node.get("params") or {}).items() if isinstance(node, dict) else ():
                if key.endswith("_path"):
                    overrides.append(f"model.{component}.params.{key}={value}")
    return overrides


def write_deepspeed_checkpoint(folder, module: dict, tag: str) -> None:
    """The official writer: DeepSpeed's save_checkpoint, in a subprocess (it initialises torch.distributed)."""
    source = folder.parent / "module.safetensors"
    save_file(module, str(source))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, str(REPO / "tests/tools/write_deepspeed_checkpoint.py"), str(source), str(folder), tag],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    source.unlink()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A working folder with prompts and references, the in-memory random model's latents, and a model root
    Kaleido-14B-S2V/ written from that model: model/ by DeepSpeed (tag 'release', as the HF release), the VAE and
    umT5 as plain torch files under their official names, and the tokenizer folder."""
    work = tmp_path_factory.mktemp("release")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        from PIL import Image

        Image.new("RGB", (30, 40), (200, 30, 30)).save("red.png")
        Image.new("RGBA", (50, 20), (20, 200, 20, 128)).save("green.png")
        Path("prompts.txt").write_text(PROMPT + "\n")
        build_tiny_tokenizer(work / "tok")
        common = ["args.input_file=prompts.txt", "model.conditioner_config.params.tokenizer_path=tok", *SMALL]
        assert sample_video.main(["--base", *TINY, *common, "args.output_dir=memory", "--save-latents"]) == 0

        config = load_config(TINY, common)
        model = build_model(parse_args(SampleArgs, config), config)
        root = work / "Kaleido-14B-S2V"
        (root / "umt5-xxl").mkdir(parents=True)
        module = {SAT_PREFIX + k: v for k, v in to_layout(model.network.state_dict(), "sat").items()}
        write_deepspeed_checkpoint(root / "model", module, "release")
        torch.save(model.first_stage.state_dict(), root / "Wan2.1_VAE.pth")
        torch.save(model.conditioner.encoder.state_dict(), root / "umt5-xxl" / "models_t5_umt5-xxl-enc-bf16.pth")
        for file in (work / "tok").iterdir():
            shutil.copy(file, root / "umt5-xxl" / file.name)
        yield work, root, load_file(str(work / "memory" / LATENT))["latent"]
    finally:
        os.chdir(cwd)


def sample_from_root(root, output_dir, *extra):
    argv = [
        "--base",
        *TINY,
        "args.input_file=prompts.txt",
        f"args.output_dir={output_dir}",
        "args.allow_random_weights=false",
        f"args.model_root={root}",
        *shipped_path_overrides(),
        *SMALL,
        "--save-latents",
        *extra,
    ]
    return sample_video.main(argv)


def test_shipped_configs_find_every_file_under_model_root():
    config = load_config(RELEASE, ["args.model_root=/data/K"])
    paths = dict(configured_paths(parse_args(SampleArgs, config), config))
    assert paths == {
        "args.load": "/data/K/model",
        "model.conditioner_config.params.tokenizer_path": "/data/K/umt5-xxl",
        "model.conditioner_config.params.weights_path": "/data/K/umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth",
        "model.first_stage_config.params.weights_path": "/data/K/Wan2.1_VAE.pth",
    }
    with pytest.raises(ConfigError, match=r"uses \$\{args.model_root\}, which is not set"):
        load_config(RELEASE, ["args.model_root=null"])


def test_model_root_in_official_formats_gives_the_in_memory_latents(release):
    work, root, memory = release
    container = torch.load(root / "model" / "release" / "mp_rank_00_model_states.pt", weights_only=False)
    assert "np_rng_state" in container and "ds_version" in container  # really a DeepSpeed file
    assert sample_from_root(root, "from_root") == 0
    assert torch.equal(load_file(str(work / "from_root" / LATENT))["latent"], memory)


@pytest.mark.parametrize("offload", ["cpu", "free"])
def test_text_encoder_offload_changes_nothing_but_placement(release, offload):
    work, root, memory = release
    assert sample_from_root(root, f"offload_{offload}", f"args.text_encoder_offload={offload}") == 0
    assert torch.equal(load_file(str(work / f"offload_{offload}" / LATENT))["latent"], memory)


def test_missing_release_files_are_listed_before_any_model_is_built(release, tmp_path, capsys):
    work, root, _ = release
    partial = tmp_path / "Kaleido-14B-S2V"
    shutil.copytree(root, partial)
    (partial / "Wan2.1_VAE.pth").unlink()
    (partial / "umt5-xxl" / "models_t5_umt5-xxl-enc-bf16.pth").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 11361920418\n"
    )
    assert sample_from_root(partial, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{partial}/Wan2.1_VAE.pth (model.first_stage_config.params.weights_path" in err
    assert "models_t5_umt5-xxl-enc-bf16.pth (model.conditioner_config.params.weights_path) is a Git LFS pointer" in err
    assert f"args.model_root={partial}" in err and not (tmp_path / "out").exists()


def test_deepspeed_file_needs_no_unsafe_unpickling(release):
    """The DeepSpeed container (numpy RNG state included) is read weights-only; only 'module' is used."""
    from kaleido.checkpoint import read_sat_checkpoint

    _, root, _ = release
    module, extra = read_sat_checkpoint(root / "model")
    assert all(k.startswith(SAT_PREFIX) for k in module) and extra["np_rng_state"][0] == "MT19937"


def test_wrong_architecture_names_the_differing_sizes(release, tmp_path, capsys):
    """A checkpoint of other sizes (here: the tiny model's shapes, halved width, one layer more) is one error
    saying which constructor sizes differ, not 900 shape lines."""
    from kaleido.checkpoint import write_sat_checkpoint
    from kaleido.dit import KaleidoDiT

    other = KaleidoDiT(hidden_size=64, num_layers=3, num_attention_heads=2, inner_hidden_size=96, text_dim=32)
    write_sat_checkpoint(tmp_path / "other", other.state_dict())
    work, root, _ = release
    assert sample_from_root(root, tmp_path / "out", f"args.load={tmp_path / 'other'}") == 2
    err = capsys.readouterr().err.strip()
    assert (
        "checkpoint of another architecture: hidden_size 64 (model 128), num_layers 3 (model 2), inner_hidden_size 96 (model 256)"
        in err
    )
    assert err.count("\n") < 4 and not (tmp_path / "out").exists()


def test_vae_file_of_another_model_is_named(release, tmp_path, capsys):
    work, root, _ = release
    umt5 = root / "umt5-xxl" / "models_t5_umt5-xxl-enc-bf16.pth"
    assert sample_from_root(root, tmp_path / "out", f"model.first_stage_config.params.weights_path={umt5}") == 2
    err = capsys.readouterr().err
    assert (
        "weights do not fit WanVAE: this file looks like the umT5 text encoder" in err
        and not (tmp_path / "out").exists()
    )


def test_force_inference_loads_partial_checkpoints_with_a_warning(release, tmp_path, caplog):
    """Strict by default; the official lenient load (Q18) only behind args.force_inference."""
    from kaleido.checkpoint import read_sat_checkpoint

    work, root, _ = release
    module, _ = read_sat_checkpoint(root / "model")
    partial = {k: v for k, v in module.items() if ".layers.1.cross_attention." not in k}
    partial[SAT_PREFIX + "extra.weight"] = torch.zeros(1)
    (tmp_path / "partial" / "3").mkdir(parents=True)
    torch.save({"module": partial}, tmp_path / "partial" / "3" / "mp_rank_00_model_states.pt")
    (tmp_path / "partial" / "latest").write_text("3\n")
    assert sample_from_root(root, tmp_path / "strict", f"args.load={tmp_path / 'partial'}") == 2
    assert (
        sample_from_root(root, tmp_path / "lenient", f"args.load={tmp_path / 'partial'}", "args.force_inference=true")
        == 0
    )
    assert "force_inference: partial load" in caplog.text and "blocks.1.cross_attn.q.weight" in caplog.text
    assert (tmp_path / "lenient" / LATENT).is_file()


def test_converted_forms_load_directly_with_the_same_latents(release, tmp_path):
    """args.load also takes a Wan2.1 shard folder (+ index) and the one-file safetensors export of the SAT file."""
    from kaleido import convert

    work, root, memory = release
    shards = convert.sat_to_wan(root / "model", tmp_path / "wan", max_shard_size=200_000)
    assert len(shards) > 1 and (tmp_path / "wan" / convert.WAN_INDEX).is_file()
    convert.sat_to_safetensors(root / "model", tmp_path / "kaleido.safetensors")
    for name, load in (("wan", tmp_path / "wan"), ("st", tmp_path / "kaleido.safetensors")):
        assert sample_from_root(root, tmp_path / name, f"args.load={load}") == 0
        assert torch.equal(load_file(str(tmp_path / name / LATENT))["latent"], memory), name


def _truncated_copy(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 3])


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_latest", "no *.safetensors shards and no diffusion_pytorch_model.safetensors.index.json"),
        ("missing_iteration", "latest names iteration '7' but"),
        ("truncated_pt", "mp_rank_00_model_states.pt: cannot be read as a weights-only torch file"),
        ("corrupt_safetensors", "diffusion_pytorch_model.safetensors: not a readable safetensors file"),
        ("tokenizer_incomplete", "incomplete tokenizer folder"),
        (
            "unmerged_parts",
            "it holds split parts (mp_rank_00_model_states.pt.part_aa, mp_rank_00_model_states.pt.part_ab): "
            "run the release's merge_kaleido.py",
        ),
    ],
)
def test_bad_release_files_are_one_clear_error_and_write_nothing(release, tmp_path, capsys, case, message):
    work, root, _ = release
    broken = tmp_path / "root"
    shutil.copytree(root, broken)
    model = broken / "model"
    if case == "no_latest":
        (model / "latest").unlink()
        shutil.rmtree(model / "release")
    elif case == "missing_iteration":
        (model / "latest").write_text("7\n")
    elif case == "truncated_pt":
        _truncated_copy(root / "model/release/mp_rank_00_model_states.pt", model / "release/mp_rank_00_model_states.pt")
    elif case == "corrupt_safetensors":
        shutil.rmtree(model)
        model.mkdir()
        (model / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    elif case == "unmerged_parts":  # a clone whose split DiT file was never merged
        data = (model / "release/mp_rank_00_model_states.pt").read_bytes()
        (model / "release/mp_rank_00_model_states.pt").unlink()
        (model / "release/mp_rank_00_model_states.pt.part_aa").write_bytes(data[: len(data) // 2])
        (model / "release/mp_rank_00_model_states.pt.part_ab").write_bytes(data[len(data) // 2 :])
    elif case == "tokenizer_incomplete":
        for file in (broken / "umt5-xxl").glob("tokenizer*"):
            file.unlink()
    assert sample_from_root(broken, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_fsdp2_checkpoint_file_is_found_and_its_text_encoder_keys_ignored(release, tmp_path, caplog):
    """Official FSDP2 output: `<iter>/fsdp2_rank_0000_checkpoint.pt` with the DiT in fp32 and umT5 under
    conditioner.embedders.0.model.* (reported and ignored, not loaded into the DiT)."""
    from kaleido.checkpoint import read_sat_checkpoint

    work, root, memory = release
    module, _ = read_sat_checkpoint(root / "model")
    umt5 = torch.load(root / "umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)
    module |= {f"conditioner.embedders.0.model.{k}": v for k, v in umt5.items()}
    (tmp_path / "fsdp/5").mkdir(parents=True)
    torch.save(
        {"module": module, "iteration": 5, "np_rng_state": __import__("numpy").random.get_state()},
        tmp_path / "fsdp/5/fsdp2_rank_0000_checkpoint.pt",
    )
    (tmp_path / "fsdp/latest").write_text("5")
    caplog.set_level("INFO")
    assert sample_from_root(root, tmp_path / "out", f"args.load={tmp_path / 'fsdp'}") == 0
    assert f"ignoring {len(umt5)} tensors of other components" in caplog.text
    assert torch.equal(load_file(str(tmp_path / "out" / LATENT))["latent"], memory)


def test_golden_weights_in_official_files_reproduce_the_golden_outputs(tmp_path):
    """The golden (official-code) weights written as a SAT directory, Wan2.1 shards, Wan2.1_VAE.pth and the umT5
    .pth, loaded through the real loaders into meta-built modules, reproduce the golden outputs."""
    from kaleido import convert
    from kaleido.checkpoint import load_dit_into, write_sat_checkpoint
    from kaleido.dit import KaleidoDiT
    from kaleido.keymap import to_ours
    from kaleido.official import dit_kwargs_from_official
    from scripts.check_parity import TOLERANCE
    from sgm.umt5 import UMT5Encoder, load_umt5_weights
    from sgm.vae import WanVAE
    from tests.golden import manifest, tensors

    cases = manifest()["cases"]
    dit_io = tensors("dit_io.safetensors")
    write_sat_checkpoint(tmp_path / "sat", to_ours(tensors("dit_weights.safetensors")))
    convert.sat_to_wan(
        tmp_path / "sat",
        tmp_path / "wan",
        max_shard_size=100_000,
        num_heads=cases["dit"]["config"]["params"]["num_attention_heads"],
    )
    for checkpoint in (tmp_path / "sat", tmp_path / "wan"):
        with torch.device("meta"):
            model = KaleidoDiT(**dit_kwargs_from_official(cases["dit"]["config"]["params"]))
        load_dit_into(model, checkpoint)
        with torch.no_grad():
            out = model.eval()(dit_io["x"], dit_io["timesteps"], dit_io["context"], dit_io["subjects_3ref"])
        assert (out - dit_io["out_3ref"]).abs().max() <= TOLERANCE["dit"], checkpoint.name

    vae_io = tensors("vae_io.safetensors")
    torch.save(tensors("vae_weights.safetensors"), tmp_path / "Wan2.1_VAE.pth")
    args = dict(cases["vae"]["constructor_args_WanVAE_"])
    args["temporal_downsample"] = args.pop("temperal_downsample")
    vae = WanVAE(**args, dtype="float32", norm_constants="float32", weights_path=str(tmp_path / "Wan2.1_VAE.pth"))
    with torch.no_grad():
        assert (vae.decode(vae_io["latent_in"]) - vae_io["x_decoded"]).abs().max() <= TOLERANCE["vae_decode"]

    umt5_io = tensors("umt5_io.safetensors")
    (tmp_path / "umt5-xxl").mkdir()
    torch.save(tensors("umt5_weights.safetensors"), tmp_path / "umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth")
    a = cases["umt5"]["constructor_args"]
    with torch.device("meta"):
        encoder = UMT5Encoder(
            vocab_size=a["vocab_size"],
            dim=a["dim"],
            dim_attn=a["dim_attn"],
            dim_ffn=a["dim_ffn"],
            num_heads=a["num_heads"],
            num_layers=a["encoder_layers"],
            num_buckets=a["num_buckets"],
        )
    load_umt5_weights(encoder, tmp_path / "umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth")
    with torch.no_grad():
        assert (encoder.eval()(umt5_io["ids"], umt5_io["mask"]) - umt5_io["hidden"]).abs().max() <= TOLERANCE["umt5"]


def test_absent_model_root_is_named_once(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the shipped run config's prompt file and its references
    assert sample_video.main(["--base", *RELEASE, "args.model_root=/nonexistent/Kaleido-14B-S2V"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: args.model_root=/nonexistent/Kaleido-14B-S2V (override 'args.model_root=/nonexistent/Kaleido-14B-S2V'): "
        "no such folder; it should be the Kaleido-14B-S2V release (README, 'Use the released weights')"
    )
