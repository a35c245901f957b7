"""hfmini: train miniature GPT-2 models from scratch on the Hugging Face stack.

Importing the package is cheap; each stage lives in its own module, and data flows one way:
config → sources (shakespeare) → data (tokenizer) → model → train (evaluation, tracking,
checkpoint) → export (card, hub) → generate.
"""

__version__ = "0.1.0"
