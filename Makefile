# The few commands a person types. Everything runs inside .venv in this folder.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch that installs quickly; override for CUDA, e.g. `make install TORCH="torch==2.13.0 --index-url ..."`.
TORCH ?= torch==2.13.0
RECIPE ?= recipes/shakespeare/config.yaml
# Tests and the default run never reach the Hub or W&B servers.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline

.PHONY: clients chat-recipe dpo-recipe grpo-recipe life install train play-groups test test-slow bench docs notebook lint format clean

$(BIN)/hfmini: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/hfmini

install: $(BIN)/hfmini

# The other clients a folder is tested in (GGUF, ONNX, lm-eval, trackio): the tests install them,
# `make train` does not. llama-cpp-python builds llama.cpp from source, minutes on 2 cores, once:
# pip keeps the wheel it built. Node's @huggingface/transformers is installed by its test.
CLIENTS := $(VENV)/.clients-installed
LLAMA_CPP ?= llama-cpp-python==0.3.36
$(CLIENTS): pyproject.toml $(BIN)/hfmini
	$(BIN)/python -m pip install --quiet -e ".[dev,gguf,onnx,eval,trackio]"
	touch $(CLIENTS)

clients: $(CLIENTS)

# One process, no launcher: a mistake ends on hfmini's one-line error (exit 2), and Ctrl-C or SIGTERM
# on the checkpoint and the command that resumes (exit 130 or 143). `accelerate launch` kills its
# child 5 s after a signal, checkpoint written or not (docs/running.md).
train: install
	$(BIN)/python recipes/train.py --config $(RECIPE) $(ARGS)

# Fine-tuning, shown: a base model on every group of plays but the comedies, then the comedies
# from scratch, by full fine-tuning and by LoRA at equal compute (recipes/play-groups/). A run
# whose model exists is not repeated.
GROUPS := output/play-groups
play-groups: install
	$(BIN)/python -m hfmini.shakespeare --groups histories tragedies roman romances problems \
		--validation julius-caesar the-tempest --output_dir $(GROUPS)/base-data
	$(BIN)/python -m hfmini.shakespeare --groups comedies \
		--validation twelfth-night much-ado-about-nothing --output_dir $(GROUPS)/comedies
	for run in base scratch full lora; do \
		test -f $(GROUPS)/$$run/model.safetensors || $(OFFLINE) $(BIN)/python \
			recipes/train.py --config recipes/play-groups/$$run.yaml $(ARGS) || exit $$?; \
	done
	$(BIN)/python recipes/play-groups/compare.py $(GROUPS)

test: clients
	$(OFFLINE) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: clients
	$(BIN)/python -m pip install --quiet $(LLAMA_CPP)
	$(OFFLINE) $(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

bench: install
	$(OFFLINE) $(BIN)/python -m hfmini.bench $(ARGS)

# Instruction tuning, shown: the Shakespeare model (`make train`'s, trained first if missing)
# fine-tuned on conversations from the plays, with the loss on the answers and on everything
# (recipes/shakespeare-chat/). Then talk to it: hfmini chat output/shakespeare-chat
chat-recipe: install
	test -f output/shakespeare/model.safetensors || $(MAKE) train
	$(BIN)/python -m hfmini.shakespeare --conversations --max_chars 300 --output_dir output/shakespeare-chat-data
	for run in shakespeare-chat shakespeare-chat-full; do \
		test -f output/$$run/model.safetensors || $(OFFLINE) $(BIN)/python \
			recipes/train.py --config recipes/shakespeare-chat/config.yaml --output_dir output/$$run \
			$$(test $$run = shakespeare-chat-full && echo --assistant_only_loss false) $(ARGS) || exit $$?; \
	done
	$(OFFLINE) $(BIN)/python recipes/shakespeare-chat/compare.py output

# Preference tuning, shown: the chat model (`make chat-recipe`'s, made first if missing) tuned by DPO
# to prefer the play's reply to a speech over a reply of the same length from another play
# (recipes/shakespeare-dpo/). A run whose model exists is not repeated.
dpo-recipe: install
	test -f output/shakespeare-chat/model.safetensors || $(MAKE) chat-recipe
	$(BIN)/python -m hfmini.shakespeare --preference_pairs --max_chars 240 --output_dir output/shakespeare-dpo-data
	test -f output/shakespeare-dpo/model.safetensors || $(OFFLINE) $(BIN)/python \
		recipes/train.py --config recipes/shakespeare-dpo/config.yaml $(ARGS)
	$(OFFLINE) $(BIN)/python recipes/shakespeare-dpo/compare.py output

# Reinforcement learning from rewards, shown: the chat model (`make chat-recipe`'s, made first if
# missing) tuned by GRPO on rewards a person can read: lines of ten syllables, known words, an
# ended turn (recipes/shakespeare-grpo/rewards.py). Prints the held-out rewards before and after.
grpo-recipe: install
	test -f output/shakespeare-chat/model.safetensors || $(MAKE) chat-recipe
	$(BIN)/python -m hfmini.shakespeare --grpo_prompts --output_dir output/shakespeare-grpo-data
	test -f output/shakespeare-grpo/model.safetensors || $(OFFLINE) $(BIN)/python \
		recipes/train.py --config recipes/shakespeare-grpo/config.yaml $(ARGS)
	$(OFFLINE) $(BIN)/python recipes/shakespeare-grpo/compare.py output

# The whole life of a small LLM: pretraining, SFT, DPO and GRPO on the plays, each stage starting
# from the last, and one page of what each stage did (output/life/README.md). A stage whose model
# exists is kept; `make life ARGS=--quick` runs a few steps a stage.
life: install
	$(OFFLINE) $(BIN)/python -m hfmini.life --output_dir output/life $(ARGS)

# The configuration reference, generated from the dataclasses' help (a test checks it is current).
docs: install
	$(BIN)/python -m hfmini.config > docs/configuration.md

# The walkthrough notebooks, run top to bottom on a fresh kernel and saved with their outputs (the
# copies in git show them); their models land in notebooks/output/.
notebook: install
	cd notebooks && $(OFFLINE) $(abspath $(BIN))/jupyter execute --inplace --timeout=1800 gpt2_from_scratch.ipynb
	cd notebooks && $(OFFLINE) $(abspath $(BIN))/jupyter execute --inplace --timeout=3600 life_of_a_small_llm.ipynb

lint: install
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) output .pytest_cache .ruff_cache
