"""Tiny Llama and Qwen2 models built from configs, saved to disk and reloaded, for fast tests.

d_model, d_mlp and d_vocab are all different so that a transposed weight or a wrong axis fails loudly.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from interp.core.models import LoadedModel, ModelPair, load_model
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.evaluation.suite import EvalConfig, EvalSuite
from interp.measures.layer_map import LayerMap, manual_layer_map

D_MODEL, D_MLP, N_LAYERS = 64, 176, 4
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    corpus = list(harmful_prompts("all").instructions + harmless_prompts("all").instructions)
    arithmetic = arithmetic_prompts("all", n=50)
    corpus += list(arithmetic.instructions + arithmetic.answers) + ["I'm sorry, but I can't help with that."]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def build_tiny(
    folder: Path, arch: str = "llama", n_layers: int = N_LAYERS, vocab_size: int = 300, seed: int = 0
) -> Path:
    tokenizer = make_tokenizer(vocab_size)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny-qwen"), "qwen2")


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model_dir(request, tiny_llama, tiny_qwen) -> Path:
    return tiny_llama if request.param == "llama" else tiny_qwen


@pytest.fixture(autouse=True)
def float32_by_default(monkeypatch):
    """``--dtype auto`` resolves to float32 in tests, whatever this CPU has (tests that mean bfloat16 say
    so), so every machine runs the same numbers."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch, request):
    """Each test gets its own cache, except tests marked slow, which share the real one."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- shared helpers
QUICK_EVAL = EvalConfig(max_new_tokens=4, task_max_new_tokens=4, batch_size=8, kl_batch_size=4)


def perturbed(model: LoadedModel, scale: float = 0.05, seed: int = 1) -> LoadedModel:
    """The 'fine-tuned' model: the base with every weight nudged by seeded noise (a new LoadedModel)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.hf.parameters():
            param.add_(scale * param.std() * torch.randn(param.shape, generator=generator))
    return model.with_hf(model.hf)


def layer_map_for(base: LoadedModel, finetuned: LoadedModel, selected=(1, 2)) -> LayerMap:
    """A hand-made layer map for a pair, selecting ``selected``."""
    return manual_layer_map(base, finetuned, selected)


def small_analysis_prompts():
    """A few built-in prompts per set: enough for an analysis of a tiny pair."""
    from interp.analyze import AnalysisPrompts

    return AnalysisPrompts(
        harmful=harmful_prompts("train").head(16),
        harmless=harmless_prompts("train").head(16),
        task=arithmetic_prompts("train", n=30).head(16),
        steer_harmful=harmful_prompts("val").head(4),
        steer_harmless=harmless_prompts("val").head(4),
    )


def tiny_suite() -> EvalSuite:
    return EvalSuite(
        harmful=harmful_prompts("val").head(4),
        harmless=harmless_prompts("val").head(4),
        task=arithmetic_prompts("val", n=20).head(4),
        xstest=harmless_prompts("train").head(3),
    )


@pytest.fixture()
def saved_pair(tiny_llama, tmp_path) -> ModelPair:
    """The tiny base and a perturbed 'fine-tuned' copy saved to disk (restoration reloads fresh copies)."""
    perturbed(load_model(tiny_llama)).hf.save_pretrained(tmp_path / "ft")
    load_model(tiny_llama).tokenizer.save_pretrained(tmp_path / "ft")
    return ModelPair(load_model(tiny_llama), load_model(tmp_path / "ft"))


def scripted_lm(
    folder: Path, reply: str, after: str, chat_template: str | None = None, words: Sequence[str] = ()
) -> Path:
    """A tiny causal LM that answers ``reply`` whenever its prompt ends with the token ``after``.

    Every block's attention and MLP output matrices are zeroed, so the last position's final hidden
    state is its own token's embedding (normalised); the chain's tokens get one-hot embeddings and the
    unembedding maps each to the next (the last to the end token). Each token of the reply must be
    distinct: ``words`` are added to the vocabulary as whole tokens. ``chat_template`` replaces ChatML."""
    build_tiny(folder, "llama", n_layers=2)
    model = LlamaForCausalLM.from_pretrained(folder)
    tokenizer = make_tokenizer()
    if words:
        tokenizer.add_tokens(list(words))
        model.resize_token_embeddings(len(tokenizer))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    start = tokenizer(after, add_special_tokens=False).input_ids[-1:]
    chain = start + tokenizer(reply, add_special_tokens=False).input_ids
    assert len(set(chain)) == len(chain), f"a token repeats in {tokenizer.convert_ids_to_tokens(chain)}"
    silence(model)
    one_hot(model, chain)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        for i in range(len(chain)):
            following = chain[i + 1] if i + 1 < len(chain) else tokenizer.eos_token_id
            model.lm_head.weight[following, i] = 10.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def silence(model) -> None:
    """Zero what every block writes: the residual stream stays the token embeddings."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


def one_hot(model, tokens: Sequence[int]) -> None:
    """Token ``tokens[i]`` gets the embedding e_i."""
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        for i, token in enumerate(tokens):
            embed[token] = 0.0
            embed[token, i] = 1.0
