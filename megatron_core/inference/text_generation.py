"""Text in, text out: a loaded checkpoint with its tokenizer, for tools/generate_text.py and
tools/run_text_generation_server.py.

    generator = TextGenerator(loaded, tokenizer)
    for item in generator.generate(["清华大学位于"], 32, SamplingParams(top_p=0.9)):
        item.text, item.tokens, item.log_probs

GPT / Llama and RoFormer (LM mode) continue each prompt; T5 reads it with the encoder and
writes the answer from its start token ([BOS], as the T5 dataset's decoder input);
Transformer-XL continues the conversation: with `keep_memory=True` every call is a turn
that attends to the memory of the previous ones (`reset()` forgets it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from ..errors import ConfigError
from ..models.registry import get_family
from .checkpoint_model import LoadedModel
from .decoders import CausalLMDecoder, RoFormerLMDecoder, T5Decoder
from .fill_mask import fill_mask
from .generation import Generation, generate
from .sampling import SamplingParams
from .transformer_xl import TransformerXLSession

@dataclass
class GeneratedText:
    prompt: str
    prompt_tokens: List[int]
    tokens: List[int]                 # the new tokens (eos included when it stopped there)
    text: str                         # the new tokens as text
    log_probs: List[float]
    prompt_log_probs: Optional[List[float]] = None


def _first_set(*values):
    return next((v for v in values if v is not None), None)


class TextGenerator:
    def __init__(self, loaded: LoadedModel, tokenizer, keep_memory: bool = False):
        self.loaded, self.tokenizer = loaded, tokenizer
        self.keep_memory = keep_memory
        self.eos_id = _first_set(tokenizer.eod, tokenizer.eos)
        self.spec = get_family(loaded.family)      # its generation adapter and fill-mask ability
        self._session = TransformerXLSession(loaded.model, loaded.vocab_size) \
            if self.spec.generation == "transformer_xl" else None

    @property
    def family(self) -> str:
        return self.loaded.family

    @property
    def converses(self) -> bool:
        """Each call is a turn of one conversation (Transformer-XL's segment memory)."""
        return self._session is not None

    def reset(self) -> None:
        if self._session is not None:
            self._session.reset()

    def _decoder(self):
        model, adapter = self.loaded.model, self.spec.generation
        if adapter == "causal_lm":
            return CausalLMDecoder(model)
        if adapter == "roformer_lm":
            return RoFormerLMDecoder(model)
        if adapter == "t5":
            return T5Decoder(model, _first_set(self.tokenizer.bos, self.tokenizer.cls))
        raise ConfigError(f"{self.loaded.path} holds a {self.loaded.family} model, which does not generate text; use "
                          f"--fill-mask for a masked language model.")

    def tokenize(self, prompt: str) -> List[int]:
        return self.tokenize_all([prompt])[0]

    def tokenize_all(self, prompts: Sequence[str]) -> List[List[int]]:
        # The batch call: a Rust-backed tokenizer encodes it without holding the GIL, so a
        # server thread reading a long prompt does not stall the others.
        token_lists = self.tokenizer.tokenize_batch(list(prompts))
        for prompt, ids in zip(prompts, token_lists):
            if not ids:
                raise ConfigError(f"the prompt {prompt!r} has no tokens; give some text.")
        return token_lists

    @property
    def max_positions(self) -> Optional[int]:
        """The most tokens (prompt + new) a row may hold: the model's positions, else the
        checkpoint's --max-position-embeddings or --seq-length (rotary and relative models
        run past them, but were trained within them); None when nothing says."""
        args = self.loaded.args
        return (getattr(self.loaded.model, "max_sequence_length", None) or args.get("max_position_embeddings")
                or args.get("seq_length"))

    def generate(self, prompts: Sequence[str], max_new_tokens: int, params: SamplingParams,
                 return_log_probs: bool = False,
                 on_step: Optional[Callable[[int, List[int], List[bool]], None]] = None,
                 token_lists: Optional[List[List[int]]] = None) -> List[GeneratedText]:
        """`token_lists`: the prompts already tokenized (the server checks their lengths first)."""
        if token_lists is None:
            token_lists = self.tokenize_all(prompts)
        if self._session is not None:
            result = self._transformer_xl_turns(token_lists, max_new_tokens, params, on_step)
        else:
            result = generate(self._decoder(), token_lists, max_new_tokens, params, self.loaded.vocab_size,
                              eos_id=self.eos_id, max_sequence_length=self._max_length(),
                              return_log_probs=return_log_probs, return_prompt_log_probs=return_log_probs,
                              on_step=on_step,
                              device=next(self.loaded.model.parameters()).device)
        out = []
        for i, (prompt, ids) in enumerate(zip(prompts, token_lists)):
            tokens = result.tokens[i]
            out.append(GeneratedText(prompt, ids, tokens, self.detokenize(tokens), result.log_probs[i],
                                     result.prompt_log_probs[i] if result.prompt_log_probs else None))
        return out

    def _transformer_xl_turns(self, token_lists, max_new_tokens, params, on_step) -> Generation:
        """One turn of the conversation (keep_memory), or each prompt on a fresh memory; rows
        of a Transformer-XL batch run in lockstep, so prompts of other lengths run one by one."""
        if self.keep_memory or len({len(ids) for ids in token_lists}) == 1:
            if not self.keep_memory:
                self._session.reset()
            return self._session.generate(token_lists, max_new_tokens, params, self.eos_id, on_step)
        result = Generation([], [])
        for ids in token_lists:
            self._session.reset()
            one = self._session.generate([ids], max_new_tokens, params, self.eos_id)
            result.tokens += one.tokens
            result.log_probs += one.log_probs
        return result

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The tokens as text, without the end-of-document token."""
        return self.tokenizer.detokenize([t for t in tokens if t != self.eos_id])

    def _max_length(self) -> Optional[int]:
        config = self.loaded.config
        if config.position_embedding_type == "learned_absolute":
            return getattr(self.loaded.model, "max_sequence_length", None)
        return None

    def fill_mask(self, texts: Sequence[str], top_k: int) -> List[List[List[tuple]]]:
        """Per text, per [MASK]: the top_k (token, probability) pairs; inputs are [CLS] text [SEP]."""
        if not self.spec.fill_mask:
            raise ConfigError(f"--fill-mask needs a BERT, MegatronBERT or RoFormer checkpoint; {self.loaded.path} "
                              f"holds a {self.loaded.family} model.")
        tok = self.tokenizer
        if tok.mask is None:
            raise ConfigError(f"the tokenizer {tok.name} has no [MASK] token; use the BERT WordPiece vocabulary the "
                              f"model was trained with.")
        inputs = []
        for text in texts:
            ids = tok.tokenize(text)
            if tok.mask not in ids:
                raise ConfigError(f"the input {text!r} holds no [MASK]; write [MASK] where a token should be "
                                  f"predicted.")
            inputs.append([tok.cls] + ids + [tok.sep])
        return fill_mask(self.loaded.model, inputs, tok.mask, top_k, self.loaded.vocab_size)
