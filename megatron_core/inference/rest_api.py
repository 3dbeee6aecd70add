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

`admit` checks a request before any model work, so that no request can cost more than
the limits allow: at most `max_batch_size` prompts (--max-batch-size, 128 by default as in
Megatron-LM), and each prompt's tokens plus tokens_to_generate within the model's
positions. The body's size is the HTTP layer's limit (http_server.py), checked before
the body is read.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ..errors import UserError
from .sampling import SamplingParams

MEGATRON_MAX_PROMPTS = 128


class BadRequest(UserError):
    """The request is not one the API accepts; the message is the 400 response."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_request(body: Any, max_batch_size: int = MEGATRON_MAX_PROMPTS) -> Dict[str, Any]:
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
    if len(prompts) > max_batch_size:
        raise BadRequest(f"the request has {len(prompts)} prompts, more than the server's limit of {max_batch_size} "
                         f"(--max-batch-size); send at most {max_batch_size} per request.")
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


def decode_body(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError: JSONDecodeError and integers too long to convert; RecursionError: deep nesting
        raise BadRequest("the request body is not JSON; send a JSON object with a \"prompts\" list.") from None


def check_positions(token_lists: Sequence[Sequence[int]], tokens_to_generate: int, max_positions: int) -> None:
    """Every prompt's tokens plus tokens_to_generate fit the model's positions."""
    for index, ids in enumerate(token_lists):
        total = len(ids) + tokens_to_generate
        if total > max_positions:
            raise BadRequest(f"prompt {index} has {len(ids)} tokens and tokens_to_generate is {tokens_to_generate}: "
                             f"{total} tokens, more than the model's {max_positions} positions; shorten the prompt "
                             f"or lower tokens_to_generate so that the two add up to at most {max_positions}.")


def admit(raw: bytes, tokenize_all: Callable[[List[str]], List[List[int]]], max_positions: int,
          max_batch_size: int = MEGATRON_MAX_PROMPTS) -> Dict[str, Any]:
    """The request of a JSON body, with its prompts tokenized ("prompt_tokens"), or BadRequest."""
    request = parse_request(decode_body(raw), max_batch_size)
    try:
        token_lists = tokenize_all(request["prompts"])
    except UserError as error:      # a prompt with no tokens
        raise BadRequest(str(error)) from None
    check_positions(token_lists, request["tokens_to_generate"], max_positions)
    request["prompt_tokens"] = token_lists
    return request


def answer(generator, request: Dict[str, Any]) -> Tuple[int, Any]:
    """Every rank: (HTTP status, body) of an admitted request."""
    try:
        return 200, respond(generator, request)
    except UserError as error:      # the same on every rank
        return 400, str(error)


def respond(generator, request: Dict[str, Any]) -> Dict[str, Any]:
    """Run the request on this rank (every rank calls it); the response body (rank 0 sends it)."""
    items = generator.generate(request["prompts"], request["tokens_to_generate"], request["params"],
                               return_log_probs=request["logprobs"], token_lists=request.get("prompt_tokens"))
    texts: List[str] = []
    segments: List[List[str]] = []
    logprobs: List[List[float]] = []
    for item in items:
        tokens = [t for t in item.prompt_tokens + item.tokens if t != generator.eos_id]
        texts.append(generator.tokenizer.detokenize(tokens))
        segments.append([generator.tokenizer.detokenize([t]) for t in tokens])
        logprobs.append((item.prompt_log_probs or []) + item.log_probs)
    return {"text": texts, "segments": segments, "logprobs": logprobs if request["logprobs"] else None}
