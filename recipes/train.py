"""Train a miniature GPT-2 from scratch. Thin on purpose: everything lives in `hfmini`.

python recipes/train.py --config recipes/shakespeare/config.yaml [--key value ...]
accelerate launch --config_file recipes/accelerate_configs/ddp.yaml recipes/train.py --config ...
torchrun --standalone --nproc_per_node 2 recipes/train.py --config recipes/tiny/config.yaml
"""

import sys

from hfmini.training.interrupt import interrupt_during_startup, stop_with_launcher

if __name__ == "__main__":
    interrupt_during_startup()  # first: Ctrl-C during the imports ends on one line
    stop_with_launcher()  # should the launcher die during the imports, so do we
    from hfmini.training.trainer import main

    sys.exit(main())
