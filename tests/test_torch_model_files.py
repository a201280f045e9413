"""Whole-model files: rbe.torch.save and rbe.torch.load (skipped without PyTorch)."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (extra rbe[torch])")

from torch import nn  # noqa: E402

import rbe  # noqa: E402
import rbe.torch as rt  # noqa: E402


class Net(nn.Module):
    """Embedding -> two residual blocks -> norm -> a head tied to the embedding; a
    non-persistent buffer (which a meta skeleton lacks) scales the input."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 40), nn.GELU(),
                                                  nn.Linear(40, 16, bias=False))
                                    for _ in range(2))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.full((16,), 0.5), persistent=False)

    def forward(self, tokens):
        h = self.embed(tokens) * self.scale
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.norm(h))


#: compress options of each kind in these tests.
OPTIONS = {"hybrid": {"block": (8, 8), "ratio": 3}, "fused": {"block": (8, 8)},
           "code": {"bits": 3}}


def compressed(kinds=("hybrid", "fused")):
    """A Net whose blocks are of the given kinds (block i: kinds[i]), trained a few steps."""
    torch.manual_seed(0)
    model = Net()
    for i, kind in enumerate(kinds):
        rt.compress(model.blocks[i], kind=kind, **OPTIONS[kind])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        opt.zero_grad()
        model(tokens).square().mean().backward()
        opt.step()
    return model.eval(), tokens


def skeleton():
    with torch.device("meta"):
        return Net()


@pytest.mark.parametrize("kinds", [("hybrid", "fused"), ("hybrid", "code"),
                                   ("hybrid", "hybrid")])
def test_round_trip_into_a_meta_skeleton_is_bit_for_bit(kinds, tmp_path, monkeypatch):
    model, tokens = compressed(kinds)
    hybrid = model.blocks[0][0].layer
    assert hybrid.precision == "float16" and not np.array_equal(
        rbe.encoder.rounded(hybrid.values, "float16"), hybrid.values)   # trained off the grid
    with torch.no_grad():
        expected = model(tokens)
    rt.save(model, tmp_path / "model.safetensors")

    def no_encoding(*args, **kwargs):
        raise AssertionError("loading encoded a layer")
    monkeypatch.setattr(rbe.encoder, "encode", no_encoding)
    monkeypatch.setattr(rt, "compress", no_encoding)
    for layer_class in rbe.io.layer_kinds().values():    # every kind's encoder
        if hasattr(layer_class, "from_dense"):
            monkeypatch.setattr(layer_class, "from_dense", no_encoding)
    loaded = rt.load(tmp_path / "model.safetensors", skeleton()).eval()
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert loaded.head.weight is loaded.embed.weight                 # tied again, left dense
    for i, kind in enumerate(kinds):
        assert [m.kind for m in loaded.blocks[i] if isinstance(m, rt.RBELinear)] == [kind] * 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), expected, rtol=0, atol=0)
    # The loaded modules train: their parameters are their layers' arrays.
    opt = torch.optim.SGD(loaded.parameters(), lr=0.1)
    loaded(tokens).square().mean().backward()
    opt.step()
    with torch.no_grad():
        assert not torch.equal(loaded(tokens), expected)


def test_tensors_of_other_dtypes_and_real_skeletons(tmp_path):
    model, tokens = compressed()
    model.register_buffer("counts", torch.arange(-3, 3, dtype=torch.int8))
    model.embed.to(torch.bfloat16)
    rt.save(model, tmp_path / "model.safetensors")
    target = Net()                               # built on the CPU: its tensors are replaced
    target.register_buffer("counts", torch.zeros(6, dtype=torch.int8))
    target.embed.to(torch.bfloat16)
    rt.load(tmp_path / "model.safetensors", target)
    assert target.embed.weight.dtype == torch.bfloat16 and target.head.weight is \
        target.embed.weight
    torch.testing.assert_close(target.counts, model.counts, rtol=0, atol=0)
    torch.testing.assert_close(target.embed.weight, model.embed.weight, rtol=0, atol=0)


def test_models_that_do_not_fit_the_file_are_named(tmp_path):
    model, _ = compressed()
    path = tmp_path / "model.safetensors"
    rt.save(model, path)
    other = skeleton()
    other.blocks[1] = nn.Sequential(nn.Linear(16, 40), nn.GELU())
    with pytest.raises(ValueError, match=r"no module 'blocks\.1\.2'"):
        rt.load(path, other)
    other = skeleton()
    other.blocks[0][2] = nn.Conv1d(40, 16, 1)
    with pytest.raises(ValueError, match=r"'blocks\.0\.2' is a Conv1d"):
        rt.load(path, other)
    other = skeleton()
    other.blocks[0][0] = nn.Linear(16, 41)
    with pytest.raises(ValueError, match=r"'blocks\.0\.0' maps 16 -> 41 .* 16 -> 40"):
        rt.load(path, other)
    other = skeleton()
    other.extra = nn.LayerNorm(3)
    with pytest.raises(ValueError, match=r"missing from the file \['extra\.weight', "
                                         r"'extra\.bias'\]"):
        rt.load(path, other)
    other = skeleton()
    other.extra = rt.RBELinear(16, 16, kind="hybrid", block=(8, 8), k=4)
    with pytest.raises(ValueError, match=r"missing from the file \['extra\.coef', "
                                         r"'extra\.values'"):
        rt.load(path, other)
    other = skeleton()
    del other.norm
    with pytest.raises(ValueError, match=r"the model does not have \['norm\.bias', "
                                         r"'norm\.weight'\]"):
        rt.load(path, other)


def rewrite(path, tensors=None, header=None):
    """Write the file again with safetensors, its tensors and rbe header edited in place."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(path, "pt") as f:
        metadata = json.loads(f.metadata()["rbe"])
    stored = load_file(path)
    (tensors or (lambda t: None))(stored)
    (header or (lambda h: None))(metadata)
    save_file(stored, path, metadata={"rbe": json.dumps(metadata)})


def flip_a_bit_of(key):
    return lambda tensors: tensors[key].view(-1).view(torch.uint8)[0].bitwise_xor_(1)


CORRUPTIONS = {
    "a layer's part": ({"tensors": flip_a_bit_of("blocks.0.0/values")}, "fails its checksum"),
    "a model tensor": ({"tensors": flip_a_bit_of("embed.weight")},
                       "'embed.weight' fails its checksum"),
    "a model tensor's shape": ({"header": lambda h: h["model"]["norm.weight"].update(
        shape=[17])}, "model tensor 'norm.weight' is float32"),
    "an undescribed tensor": ({"header": lambda h: h["model"].pop("norm.bias")},
                              r"not described \['norm.bias'\]"),
    "model is a number": ({"header": lambda h: h.update(model=3)}, '"model" must be'),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_files_raise_format_error(name, tmp_path):
    model, _ = compressed()
    path = tmp_path / "model.safetensors"
    rt.save(model, path)
    edits, message = CORRUPTIONS[name]
    rewrite(path, **edits)
    with pytest.raises(rbe.FormatError, match=message):
        rt.load(path, skeleton())


def test_a_truncated_file_raises_format_error(tmp_path):
    model, _ = compressed()
    path = tmp_path / "model.safetensors"
    rt.save(model, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(rbe.FormatError, match="not a valid safetensors file"):
        rt.load(path, skeleton())


def test_entries_of_a_model_file_are_layers(tmp_path):
    path = tmp_path / "model.safetensors"
    rbe.save(path, {"m": np.ones(3, np.float32)})
    rewrite(path, header=lambda h: h.update(model={}))
    with pytest.raises(rbe.FormatError, match="entry 'm': kind 'tensor' is not a layer"):
        rt.load(path, skeleton())


def test_rbe_load_and_rbe_torch_load_refuse_each_other_s_files(tmp_path):
    model, _ = compressed()
    rt.save(model, tmp_path / "model.safetensors")
    with pytest.raises(rbe.FormatError, match=r"whole model .* rbe\.torch\.load"):
        rbe.load(tmp_path / "model.safetensors")
    rbe.save(tmp_path / "layers.safetensors", {"blocks.0.0": model.blocks[0][0].layer})
    with pytest.raises(rbe.FormatError, match="not a whole model"):
        rt.load(tmp_path / "layers.safetensors", skeleton())
    with pytest.raises(ValueError, match=r"rbe\.save\(path, module\.layer\)"):
        rt.save(model.blocks[0][0], tmp_path / "one.safetensors")


def test_state_that_is_not_tensors_is_refused(tmp_path):
    class Configured(nn.Module):
        def get_extra_state(self):
            return {"mode": "fast"}

        def set_extra_state(self, state):
            pass

    model, _ = compressed()
    model.configured = Configured()
    with pytest.raises(ValueError, match=r"not tensors: \['configured\._extra_state'\]"):
        rt.save(model, tmp_path / "model.safetensors")
