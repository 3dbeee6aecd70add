"""Megatron-LM's text generation REST interface: the request checks and the response.

    PUT /api  {"prompts": ["...", ...], "tokens_to_generate": 64, "temperature": 1.0,
               "top_k": 0, "top_p": 0.0, "logprobs": false, "random_seed": 1234}
    200       {"text": [prompt + generated text, ...],
               "segments": [[each token of prompt and generation as text], ...],
               "logprobs": [[log p of every token after the first], ...] or null}

Defaults and limits are Megatron-LM's (tokens_to_generate 64, at most 128 prompts,
temperature in (0, 100], top_k 0..1000, top_p 0..1 and not together with top_k,
tokens_to_generate 0 only with logprobs). Ours in addition: "repetition_penalty" (> 0).
A bad request gets one sentence (HTTP 400).
"""
from __future__ import annotations

from typing import Any, Dict, List

from ..errors import UserError
from .sampling import SamplingParams


class BadRequest(UserError):
    """The request is not one the API accepts; the message is the 400 response."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_request(body: Any) -> Dict[str, Any]:
    """{"prompts", "tokens_to_generate", "logprobs", "params"} from a decoded JSON body."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with a \"prompts\" list.")
    if "prompts" not in body:
        raise BadRequest("prompts argument required.")
    prompts = body["prompts"]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("prompts is not a list of strings.")
    if not prompts:
        raise BadRequest("prompts is empty.")
    if len(prompts) > 128:
        raise BadRequest("Maximum number of prompts is 128.")
    if any(not p.strip() for p in prompts):
        raise BadRequest("every prompt needs some text.")
    tokens = body.get("tokens_to_generate", 64)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise BadRequest("tokens_to_generate must be an integer greater than or equal to 0.")
    logprobs = body.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise BadRequest("logprobs must be a boolean value.")
    if tokens == 0 and not logprobs:
        raise BadRequest("tokens_to_generate=0 implies logprobs should be True.")
    temperature = body.get("temperature", 1.0)
    if not _number(temperature) or not 0.0 < temperature <= 100.0:
        raise BadRequest("temperature must be a positive number less than or equal to 100.0.")
    top_k = body.get("top_k", 0)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 0 <= top_k <= 1000:
        raise BadRequest("top_k must be an integer equal to or greater than 0 and less than or equal to 1000.")
    top_p = body.get("top_p", 0.0)
    if not _number(top_p) or not 0.0 <= top_p <= 1.0:
        raise BadRequest("top_p must be a number between 0 and 1.0.")
    if top_p > 0.0 and top_k > 0:
        raise BadRequest("cannot set both top-k and top-p samplings.")
    seed = body.get("random_seed", None)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise BadRequest("random_seed must be a non-negative integer.")
    penalty = body.get("repetition_penalty", 1.0)
    if not _number(penalty) or penalty <= 0:
        raise BadRequest("repetition_penalty must be a positive number (1.0 = off).")
    params = SamplingParams(temperature=float(temperature), top_k=top_k, top_p=float(top_p),
                            repetition_penalty=float(penalty), seed=seed)
    return {"prompts": prompts, "tokens_to_generate": tokens, "logprobs": logprobs, "params": params}


def respond(generator, request: Dict[str, Any]) -> Dict[str, Any]:
    """Run the request on this rank (every rank calls it); the response body (rank 0 sends it)."""
    items = generator.generate(request["prompts"], request["tokens_to_generate"], request["params"],
                               return_log_probs=request["logprobs"])
    texts: List[str] = []
    segments: List[List[str]] = []
    logprobs: List[List[float]] = []
    for item in items:
        tokens = [t for t in item.prompt_tokens + item.tokens if t != generator.eos_id]
        texts.append(generator.tokenizer.detokenize(tokens))
        segments.append([generator.tokenizer.detokenize([t]) for t in tokens])
        logprobs.append((item.prompt_log_probs or []) + item.log_probs)
    return {"text": texts, "segments": segments, "logprobs": logprobs if request["logprobs"] else None}
