import textwrap

import pytest

from kaleido.pipeline import SampleArgs
from sat.config import ConfigError, load_config, parse_args
from sgm.util import InstantiationError, instantiate_from_config
from tests.golden import REPO


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_later_files_win_and_overrides_apply_last(tmp_path):
    a = write(
        tmp_path,
        "a.yaml",
        """
        model: {sampler_config: {target: sgm.sampling.RFEulerSampler, params: {num_steps: 50, shift: 7.0}}}
        args: {sampling_latent_frames: 21, seed: 1}
    """,
    )
    b = write(tmp_path, "b.yaml", "args: {sampling_latent_frames: 9}\n")
    config = load_config(
        [a, b],
        [
            "args.sampling_latent_frames=5",
            "model.sampler_config.params.num_steps=4",
            "args.sampling_image_size=[32,48]",
        ],
    )
    assert config.data["args"] == {"sampling_latent_frames": 5, "seed": 1, "sampling_image_size": [32, 48]}
    assert config.data["model"]["sampler_config"]["params"] == {"num_steps": 4, "shift": 7.0}
    assert config.where("args.seed") == a
    assert config.where("args.sampling_latent_frames") == "override 'args.sampling_latent_frames=5'"
    args = parse_args(SampleArgs, config)
    assert (args.sampling_latent_frames, args.seed, args.sampling_image_size) == (5, 1, [32, 48])
    assert isinstance(args.sampling_image_size, list)


def test_unknown_args_key_names_key_and_file(tmp_path):
    a = write(tmp_path, "a.yaml", "args: {sampling_num_frame: 21}\n")
    with pytest.raises(ConfigError) as err:
        parse_args(SampleArgs, load_config([a]))
    assert str(err.value) == f"{a}: unknown key 'args.sampling_num_frame' (did you mean 'sampling_latent_frames'?)"


def test_unknown_override_key_names_the_override(tmp_path):
    a = write(tmp_path, "a.yaml", "args: {}\n")
    with pytest.raises(ConfigError, match=r"override 'args.nope=1': unknown key 'args.nope'"):
        parse_args(SampleArgs, load_config([a], ["args.nope=1"]))


def test_unknown_section_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"x.yaml: unknown top-level section 'arg'"):
        load_config([write(tmp_path, "x.yaml", "arg: {seed: 1}\n")])
    with pytest.raises(ConfigError, match=r"y.yaml: line 2: invalid YAML"):
        load_config([write(tmp_path, "y.yaml", "args:\n\tseed: 1\n")])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config([str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config([write(tmp_path, "z.yaml", "args: {}\n")], ["args.seed"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("args.sampling_latent_frames=abc", "bad value for 'args.sampling_latent_frames'"),
        ("args.sampling_latent_frames=0", "sampling_latent_frames: must be >= 1"),
        (
            "args.sampling_image_size=[500,896]",
            "sampling_image_size: expected [height, width], positive multiples of 16",
        ),
        ("args.uint8_rounding=floor", "uint8_rounding: expected one of ['round', 'truncate']"),
        ("args.negative_prompt=@nope", "unknown preset '@nope'"),
    ],
)
def test_bad_values_name_the_key_and_origin(tmp_path, override, message):
    a = write(tmp_path, "a.yaml", "args: {}\n")
    with pytest.raises(ConfigError) as err:
        parse_args(SampleArgs, load_config([a], [override]))
    assert message in str(err.value)
    assert str(err.value).startswith(f"override '{override}'")


def node(target, **params):
    return {"target": target, "params": params}


def test_instantiate_builds_nested_components():
    sampler = instantiate_from_config(
        node("sgm.sampling.RFEulerSampler", num_steps=4, guider=node("sgm.guiders.VanillaCFG", scale=3.0))
    )
    assert sampler.num_steps == 4 and sampler.guider.scale == 3.0


def test_target_outside_the_project_needs_an_explicit_opt_in():
    where = lambda path: "cfg.yaml"
    with pytest.raises(
        InstantiationError, match=r"cfg.yaml: 'model.x.target: datetime.timedelta' is outside this project"
    ):
        instantiate_from_config(node("datetime.timedelta", days=1), "model.x", where)
    assert instantiate_from_config(node("datetime.timedelta", days=1), external_targets=["datetime"]).days == 1


def test_bad_targets_and_params_are_named():
    where = lambda path: "cfg.yaml"
    with pytest.raises(
        InstantiationError,
        match=r"cannot import 'model.s.target: sgm.sampling.Nope': module 'sgm.sampling' has no attribute 'Nope'",
    ):
        instantiate_from_config(node("sgm.sampling.Nope"), "model.s", where)
    with pytest.raises(
        InstantiationError,
        match=r"unknown key 'model.s.params.num_step' for sgm.sampling.RFEulerSampler \(did you mean 'num_steps'\?\)",
    ):
        instantiate_from_config(node("sgm.sampling.RFEulerSampler", num_step=4), "model.s", where)
    with pytest.raises(InstantiationError, match=r"unknown key 'model.s.param'"):
        instantiate_from_config({"target": "sgm.guiders.VanillaCFG", "param": {}}, "model.s", where)
    with pytest.raises(InstantiationError, match=r"rejected 'model.s.params': num_steps must be >= 1"):
        instantiate_from_config(node("sgm.sampling.RFEulerSampler", num_steps=0), "model.s", where)


@pytest.mark.parametrize(
    "files",
    [
        ["configs/video_model/dit_crossattn_14B_wanvae.yaml", "configs/sampling/sample_wanvae_concat_14b.yaml"],
        [
            "configs/video_model/dit_crossattn_14B_wanvae.yaml",
            "configs/sampling/sample_wanvae_concat_14b.yaml",
            "configs/sampling/official_parity.yaml",
        ],
        ["configs/video_model/dit_crossattn_tiny.yaml", "configs/sampling/sample_tiny.yaml"],
        [
            "configs/video_model/dit_crossattn_tiny.yaml",
            "configs/sampling/sample_tiny.yaml",
            "configs/sampling/official_parity.yaml",
        ],
    ],
)
def test_shipped_configs_validate(files):
    config = load_config([str(REPO / f) for f in files])
    args = parse_args(SampleArgs, config)
    assert set(config.data) == {"model", "args"}
    if "official_parity.yaml" in files[-1]:
        assert (args.t5_prompt, args.uint8_rounding, args.ref_alpha, args.allow_zero_refs) == (
            "full_line",
            "truncate",
            "drop",
            False,
        )
        assert config.data["model"]["first_stage_config"]["params"]["norm_math"] == "bfloat16"
    guider = instantiate_from_config(
        config.data["model"]["sampler_config"], "model.sampler_config", config.where
    ).guider
    # The official batch [uncond, cond] in the parity profile; chosen by memory in the 14B run config.
    expected = True if "official_parity.yaml" in files[-1] else ("auto" if "14B" in files[0] else True)
    assert (guider.scale, guider.batched) == (6.0, expected)


def test_release_sampling_values():
    """The shipped 14B configs carry the official sampling values (docs/design/sampling.md)."""
    config = load_config(
        [
            str(REPO / "configs/video_model/dit_crossattn_14B_wanvae.yaml"),
            str(REPO / "configs/sampling/sample_wanvae_concat_14b.yaml"),
        ]
    )
    args = parse_args(SampleArgs, config)
    assert (args.sampling_image_size, args.sampling_latent_frames, args.sampling_fps, args.batch_size) == (
        [512, 896],
        21,
        16,
        1,
    )
    sampler = config.data["model"]["sampler_config"]["params"]
    assert (sampler["num_steps"], sampler["shift"], sampler["guider"]["params"]["scale"]) == (50, 7.0, 6.0)
    assert args.negative_prompt_text.startswith("色调艳丽") and "画得不好的脸部" not in args.negative_prompt_text


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 (PyYAML) would read 2e-3 as the string '2e-3'; in configs and overrides it is the number."""
    from sat.config import load_config

    (tmp_path / "a.yaml").write_text("args:\n  lr: 5e-6\n  name: 1e3x\n")
    config = load_config([str(tmp_path / "a.yaml")], ["args.other=2e-3", "args.neg=-1E+2"])
    assert config.section("args") == {"lr": 5e-6, "name": "1e3x", "other": 2e-3, "neg": -100.0}
