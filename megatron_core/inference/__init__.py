"""Text generation: KV cache, sampling, incremental decoding for every model family.

  kv_cache.py                 InferenceContext: the per-layer key/value cache passed down
                              the transformer (GQA: the kv heads only)
  sampling.py                 SamplingParams and the pure tensor code of choosing a token
  vocab_parallel_sampling.py  the same over vocab-parallel logits (what crosses TP ranks)
  decoders.py                 one step per family (GPT/Llama, RoFormer LM, T5), PP stage passes
  generation.py               the loop: left-padded batches, eos, seeds, PP broadcasts
  beam_search.py              the k best beams per prompt, length penalty, cache rows reordered
  transformer_xl.py           Transformer-XL turns that continue from the segment memory
  fill_mask.py                [MASK] candidates of BERT / RoFormer
  checkpoint_model.py         a model for inference from a training checkpoint
  text_generation.py          text in, text out (what the tools use)
"""
from .generation import Generation, generate
from .kv_cache import InferenceContext
from .sampling import SamplingParams

__all__ = ["Generation", "InferenceContext", "SamplingParams", "generate"]
