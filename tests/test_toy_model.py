"""The toy model's pieces (docs/toy_model.md): the shipped text encoder is the script's seeded random one, and
training on the toy world lowers the loss."""

from __future__ import annotations

from tests.golden import REPO


def test_shipped_text_encoder_is_the_scripts_seeded_random_one(tmp_path):
    """examples/toy_model/umt5.safetensors is scripts/make_random_text_encoder.py's output (docs/toy_model.md,
    step 3), and equals the text encoder that args.allow_random_weights gives with args.seed = 0."""
    import torch
    from safetensors.torch import load_file

    from kaleido.model import load_model
    from sat.config import load_config
    from scripts import make_random_text_encoder

    made = tmp_path / "umt5.safetensors"
    tiny = str(REPO / "configs/video_model/dit_crossattn_tiny.yaml")
    assert make_random_text_encoder.main(["--base", tiny, "--seed", "1", "--out", str(made)]) == 0
    shipped = load_file(str(REPO / "examples/toy_model/umt5.safetensors"))
    ours = load_file(str(made))
    assert shipped.keys() == ours.keys() and all(torch.equal(shipped[k], ours[k]) for k in ours)
    model = load_model(load_config([tiny]).section("model"), allow_random_weights=True, random_weights_seed=0)
    state = model.conditioner.encoder.state_dict()
    assert all(torch.equal(state[k], ours[k]) for k in ours)
    assert make_random_text_encoder.main(["--base", tiny, "--seed", "1", "--out", str(tmp_path / "x.pt")]) == 2


def test_training_on_the_world_lowers_the_loss(tmp_path):
    """20 optimizer steps of the tiny model on 2 toy-world clips (frames resized to 32×48, 5 of 17 frames)."""
    from kaleido.toyworld.writer import write_dataset
    from tests.test_training import metrics, train

    world = write_dataset(tmp_path / "world", 2, seed=5)
    train(
        tmp_path / "run",
        world,
        "args.train_iters=20",
        "args.save_interval=20",
        "args.video_size=[32,48]",
        "args.num_frames=5",
        "args.skip_frames=0",
    )
    losses = [record["loss"] for _, record in sorted(metrics(tmp_path / "run").items())]
    assert len(losses) == 20
    # measured: the last five 18 % below the first five; one step-to-step spread of the loss is about 4 %
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5]), losses
