"""rbe.hf: RbeConfig and its transformers quantiser, with small BERT models built here (no
downloads; skipped without transformers)."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (extra rbe[torch])")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from transformers import AutoModel, BertConfig, BertForMaskedLM, BertModel  # noqa: E402

import rbe  # noqa: E402
import rbe.hf  # noqa: E402
import rbe.torch as rt  # noqa: E402

#: What each kind is compressed with (the options of its RbeConfig).
OPTIONS = {"hybrid": {"ratio": 4}, "fused": {"block": [8, 8]}, "code": {"bits": 3}}
#: The quickest config, for the tests of what every kind does alike.
HYBRID = {"kind": "hybrid", "ratio": 4}
WORDS = "the a man woman eats food weather is lovely today blocks store weights".split()


def bert_config(**kwargs):
    return BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                      **kwargs)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A folder with a small BertModel and a word-level tokenizer for it."""
    from transformers import BertTokenizerFast
    folder = tmp_path_factory.mktemp("dense")
    torch.manual_seed(0)
    BertModel(bert_config()).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                 *WORDS]))
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def tokens():
    return torch.tensor([[2, 5, 7, 8, 3, 0], [2, 9, 10, 11, 12, 3]])


def output(model):
    with torch.no_grad():
        return model(tokens(), attention_mask=(tokens() > 0).long()).last_hidden_state


def compressed_modules(model):
    return sorted(name for name, m in model.named_modules() if isinstance(m, rt.RBELinear))


@pytest.mark.parametrize("kind", sorted(OPTIONS))
def test_compress_while_loading(kind, dense):
    model = AutoModel.from_pretrained(dense, quantization_config=rbe.hf.RbeConfig(
        kind=kind, **OPTIONS[kind]))
    linears = [name for name, m in BertModel(bert_config()).named_modules()
               if isinstance(m, torch.nn.Linear)]
    assert compressed_modules(model) == sorted(linears)
    assert {model.get_submodule(name).kind for name in linears} == {kind}
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    if kind == "hybrid":        # encoded from the checkpoint's weights
        dense_model = AutoModel.from_pretrained(dense)
        query = "encoder.layer.0.attention.self.query"
        error = model.get_submodule(query).to_dense() - dense_model.get_submodule(query).weight
        assert 0 < error.norm() < dense_model.get_submodule(query).weight.norm()


RELOAD = """
import json, sys
import torch
import rbe.encoder, rbe.hf, rbe.io, rbe.torch
from transformers import AutoModel

def no_encoding(*args, **kwargs):
    raise AssertionError("loading encoded a layer")
rbe.encoder.encode = rbe.torch.compress = no_encoding
for layer_class in rbe.io.layer_kinds().values():     # every kind's encoder
    if hasattr(layer_class, "from_dense"):
        layer_class.from_dense = no_encoding
tokens = torch.tensor({tokens})
report = {{}}
for folder in sys.argv[1:]:
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    with torch.no_grad():
        y = model(tokens, attention_mask=(tokens > 0).long()).last_hidden_state
    torch.save(y, folder + "/reloaded.pt")
    report[folder] = {{"info": {{k: sorted(map(str, v)) for k, v in info.items()}},
                      "rbe": sorted(n for n, m in model.named_modules()
                                    if isinstance(m, rbe.torch.RBELinear))}}
print(json.dumps(report))
"""


def test_saved_models_load_in_a_fresh_process_without_encoding(dense, tmp_path, python_in_child):
    expected, folders = {}, []
    for kind, options in OPTIONS.items():
        model = AutoModel.from_pretrained(dense, quantization_config=rbe.hf.RbeConfig(
            kind=kind, **options))
        folder = tmp_path / kind
        model.save_pretrained(folder)
        expected[str(folder)] = (output(model), compressed_modules(model))
        folders.append(str(folder))
        saved = json.loads((folder / "config.json").read_text())["quantization_config"]
        assert saved["quant_method"] == "rbe" and saved["kind"] == kind
    code = RELOAD.format(tokens=tokens().tolist())
    done = python_in_child(code, *folders)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for folder, (y, modules) in expected.items():
        # No key missing (a dense weight to allocate and initialise), none left unused.
        assert all(not keys for keys in report[folder]["info"].values()), report[folder]
        assert report[folder]["rbe"] == modules
        torch.testing.assert_close(torch.load(folder + "/reloaded.pt"), y, rtol=0, atol=0)


def test_tied_and_chosen_modules_stay_dense(tmp_path):
    torch.manual_seed(0)
    BertForMaskedLM(bert_config()).save_pretrained(tmp_path / "mlm")
    model = transformers.AutoModelForMaskedLM.from_pretrained(
        tmp_path / "mlm", quantization_config=rbe.hf.RbeConfig(
            **HYBRID, modules_to_not_convert=["intermediate.dense"]))
    decoder = model.cls.predictions.decoder
    assert type(decoder) is torch.nn.Linear        # tied to the word embeddings
    assert decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert type(model.bert.encoder.layer[0].intermediate.dense) is torch.nn.Linear
    assert isinstance(model.bert.encoder.layer[0].output.dense, rt.RBELinear)
    model.save_pretrained(tmp_path / "saved")
    loaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "saved")
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    loaded.save_pretrained(tmp_path / "again")                  # a loaded model saves again
    again = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "again")
    with torch.no_grad():
        for other in (loaded, again):
            torch.testing.assert_close(other(tokens()).logits, model(tokens()).logits, rtol=0,
                                       atol=0)


def test_sharded_checkpoints_load(dense, tmp_path):
    model = AutoModel.from_pretrained(dense, quantization_config=rbe.hf.RbeConfig(**HYBRID))
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    from safetensors import safe_open
    for shard in tmp_path.glob("model-*.safetensors"):     # the stored parts in every shard
        with safe_open(shard, "pt") as f:
            assert any("/" in key for key in f.keys())
    assert len(list(tmp_path.glob("model-*.safetensors"))) == 2
    loaded = AutoModel.from_pretrained(tmp_path)
    assert compressed_modules(loaded) == compressed_modules(model)
    torch.testing.assert_close(output(loaded), output(model), rtol=0, atol=0)


def test_a_model_that_does_not_fit_the_checkpoint_is_named(dense, tmp_path):
    AutoModel.from_pretrained(dense, quantization_config=rbe.hf.RbeConfig(**HYBRID)) \
        .save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'encoder\.layer\.0\.intermediate\.dense' maps 32 -> "
                                         r"48 features, the file's layer 32 -> 64"):
        AutoModel.from_pretrained(tmp_path)


def test_a_corrupted_checkpoint_raises_format_error(dense, tmp_path):
    AutoModel.from_pretrained(dense, quantization_config=rbe.hf.RbeConfig(**HYBRID)) \
        .save_pretrained(tmp_path)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    path = tmp_path / "model.safetensors"
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    tensors["pooler.dense/values"].view(-1).view(torch.uint8)[0].bitwise_xor_(1)
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(rbe.FormatError, match="'pooler.dense': tensor 'values' fails its checksum"):
        AutoModel.from_pretrained(tmp_path)


def test_config_round_trip_and_checks():
    config = rbe.hf.RbeConfig(kind="hybrid", ratio=8, block=(16, 16),
                              modules_to_not_convert=["pooler"])
    again = rbe.hf.RbeConfig.from_dict(json.loads(config.to_json_string()))
    assert again.to_dict() == json.loads(config.to_json_string())
    assert again.options == {"ratio": 8, "block": [16, 16]} and again.kind == "hybrid"
    with pytest.raises(ValueError, match="kind must be one of"):
        rbe.hf.RbeConfig(kind="int4")
    with pytest.raises(ValueError, match="JSON values"):
        rbe.hf.RbeConfig(kind="hybrid", ratio=np.float32(8))
    quantizer = rbe.hf.RbeHfQuantizer(config, pre_quantized=False)
    with pytest.raises(ValueError, match=r"on the CPU; the device map places modules on "
                                         r"\['cuda:0'\]"):
        quantizer.validate_environment(device_map={"": "cuda:0"})
    quantizer.validate_environment(device_map={"": "cpu"})
    assert quantizer.update_dtype(torch.bfloat16) == torch.float32


def test_code_blocks_calibrated_on_texts(dense, tmp_path):
    texts = ["the man eats food", "the weather is lovely today", "blocks store weights",
             "a woman eats", "the food is lovely"]
    config = rbe.hf.RbeConfig(kind="code", bits=3, calibration=texts, calibration_batch_size=2)
    calibrated = AutoModel.from_pretrained(dense, quantization_config=config)
    plain = AutoModel.from_pretrained(dense, quantization_config=rbe.hf.RbeConfig(
        kind="code", bits=3))
    reference = output(AutoModel.from_pretrained(dense))
    # Calibrated on inputs like the test's, the outputs are closer to the float32 model's.
    assert (output(calibrated) - reference).norm() < (output(plain) - reference).norm()
    calibrated.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["calibration"] is None and saved["options"] == {"bits": 3}
    loaded = AutoModel.from_pretrained(tmp_path)
    torch.testing.assert_close(output(loaded), output(calibrated), rtol=0, atol=0)


def test_calibration_texts_reach_compress_as_tokenised_batches(dense, monkeypatch):
    seen = {}

    def compress(model, calibration=None, **options):
        seen.update(options, calibration=calibration)
        return model
    monkeypatch.setattr(rt, "compress", compress)
    texts = ["the man eats food", "the weather is lovely today", "blocks store weights"]
    AutoModel.from_pretrained(dense, quantization_config=rbe.hf.RbeConfig(
        bits=2, calibration=texts, calibration_batch_size=2, calibration_max_length=5))
    assert seen["kind"] == "code" and seen["bits"] == 2          # code blocks by default
    batches = seen["calibration"]
    assert [len(b["input_ids"]) for b in batches] == [2, 1]
    assert batches[0]["input_ids"].shape[1] == 5              # truncated to max_length
    assert batches[1]["input_ids"][0].tolist() == [2, 15, 16, 17, 3]   # [CLS] words [SEP]


ST_RELOAD = """
import sys
import numpy as np
import rbe.hf
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
np.save(sys.argv[2], model.encode({texts!r}, convert_to_numpy=True))
"""


def test_sentence_transformers_round_trip(dense, tmp_path, python_in_child):
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    transformer = Transformer(
        str(dense), model_kwargs={"quantization_config": rbe.hf.RbeConfig(**HYBRID)})
    model = st.SentenceTransformer(modules=[transformer, Pooling(32)], device="cpu")
    assert isinstance(transformer.auto_model.encoder.layer[0].output.dense, rt.RBELinear)
    texts = ["the man eats food", "blocks store weights"]
    expected = model.encode(texts, convert_to_numpy=True)
    model.save(str(tmp_path / "st"))
    done = python_in_child(ST_RELOAD.format(texts=texts), str(tmp_path / "st"),
                           str(tmp_path / "embeddings.npy"))
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "embeddings.npy"), expected)
