"""Transformer-XL generation over turns: each turn continues from the segment memory of
the previous ones (Chinese-Transformer-XL's interactive generation).

    session = TransformerXLSession(model, vocab_size=tokenizer.vocab_size)
    reply = session.generate([prompt_ids], max_new_tokens=30, params=SamplingParams(greedy=True))
    reply = session.generate([next_prompt_ids], ...)   # attends to the memory of turn 1

A turn is one segment of the serial model: its prompt and the tokens generated so far
attend to the memory M the turn started with and to each other. Within the turn the
layers' inputs are kept whole (memory + every token of the turn: the model's memory
length is lifted for the turn), so each new token costs one pass of one token. At the
end the last generated token is fed too, and the memory is cut back to the model's
mem_length: exactly the mems the serial model returns after reading the whole turn as
one segment with memory M. Rows of a batch are separate texts of equal prompt length.

Any TP x PP: with pipeline parallelism each stage keeps the memory of its own layers
(what the serial model's mems for those layers are), a pass runs stage by stage
(decoders.run_pipeline_stage), and the last stage samples and broadcasts each new token
(and its log-probability) over the pipeline group, so every stage feeds the same token.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence

import torch

from ..errors import ConfigError
from .decoders import run_pipeline_stage
from .generation import Generation, StepCallback, agreed_seed, from_last_stage, is_last_stage
from .sampling import SamplingParams, new_generator
from .vocab_parallel_sampling import sample_next_tokens, token_log_probs


@contextlib.contextmanager
def _memory_length(model, length: int):
    saved = model.mem_length
    model.mem_length = length
    try:
        yield
    finally:
        model.mem_length = saved


class TransformerXLSession:
    def __init__(self, model, vocab_size: int):
        self.model = model
        self.vocab_size = vocab_size
        self.mems: Optional[List[torch.Tensor]] = None    # this stage's layers' memory
        self.history: Optional[torch.Tensor] = None   # every token of the conversation (repetition penalty)

    def reset(self) -> None:
        self.mems = self.history = None

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, params: SamplingParams,
                 eos_id: Optional[int] = None, on_step: Optional[StepCallback] = None) -> Generation:
        lengths = {len(p) for p in prompts}
        if len(lengths) != 1 or 0 in lengths:
            raise ConfigError("Transformer-XL rows are separate texts in lockstep; give prompts of one (non-zero) "
                              "token length.")
        model, batch = self.model, len(prompts)
        device = next(model.parameters()).device
        tokens = torch.tensor([list(p) for p in prompts], dtype=torch.long, device=device)
        memory = self.mems[0].shape[0] if self.mems else 0
        generator = new_generator(agreed_seed(None if params.greedy else params.seed))
        history = tokens if self.history is None else torch.cat([self.history, tokens], dim=1)
        result = Generation([[] for _ in range(batch)], [[] for _ in range(batch)])
        finished = torch.zeros(batch, dtype=torch.bool)
        with _memory_length(model, memory + tokens.shape[1] + max_new_tokens + 1):
            logits, mems = self._pass(tokens, self.mems)
            for step in range(max_new_tokens):
                chosen = torch.zeros(batch, 2, dtype=torch.float64)
                if is_last_stage():
                    last = logits[:, -1]
                    new = sample_next_tokens(last, params, generator, history, self.vocab_size)
                    chosen[:, 0] = new.cpu().double()
                    chosen[:, 1] = token_log_probs(last[:, None], new[:, None], self.vocab_size)[:, 0].cpu().double()
                chosen = from_last_stage(chosen)
                new = chosen[:, 0].long()
                for row in range(batch):
                    if not finished[row]:
                        result.tokens[row].append(int(new[row]))
                        result.log_probs[row].append(float(chosen[row, 1]))
                if eos_id is not None:
                    finished |= new == eos_id
                history = torch.cat([history, new[:, None].to(device)], dim=1)
                if on_step is not None:
                    on_step(step, new.tolist(), finished.tolist())
                # The last token is fed too: the next turn's memory holds the whole turn.
                logits, mems = self._pass(new[:, None].to(device), mems)
                if bool(finished.all()):
                    break
        self.mems = [m[-model.mem_length:] for m in mems] if model.mem_length > 0 else None
        self.history = history
        return result

    def _pass(self, tokens: torch.Tensor, mems):
        """(logits on the last stage, else None; this stage's new mems)."""
        model, out = self.model, {}

        def compute(received):
            if received is not None:
                model.set_input_tensor(received)
            output, out["mems"] = model(tokens, mems)
            return output
        return run_pipeline_stage(model, compute, model.config.params_dtype), out["mems"]
