#!/usr/bin/env python
"""Tokens/s of greedy decoding: our KV cache vs full recomputation vs transformers' generate
on the same model (exported through the HF registry), in the same run; prints JSON.

    python -m bench.generate [--rounds 5] [--new-tokens 64] [--family llama]

The model: a Llama-style (or GPT-2 style) GPT, 4 layers, hidden 256, 8 heads (Llama: 4 kv
heads), vocabulary 21,128 padded to 21,248 (the BERT Chinese one), random weights, fp32,
one process on CPU. Each round decodes the same 16-token prompt (batch 1) three ways, in
an order that rotates per round:
  * cached:     megatron_core.inference.generate (prompt in one pass, then one token a pass);
  * recompute:  the model's ordinary forward over the whole sequence at every step;
  * hf:         transformers' generate(do_sample=False) of the exported model.
All three must produce the same tokens (checked). Reported: tokens/s of each per round and
the median of the paired ratios cached/hf (goal >= 1.0) and cached/recompute.
"""
import argparse
import json
import statistics
import tempfile
import time

import torch

from megatron_core.cli import run as run_cli

VOCAB, PADDED, MAX_POSITIONS = 21128, 21248, 512


def build(family):
    from megatron_core.models.gpt import GPTModel
    from megatron_core.models.llama import llama_config
    from megatron_core.transformer.config import TransformerConfig
    if family == "llama":
        config = llama_config(num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=4,
                              ffn_hidden_size=688, init_method_std=0.05)
    else:
        config = TransformerConfig(num_layers=4, hidden_size=256, num_attention_heads=8, activation="gelu_tanh",
                                   hidden_dropout=0.0, attention_dropout=0.0, init_method_std=0.05)
    return GPTModel(config, PADDED, MAX_POSITIONS).eval()


def export(model, family, directory):
    import transformers
    from safetensors.torch import save_file
    from megatron_core.models.hf.registry import get_mapping
    mapping = get_mapping(family if family == "llama" else "gpt")
    spec = mapping.spec(model.config, vocab_size=VOCAB, padded_vocab_size=PADDED, max_sequence_length=MAX_POSITIONS)
    with open(f"{directory}/config.json", "w") as f:
        json.dump(mapping.config_to_hf(spec), f)
    save_file(mapping.state_dict_to_hf(model.state_dict(), spec), f"{directory}/model.safetensors")
    return transformers.AutoModelForCausalLM.from_pretrained(directory).eval()


@torch.no_grad()
def decode_cached(model, prompt, new_tokens):
    from megatron_core.inference.decoders import CausalLMDecoder
    from megatron_core.inference.generation import generate
    from megatron_core.inference.sampling import SamplingParams
    return generate(CausalLMDecoder(model), [prompt], new_tokens, SamplingParams(greedy=True), VOCAB).tokens[0]


@torch.no_grad()
def decode_recompute(model, prompt, new_tokens):
    ids = list(prompt)
    for _ in range(new_tokens):
        ids.append(int(model(torch.tensor([ids]))[0, -1, :VOCAB].argmax()))
    return ids[len(prompt):]


@torch.no_grad()
def decode_hf(hf, prompt, new_tokens):
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                      do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--family", choices=["llama", "gpt"], default="llama")
    args = parser.parse_args(argv)
    import torch.distributed as dist
    from megatron_core import mpu
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    mpu.initialize_model_parallel(1)
    torch.manual_seed(0)
    model = build(args.family)
    prompt = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        hf = export(model, args.family, tmp)
    ways = {"cached": lambda: decode_cached(model, prompt, args.new_tokens),
            "recompute": lambda: decode_recompute(model, prompt, args.new_tokens),
            "hf": lambda: decode_hf(hf, prompt, args.new_tokens)}
    for way in ways.values():      # warm-up, and the three must agree
        way()
    outputs = {name: way() for name, way in ways.items()}
    if len({tuple(v) for v in outputs.values()}) != 1:
        raise SystemExit(f"the three decodings disagree: {outputs}")
    rates = {name: [] for name in ways}
    names = list(ways)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            start = time.perf_counter()
            ways[name]()
            rates[name].append(args.new_tokens / (time.perf_counter() - start))
    result = {"family": args.family, "new_tokens": args.new_tokens, "threads": torch.get_num_threads(),
              "tokens_per_second": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
              "cached_over_hf": round(statistics.median(c / h for c, h in zip(rates["cached"], rates["hf"])), 3),
              "cached_over_recompute": round(statistics.median(
                  c / f for c, f in zip(rates["cached"], rates["recompute"])), 3)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
