"""The release on disk: a model root in the official layout (spec training.md §13), written from a tiny model in
every official file format, is found from `args.model_root` with the paths of the shipped 14B configs and gives
the same latents as the in-memory model. Plus the loading options and errors of the real-weights path."""
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import sample_video
from kaleido.keymap import SAT_PREFIX, to_layout
from kaleido.pipeline import SampleArgs, build_engine, configured_paths
from sat.config import ConfigError, load_config, parse_args
from scripts.tiny_tokenizer import build_tiny_tokenizer
from tests.golden import REPO

TINY = [str(REPO / "configs/video_model/dit_crossattn_tiny.yaml"), str(REPO / "configs/sampling/sample_tiny.yaml")]
RELEASE = [str(REPO / "configs/video_model/dit_crossattn_14B_wanvae.yaml"), str(REPO / "configs/sampling/sample_wanvae_concat_14b.yaml")]
SMALL = ["args.sampling_image_size=[32,48]", "args.sampling_num_frames=2", "model.sampler_config.params.num_steps=2"]
PROMPT = "A ball and a leaf.@@red.png@@green.png"
LATENT = "0_A_ball_and_a_leaf.@@red.png@@green.png/latent.safetensors"


def shipped_path_overrides() -> list[str]:
    """The weight-path entries of the shipped 14B configs, verbatim (`${args.model_root}/...`), as overrides."""
    overrides = []
    for file in RELEASE:
        data = yaml.safe_load(open(file))
        if "load" in data.get("args", {}):
            overrides.append(f"args.load={data['args']['load']}")
        for component, node in data.get("model", {}).items():
            for key, value in (node.get("params") or {}).items() if isinstance(node, dict) else ():
                if key.endswith("_path"):
                    overrides.append(f"model.{component}.params.{key}={value}")
    return overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_deepspeed_checkpoint(folder, module: dict, tag: str) -> None:
    """The official writer: DeepSpeed's save_checkpoint, in a subprocess (it initialises torch.distributed)."""
    source = folder.parent / "module.safetensors"
    save_file(module, str(source))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, str(REPO / "tests/tools/write_deepspeed_checkpoint.py"), str(source), str(folder), tag],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    source.unlink()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A working folder with prompts and references, the in-memory random engine's latents, and a model root
    Kaleido-14B-S2V/ written from that engine: model/ by DeepSpeed (tag 'release', as the HF release), the VAE and
    umT5 as plain torch files under their official names, and the tokenizer folder."""
    work = tmp_path_factory.mktemp("release")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        from PIL import Image
        Image.new("RGB", (30, 40), (200, 30, 30)).save("red.png")
        Image.new("RGBA", (50, 20), (20, 200, 20, 128)).save("green.png")
        open("prompts.txt", "w").write(PROMPT + "\n")
        build_tiny_tokenizer(work / "tok")
        common = ["args.input_file=prompts.txt", "model.conditioner_config.params.tokenizer_path=tok", *SMALL]
        assert sample_video.main(["--base", *TINY, *common, "args.output_dir=memory", "--save-latents"]) == 0

        config = load_config(TINY, common)
        engine = build_engine(parse_args(SampleArgs, config), config)
        root = work / "Kaleido-14B-S2V"
        (root / "umt5-xxl").mkdir(parents=True)
        module = {SAT_PREFIX + k: v for k, v in to_layout(engine.network.state_dict(), "sat").items()}
        write_deepspeed_checkpoint(root / "model", module, "release")
        torch.save(engine.first_stage.state_dict(), root / "Wan2.1_VAE.pth")
        torch.save(engine.conditioner.encoder.state_dict(), root / "umt5-xxl" / "models_t5_umt5-xxl-enc-bf16.pth")
        for file in (work / "tok").iterdir():
            shutil.copy(file, root / "umt5-xxl" / file.name)
        yield work, root, load_file(str(work / "memory" / LATENT))["latent"]
    finally:
        os.chdir(cwd)


def sample_from_root(root, output_dir, *extra):
    argv = ["--base", *TINY, "args.input_file=prompts.txt", f"args.output_dir={output_dir}", "args.allow_random_weights=false",
            f"args.model_root={root}", *shipped_path_overrides(), *SMALL, "--save-latents", *extra]
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
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 11361920418\n")
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
    assert "checkpoint of another architecture: hidden_size 64 (model 128), num_layers 3 (model 2), inner_hidden_size 96 (model 256)" in err
    assert err.count("\n") < 4 and not (tmp_path / "out").exists()


def test_vae_file_of_another_model_is_named(release, tmp_path, capsys):
    work, root, _ = release
    umt5 = root / "umt5-xxl" / "models_t5_umt5-xxl-enc-bf16.pth"
    assert sample_from_root(root, tmp_path / "out", f"model.first_stage_config.params.weights_path={umt5}") == 2
    err = capsys.readouterr().err
    assert "weights do not fit WanVAE: this file looks like the umT5 text encoder" in err and not (tmp_path / "out").exists()


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
    assert sample_from_root(root, tmp_path / "lenient", f"args.load={tmp_path / 'partial'}", "args.force_inference=true") == 0
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
