import pickle

import pytest
import torch
from safetensors.torch import save_file

from sgm.weights import WeightsError, check_state_dict, describe_key_problems, read_tensor_file, read_torch_container


class Payload:
    """An arbitrary object: a weights-only reader must refuse to unpickle it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_reads_torch_safetensors_and_sat_containers(tmp_path):
    state = {"a.weight": torch.arange(6.0).view(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    torch.save(state, tmp_path / "plain.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"module": state, "iteration": 3, "client_lr_scheduler": {"start_lr": 1e-5}}, tmp_path / "sat.pt")
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("plain.pt", "legacy.pt", "sat.pt", "w.safetensors"):
        loaded = read_tensor_file(tmp_path / name)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state), name


def test_refuses_arbitrary_pickles_and_reports_bad_files(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": Payload()}, f, protocol=2)
    with pytest.raises(
        WeightsError, match=r"evil.pt: refusing to unpickle print \(outside the weights-only allow-list"
    ):
        read_tensor_file(tmp_path / "evil.pt")
    assert "unpickled!" not in capsys.readouterr().out

    torch.save({"w": torch.zeros(1000)}, tmp_path / "full.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:300])
    with pytest.raises(WeightsError, match="truncated.pt: cannot be read"):
        read_tensor_file(tmp_path / "truncated.pt")
    save_file({"w": torch.zeros(1000)}, str(tmp_path / "full.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "full.safetensors").read_bytes()[:200])
    with pytest.raises(WeightsError, match="cut.safetensors: not a readable safetensors file"):
        read_tensor_file(tmp_path / "cut.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="list.pt: expected a flat dict of tensors"):
        read_tensor_file(tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="absent.pt: weights file not found"):
        read_tensor_file(tmp_path / "absent.pt")
    (tmp_path / "pointer.pth").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:ab12\nsize 508000000\n"
    )
    with pytest.raises(WeightsError, match="pointer.pth: is a Git LFS pointer, not the weights"):
        read_tensor_file(tmp_path / "pointer.pth")


def test_numpy_rng_state_is_allow_listed_but_other_objects_need_opt_in(tmp_path, capsys):
    """DeepSpeed files pickle np.random.get_state(); that (and only that kind of numpy object) is read weights-only."""
    np = pytest.importorskip("numpy")
    state = {"w": torch.arange(4.0)}
    torch.save(
        {"module": state, "np_rng_state": np.random.RandomState(3).get_state(), "iteration": 7}, tmp_path / "ds.pt"
    )
    container = read_torch_container(tmp_path / "ds.pt")
    assert container["iteration"] == 7 and container["np_rng_state"][1].dtype == np.uint32
    assert torch.equal(read_tensor_file(tmp_path / "ds.pt")["w"], state["w"])

    torch.save({"module": state, "extra": Payload()}, tmp_path / "custom.pt")
    with pytest.raises(WeightsError, match="custom.pt: refusing to unpickle .*args.allow_unsafe_pickle=true"):
        read_tensor_file(tmp_path / "custom.pt")
    assert "unpickled!" not in capsys.readouterr().out
    assert torch.equal(read_tensor_file(tmp_path / "custom.pt", allow_unsafe_pickle=True)["w"], state["w"])
    assert "unpickled!" in capsys.readouterr().out  # the opt-in really does unpickle: trusted files only


def test_reports_group_layers_and_name_single_keys():
    expected = {f"blocks.{i}.kv.weight": torch.Size([8, 4]) for i in range(40)}
    expected["head.weight"] = torch.Size([2, 4])
    got = {f"blocks.{i}.kv.weight": torch.zeros(4, 4) for i in range(40)}
    got["blocks.3.extra"] = torch.zeros(1)
    with pytest.raises(WeightsError) as err:
        check_state_dict(expected, got, "ckpt.pt", "the DiT")
    assert str(err.value) == (
        "ckpt.pt: weights do not fit the DiT\n"
        "1 missing key:\n  head.weight\n"
        "1 unexpected key:\n  blocks.3.extra\n"
        "40 shape mismatches:\n  40 × blocks.{i}.kv.weight: expected [8, 4] got [4, 4]"
    )
    many = describe_key_problems(missing=[f"k{i}.w" for i in range(30)], limit=3)
    assert many.splitlines() == ["30 missing keys:", "  k0.w", "  k1.w", "  k2.w", "  ... and 27 more"]
