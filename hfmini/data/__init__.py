"""Text in, training data out: one way, primitives first, composed in exactly one place.

    sources (readers, mixture, shakespeare, text_columns) ─► splits ─► chunks ─► tokens
      ─► blocks (plain text)  |  sft + packing (prompt-completion, conversations)  |  streaming
      ─► prepare.py: the composer ─► a TrainingData (training_data.py), what the loop reads

No primitive imports prepare.py; nothing here imports outputs/, training/ or serving/.
"""
