import pickle

import pytest
import torch
from safetensors.torch import save_file

from sgm.weights import (
    WeightsError,
    check_state_dict,
    describe_key_problems,
    read_tensor_file,
    read_torch_container,
    unsafe_pickle_option,
)


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


def crafted_pickles() -> dict[str, bytes]:
    """Pickles that call os.system when loaded, in the forms torch's weights-only reader reports differently."""
    return {
        # protocol 2 GLOBAL: torch names 'posix.system' itself
        "global.pt": b"\x80\x02cos\nsystem\nX\x08\x00\x00\x00echo pwnq\x00\x85q\x01Rq\x02.",
        # protocol 4 (FRAME + STACK_GLOBAL): torch stops at the FRAME opcode without naming anything
        "stack_global.pt": pickle.dumps(SystemCall(), protocol=4),
    }


class SystemCall:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("name", ["global.pt", "stack_global.pt"])
def test_a_refusal_names_the_callable_and_the_tools_option(tmp_path, capfd, name):
    (tmp_path / name).write_bytes(crafted_pickles()[name])
    with pytest.raises(WeightsError) as err:
        read_torch_container(tmp_path / name)
    message = str(err.value)
    assert f"{name}: refusing to unpickle os.system" in message and "args.allow_unsafe_pickle=true" in message
    assert "weights_only" not in message and "likely succeed" not in message and "\n" not in message
    with unsafe_pickle_option("--allow-unsafe-pickle"), pytest.raises(WeightsError) as err:
        read_tensor_file(tmp_path / name)
    assert "--allow-unsafe-pickle" in str(err.value) and "args.allow_unsafe_pickle" not in str(err.value)
    assert "pwn" not in capfd.readouterr().out  # nothing ran


def test_other_unreadable_torch_files_do_not_repeat_torchs_advice(tmp_path):
    (tmp_path / "ext.pt").write_bytes(b"\x80\x02\x82\x01.")  # an EXT1 opcode: unsupported, no global
    with pytest.raises(WeightsError) as err:
        read_torch_container(tmp_path / "ext.pt")
    assert (
        str(err.value).split("/")[-1]
        == "ext.pt: cannot be read as a weights-only torch file (UnpicklingError: Unsupported operand 130)"
    )


def test_convert_checkpoint_names_its_own_flag(tmp_path, capsys):
    from scripts import convert_checkpoint

    (tmp_path / "evil.pt").write_bytes(crafted_pickles()["stack_global.pt"])
    assert (
        convert_checkpoint.main(["to-safetensors", str(tmp_path / "evil.pt"), str(tmp_path / "out.safetensors")]) == 2
    )
    err = capsys.readouterr().err
    assert "refusing to unpickle os.system" in err and "--allow-unsafe-pickle" in err
    assert "args.allow_unsafe_pickle" not in err and "likely succeed" not in err
    assert convert_checkpoint.main(["inspect", str(tmp_path / "evil.pt")]) == 2
    err = capsys.readouterr()
    assert "--allow-unsafe-pickle" in err.out + err.err and "args.allow_unsafe_pickle" not in err.out + err.err
