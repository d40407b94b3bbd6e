"""A tiny, fully specified random number generator.

``class_partition`` must give the same tensor for the same seed on every machine and under
every torch release, forever. ``torch.randperm`` promises neither, so the partition is drawn
with SplitMix64 (Steele, Lea and Flood, 2014) and a Fisher-Yates shuffle, both written out
here in a few lines of integer arithmetic.
"""

from __future__ import annotations

__all__: list[str] = []

_MASK = (1 << 64) - 1


class SplitMix64:
    """SplitMix64: a 64-bit state advanced by a Weyl step and mixed by two multiplications."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def next_u64(self) -> int:
        """The next 64-bit output."""
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, bound: int) -> int:
        """A uniform integer in [0, bound), unbiased by rejecting the top partial block."""
        limit = (1 << 64) - (1 << 64) % bound
        while True:
            value = self.next_u64()
            if value < limit:
                return value % bound

    def permutation(self, n: int) -> list[int]:
        """A uniform permutation of ``range(n)`` (Fisher-Yates, from the back)."""
        items = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]
        return items
