"""Using a trained model by hand: `hfmini chat` in the terminal (chat.py) and `hfmini playground`,
a local web page (playground.py)."""
