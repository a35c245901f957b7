"""Train a miniature GPT-2 from scratch. Thin on purpose: everything lives in `hfmini`.

accelerate launch -q recipes/train.py --config recipes/shakespeare/config.yaml
accelerate launch --config_file recipes/accelerate_configs/ddp.yaml recipes/train.py --config ...
torchrun --standalone --nproc_per_node 2 recipes/train.py --config recipes/tiny/config.yaml
python recipes/train.py --config recipes/tiny/config.yaml --max_steps 20
"""

import sys

from hfmini.training.interrupt import stop_with_launcher

if __name__ == "__main__":
    stop_with_launcher()  # first: should the launcher die during the imports, so do we
    from hfmini.training.trainer import main

    sys.exit(main())
