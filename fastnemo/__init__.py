"""fastnemo: one-H100 LoRA post-training for Nemotron-3-Nano on the Wonderland puzzles."""

__version__ = "0.1.0"
