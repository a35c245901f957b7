"""hfmini: train miniature GPT-2 models from scratch on the Hugging Face stack.

Importing the package is cheap; each stage lives in its own module:
config → data (shakespeare, tokenizer) → model → train (evaluation, tracking, export) → generate.
"""

__version__ = "0.1.0"
