"""A pipeline stage's Transformer-XL memory: its own layers' mems, one stream per micro-batch.

Under a pipeline schedule each stage holds only its layers, so it keeps only their mems;
nothing about memory crosses the p2p link. A global batch of M micro-batches is M
streams of text: micro-batch i of iteration k+1 continues the text of micro-batch i of
iteration k (as Chinese-Transformer-XL continues each batch row), so the store is keyed
by the micro-batch index the schedule is running (PipelineChunk.current_microbatch).

    memory = SegmentMemory()
    mems = memory.read(i)          # None at the start of stream i
    memory.write(i, new_mems)      # [m, b, h] per layer of this stage, detached
    memory.clear()                 # a new text (or evaluation) starts from empty memory

Evaluation runs its own streams: TransformerXLModel.evaluation_scope() swaps in a second
SegmentMemory for them (the training loop's evaluate enters it), or by hand save
`memory.state()` and `load_state` it back after.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch


class SegmentMemory:
    def __init__(self):
        self._streams: Dict[int, List[torch.Tensor]] = {}

    def read(self, stream: int) -> Optional[List[torch.Tensor]]:
        return self._streams.get(stream)

    def write(self, stream: int, mems: Sequence[torch.Tensor]) -> None:
        self._streams[stream] = [m.detach() for m in mems]

    def streams(self) -> List[int]:
        return sorted(self._streams)

    def clear(self) -> None:
        self._streams.clear()

    def state(self) -> Dict[int, List[torch.Tensor]]:
        return {stream: list(mems) for stream, mems in self._streams.items()}

    def load_state(self, state: Dict[int, List[torch.Tensor]]) -> None:
        self._streams = {int(stream): list(mems) for stream, mems in state.items()}
