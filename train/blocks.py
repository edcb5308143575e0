"""Training batches: full blocks of seq_len tokens over the cached token stream, random blocks of
the same shape for benchmarks, and the batch order (a pure function of seed, epoch and position,
so a resumed run continues exactly where it stopped)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from train.sources import DataError


class PackedBlocks:
    """Full blocks of `seq_len` tokens over a cached token stream (memory-mapped, never loaded whole)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n_blocks = len(tokens) // seq_len

    @classmethod
    def from_cache(cls, folder: str | Path, split: str, seq_len: int) -> PackedBlocks:
        path = Path(folder) / f"{split}.bin"
        if path.stat().st_size == 0:
            return cls(np.zeros(0, dtype=np.uint16), seq_len)
        return cls(np.memmap(path, dtype=np.uint16, mode="r"), seq_len)

    def __len__(self) -> int:
        return self.n_blocks

    def block(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[i * self.seq_len:(i + 1) * self.seq_len])

    def batch(self, indices) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.block(int(i)) for i in indices]).astype(np.int64))  # (B, T)


class RandomBlocks:
    """Random tokens in the shape of PackedBlocks, for benchmarks (no dataset needed)."""

    def __init__(self, n_blocks: int, seq_len: int, vocab_size: int, seed: int = 0):
        self.n_blocks, self.seq_len, self.vocab, self.seed = n_blocks, seq_len, vocab_size, seed

    def __len__(self) -> int:
        return self.n_blocks

    def batch(self, indices) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(indices[0]))
        return torch.randint(0, self.vocab, (len(indices), self.seq_len), generator=g)


class BatchOrder:
    """Which blocks make micro-batch number `k`: a pure function of (seed, epoch, k), so the
    position saved in a checkpoint is all a resumed run needs. Each process takes a strided
    share of every global micro-batch (data parallel)."""

    def __init__(self, n_blocks: int, micro_batch: int, seed: int, rank: int = 0, world: int = 1):
        self.global_batch = micro_batch * world
        if n_blocks < self.global_batch:
            raise DataError(f"only {n_blocks} blocks of data, fewer than one batch of {self.global_batch}; "
                            "add data or lower micro_batch / seq_len")
        self.n_blocks, self.micro_batch, self.seed, self.rank = n_blocks, micro_batch, seed, rank
        self.per_epoch = n_blocks // self.global_batch
        self._perm_epoch, self._perm = -1, None

    def indices(self, k: int) -> np.ndarray:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            self._perm_epoch = epoch
        start = j * self.global_batch + self.rank * self.micro_batch
        return self._perm[start:start + self.micro_batch]
