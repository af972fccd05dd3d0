"""Run a planning loop eagerly, or capture it once in a CUDA graph and replay it (static shapes only)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch


class GraphedLoop:
    """``loop()`` reads and writes only tensors that stay allocated between calls (static buffers): the caller copies
    inputs into them before a call and reads outputs after it.

    With ``capture=True`` (CUDA tensors) the first call warms ``loop`` up on a side stream (Triton compilation,
    autotuning, cuBLAS workspaces), captures it into a ``torch.cuda.CUDAGraph`` and replays it; later calls only
    replay. ``preserve`` lists state tensors the loop advances (e.g. a Philox key): they are restored after the
    warm-up runs, so the first replay sees the same state an eager run would have seen.
    """

    def __init__(self, loop: Callable[[], None], capture: bool, preserve: Sequence[torch.Tensor] = (), warmup_runs: int = 2):
        self.loop = loop
        self.capture = capture
        self.preserve = tuple(preserve)
        self.warmup_runs = warmup_runs
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    def __call__(self) -> None:
        if not self.capture:
            self.loop()
            return
        if self.graph is None:
            self.graph = self._capture()
        self.graph.replay()

    def _capture(self) -> torch.cuda.CUDAGraph:
        saved = [t.clone() for t in self.preserve]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_runs):
                self.loop()
            for t, s in zip(self.preserve, saved):
                t.copy_(s)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.loop()
        except RuntimeError as err:  # e.g. a user callable (constraints, optimizer) that syncs with the host
            raise RuntimeError(f"capturing the planning loop in a CUDA graph failed: {err}. Everything the loop calls "
                               "must run on the device without a host sync; pass cuda_graph=False to plan eagerly"
                               ) from err
        return graph
