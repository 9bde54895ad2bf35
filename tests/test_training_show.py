"""Notebook 02's noise on one real batch: the embeddings come from the embedding layer alone, never the model."""
import pytest
import torch
import transformers

import neftlib.training.models as models
import neftlib.training.show as show
from neftlib.base.recipes import load_config
from neftlib.data.batching import collate
from neftlib.data.prepare import load_instructions, tokenize_rows
from neftlib.training.models import load_base


@pytest.fixture
def no_full_model(monkeypatch):
    """Any attempt to load a whole pretrained model fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the full model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(models, "load_base", refuse)
    monkeypatch.setattr(show, "load_base", refuse)


def _ids(tokenizer) -> torch.Tensor:
    rows, _ = load_instructions("mini", limit=4)
    return collate(tokenize_rows(rows, tokenizer, "alpaca", 48), tokenizer.pad_token_id)["input_ids"]


def _full_model_embeds(folder, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs).get_input_embeddings()(ids)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_embedding_layer_alone_gives_the_full_models_embeddings(tokenizer, monkeypatch, precision):
    ids = _ids(tokenizer)
    expected = _full_model_embeds(models.model_path("tiny-random"), ids, dtype=models.DTYPES[precision])
    with monkeypatch.context() as m:
        m.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                  lambda *a, **k: pytest.fail("the full model was loaded"))
        layer = show.input_embeddings("tiny-random", precision=precision)
    assert layer.weight.device.type == "cpu" and layer.weight.dtype == models.DTYPES[precision]
    assert torch.equal(layer(ids), expected)


def test_sharded_and_pytorch_checkpoints_and_a_scaled_embedding(tmp_path, tokenizer, no_full_model):
    """A checkpoint in several shards, the older .bin format, and Gemma's embedding that scales by sqrt(d)."""
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM

    ids = _ids(tokenizer)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        expected = model.get_input_embeddings()(ids)
    assert torch.equal(expected, model.get_input_embeddings().weight[ids] * 8)  # sqrt(64): the scale matters
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    torch.save(model.state_dict(), tmp_path / "bin.pt")
    (tmp_path / "bin").mkdir()
    model.config.save_pretrained(tmp_path / "bin")
    (tmp_path / "bin.pt").rename(tmp_path / "bin" / "pytorch_model.bin")
    for folder in ("sharded", "bin"):
        with torch.no_grad():
            assert torch.equal(show.input_embeddings(str(tmp_path / folder))(ids), expected), folder


def test_a_hub_model_downloads_only_the_shard_with_the_embedding(tmp_path, tokenizer, monkeypatch, no_full_model):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    folder = models.model_path("tiny-random")
    model = transformers.LlamaForCausalLM.from_pretrained(folder)
    model.save_pretrained(tmp_path / "hub", max_shard_size="100KB")
    shards = sorted(p.name for p in (tmp_path / "hub").glob("*.safetensors"))
    asked = []

    def download(repo_id, filename, revision=None):
        assert repo_id == "org/model" and revision == "abc123"  # the run's pinned revision
        asked.append(filename)
        if not (tmp_path / "hub" / filename).is_file():
            raise EntryNotFoundError(filename)
        return str(tmp_path / "hub" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setitem(models.REVISIONS, "org/model", "abc123")
    monkeypatch.setattr(show, "model_path", lambda name: "org/model")
    monkeypatch.setattr(show, "model_config", lambda name: model.config)
    ids = _ids(tokenizer)
    with torch.no_grad():
        assert torch.equal(show.input_embeddings("org/model")(ids), model.get_input_embeddings()(ids))
    assert len(shards) > 2 and asked[0] == "model.safetensors.index.json" and len(asked) == 2
    assert asked[1] in shards


def test_a_missing_embedding_is_named(tmp_path, no_full_model):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((models.model_path("tiny-random") / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no safetensors or PyTorch checkpoint holds 'model.embed_tokens"):
        show.input_embeddings(str(tmp_path / "m"))


def test_noise_on_batch_never_loads_the_full_model(results, tokenizer, monkeypatch):
    """Notebook 02's table, with every loader of a whole model patched to fail: the same numbers as from the model."""
    from neftlib.pipeline.stages import prepare_data

    cfg = load_config("smoke")
    prepare_data(cfg)
    embeds, mask = show.batch_embeddings(cfg, tokenizer.pad_token_id)
    ids = collate(show.load_prepared(cfg, "train")[: cfg.batch_size], tokenizer.pad_token_id)["input_ids"]
    with torch.no_grad():
        assert torch.equal(embeds, load_base("tiny-random").get_input_embeddings()(ids).float())
    with monkeypatch.context() as m:
        for target in (transformers.AutoModelForCausalLM, models, show):
            m.setattr(target, "from_pretrained" if target is transformers.AutoModelForCausalLM else "load_base",
                      lambda *a, **k: pytest.fail("the full model was loaded"))
        table = show.noise_on_batch(cfg, tokenizer.pad_token_id)
    assert len(table) == cfg.batch_size and (table["NEFTune noise norm"] > 0).all()
    assert table["embedding norm"].tolist() == pytest.approx([float(embeds[i, :int(mask[i].sum())].norm())
                                                              for i in range(cfg.batch_size)])
