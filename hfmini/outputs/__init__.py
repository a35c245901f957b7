"""What a run leaves behind: checkpoints (checkpoint.py), the output_dir's claim and lock
(output_dir.py), the exported Hub folder (export.py) with its model card (card.py and the
model_card.md template), the loss curve (plot.py), GGUF for llama.cpp and Ollama (gguf.py), and
the upload (hub.py). File names come from hfmini.run_folder.
"""
