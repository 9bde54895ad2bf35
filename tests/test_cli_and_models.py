import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neftlib.__main__ import WINRATE_KEYS

PROJ = Path(__file__).resolve().parents[1]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "neftlib", *args], cwd=PROJ, capture_output=True, text=True,
                          timeout=120)


def test_winrate_cli_gives_the_leaderboard_numbers(data_dir):
    proc = _cli("winrate", str(data_dir / "alpaca_eval" / "alpaca-7b" / "annotations_alpaca_eval_gpt4.json"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert tuple(stats) == WINRATE_KEYS
    # AlpacaEval leaderboard (alpaca_eval_gpt4): alpaca-7b 26.46 +- 1.54, 205 / 584 / 16 of 805, length 396.
    assert round(stats["win_rate"], 2) == 26.46 and round(stats["standard_error"], 2) == 1.54
    assert (stats["n_wins"], stats["n_wins_base"], stats["n_draws"], stats["n_total"]) == (205, 584, 16, 805)
    assert stats["avg_length"] == 396


def test_analyze_cli_on_published_outputs(data_dir):
    base = data_dir / "alpaca_eval"
    proc = _cli("analyze", str(base / "alpaca-7b" / "model_outputs.json"),
                str(base / "alpaca-7b-neft" / "model_outputs.json"), "--cutoff", "50")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 2 and rows[1]["avg_chars"] > 2 * rows[0]["avg_chars"]  # NEFT answers are longer
    assert all(r["n_kept"] + r["n_dropped"] == 805 for r in rows)


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = _cli("winrate", str(bad))
    assert proc.returncode == 2 and "bad.json" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_packaged_smollm2_loads_offline_and_answers(monkeypatch):
    """The real packaged weights (converted once into .cache/) answer a simple question."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from neftlib.data.prepare import format_prompt
    from neftlib.evaluation.generate import generate_answers
    from neftlib.training.models import load_base, load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_base("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    prompt = format_prompt({"instruction": "What is the capital of France?", "input": ""}, "chat", tok)
    answer, = generate_answers(model, tok, [prompt], max_new_tokens=20, progress=False)
    assert "Paris" in answer


def test_unknown_model_is_named():
    from neftlib.training.models import model_path

    with pytest.raises(ValueError, match="unknown model 'smollm3'.*smollm2-135m-instruct"):
        model_path("smollm3")


def test_generation_is_batched_left_padded_and_order_preserving(tokenizer):
    """Batched answers equal one-at-a-time answers, in the input order."""
    from neftlib.evaluation.generate import generate_answers
    from neftlib.training.models import load_base

    model = load_base("tiny-random")
    prompts = ["Hi", "A much longer prompt than the first one, to force padding", "Mid length prompt"]
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=3, progress=False)
    single = [generate_answers(model, tokenizer, [p], max_new_tokens=6, batch_size=1, progress=False)[0]
              for p in prompts]
    assert batched == single


def _odd_llama(folder: Path) -> Path:
    """A tiny LLaMA whose MLP outputs 40 features: not a multiple of the 32 that bitsandbytes' AVX512-BF16
    packing needs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=40, num_hidden_layers=1,
                         num_attention_heads=3, num_key_value_heads=3, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_4bit_model_answers_in_eval_mode_on_any_cpu(tmp_path):
    from neftlib.training.models import load_base

    model = load_base(str(_odd_llama(tmp_path / "odd")), load_in_4bit=True, device="cpu")
    ids = torch.arange(1, 13).view(2, 6)
    model.eval()
    with torch.no_grad():
        evaluated = model(ids).logits  # where bitsandbytes would repack its weights on an AVX512-BF16 CPU
    model.train()
    with torch.no_grad():
        trained = model(ids).logits
    packed = [n for n, m in model.named_modules()
              if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]
    assert not packed
    assert torch.equal(evaluated, trained)  # one kernel for both modes: the same numbers on every CPU


def _has_avx512_bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


@pytest.mark.skipif(not _has_avx512_bf16(), reason="this CPU has no AVX512-BF16: bitsandbytes never packs here")
def test_avx512_bf16_packing_is_switched_off_where_bitsandbytes_would_take_it():
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    from neftlib.training.models import portable_4bit

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(48, 40, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.load_state_dict({"weight": torch.randn(40, 48)})  # quantized on the move below
    layer = layer.to("cpu")
    layer(torch.zeros(1, 48))  # quantizes
    assert layer.support_avx512bf16_for_cpu  # bitsandbytes itself would take the packed bf16 path here
    wrapper = torch.nn.Sequential(layer)
    assert portable_4bit(wrapper) == 1
    layer.eval()
    x = torch.randn(3, 48)
    with torch.no_grad():
        out = layer(x)
    state = layer.weight.quant_state
    assert not getattr(state, "packing_format_for_cpu", False)
    expected = torch.nn.functional.linear(x, dequantize_4bit(layer.weight.data, state).to(x.dtype))
    assert torch.allclose(out, expected, atol=1e-6)


def test_importing_bitsandbytes_after_neftlib_writes_nothing_to_stderr():
    # On AVX512-BF16 CPUs bitsandbytes logs at import that a hub kernel is missing; nothing a user can act on
    proc = subprocess.run([sys.executable, "-c", "import neftlib, bitsandbytes, peft"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
