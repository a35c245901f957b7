"""What a model is and where it runs: a GPT-2 built from a preset (gpt2.py), existing weights found,
checked and loaded (pretrained.py), LoRA adapters (lora.py), the byte-level BPE tokenizer
(tokenizer.py) and chat templates (chat_template.py), its size (size.py), its device (device.py),
and KV-cached sampling from it (sampling.py). Imports only hfmini.config and the foundations.
"""
