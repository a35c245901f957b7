"""The shakespeare-grpo recipe's reward functions, in TRL's GRPOTrainer signature:

    fn(prompts, completions, completion_ids, **kwargs) -> list[float | None]

one value per completion; a completion is a string, or for conversational prompts (this
recipe's) `[{"role": "assistant", "content": text}]`; kwargs hold the data's other columns
(answerer, play, reply: `python -m hfmini.shakespeare --grpo_prompts`), one value per completion.

    reward_funcs: [recipes/shakespeare-grpo/rewards.py:scansion,
                   recipes/shakespeare-grpo/rewards.py:known_words,
                   recipes/shakespeare-grpo/rewards.py:ends_turn]

`scansion`: verse that scans as blank verse does, ten syllables a line (iambic pentameter), the
syllables counted with the CMU pronouncing dictionary (`pronouncing`, offline), a vowel-group
count for words it lacks. Dense: every line earns part of a point by how near to ten it comes,
so a model that writes 7-syllable lines already scores 0.7. It reads syllables, not stress: it
rewards the length of a pentameter line, not its iambs, and it counts made-up words by their
vowels, so `known_words` (the share of words the dictionary knows: 0.95 of the plays' own) keeps
ten syllables of babble from scoring as verse. `ends_turn`: the completion ended its turn before
the length limit. Both are pure functions of the text (and ids), cheap (a dictionary
look-up a word), and score the plays' own replies as they score a model's (compare.py).
"""

from __future__ import annotations

import re
from functools import lru_cache

# Blank verse: ten syllables a line.
TARGET_SYLLABLES = 10
# The config's max_completion_length: a completion this many tokens long was cut, not ended.
# 48 tokens hold the plays' own replies to the recipe's prompts (--max_chars 160) and leave 80 of
# a 128-token context to the prompt; the chat model ends its turn within them 0.86 of the time.
MAX_COMPLETION_LENGTH = 48

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*'?|'[a-z]+")
_VOWELS = re.compile(r"[aeiouy]+")


def completion_text(completion) -> str:
    """The text of one completion: a string as it is, a message list's assistant contents joined.

    >>> completion_text([{"role": "assistant", "content": "Good morrow."}])
    'Good morrow.'
    """
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")


@lru_cache(maxsize=65536)
def word_syllables(word: str) -> int:
    """Syllables of one lower-case word: the CMU dictionary's first pronunciation, else its vowel
    groups with the apostrophes (elided vowels) taken out and a silent final e dropped.

    >>> word_syllables("pestilence"), word_syllables("turn'd"), word_syllables("o'er")
    (3, 1, 1)
    """
    import pronouncing  # loads the dictionary on first use (about a second)

    phones = pronouncing.phones_for_word(word)
    if phones:
        return pronouncing.syllable_count(phones[0])
    letters = word.replace("'", "")
    groups = len(_VOWELS.findall(letters))
    if groups > 1 and letters.endswith("e") and not letters.endswith(("le", "ee")):
        groups -= 1
    return groups


def line_syllables(line: str) -> int:
    """Syllables of one line of text (hyphenated words counted by parts, punctuation ignored).

    >>> line_syllables("But, soft! what light through yonder window breaks?")
    10
    """
    return sum(word_syllables(w) for w in _WORD.findall(line.lower().replace("-", " ")))


def line_score(syllables: int) -> float:
    """1 for ten syllables, a tenth less for each one over or under, never below 0.

    >>> line_score(10), line_score(5), line_score(13), line_score(25)
    (1.0, 0.5, 0.7, 0.0)
    """
    return max(0.0, 1.0 - abs(syllables - TARGET_SYLLABLES) / TARGET_SYLLABLES)


def scansion_score(text: str) -> float:
    """The mean line_score of the text's lines that hold a word; 0 when none does.

    >>> scansion_score("But, soft! what light through yonder window breaks?\\n\\nIt is the east.")
    0.7
    """
    counts = [line_syllables(line) for line in text.split("\n") if _WORD.search(line.lower())]
    return sum(map(line_score, counts)) / len(counts) if counts else 0.0


def scansion(prompts, completions, completion_ids, **kwargs) -> list[float]:
    """Per completion: how near its lines come to ten syllables (scansion_score), in [0, 1].

    >>> scansion(None, [[{"role": "assistant", "content": "It is the east."}], ""], None)
    [0.4, 0.0]
    """
    return [scansion_score(completion_text(c)) for c in completions]


def known_words(prompts, completions, completion_ids, **kwargs) -> list[float]:
    """Per completion: the share of its words in the CMU dictionary, in [0, 1]; 0 with no word.

    >>> known_words(None, ["Good morrow, my lord.", "Good morrow, mhar lord.", "..."], None)
    [1.0, 0.75, 0.0]
    """
    return [known_share(completion_text(c)) for c in completions]


def known_share(text: str) -> float:
    """The share of the text's words the CMU dictionary knows (0 when it has none)."""
    import pronouncing

    words = _WORD.findall(text.lower().replace("-", " "))
    return sum(bool(pronouncing.phones_for_word(w)) for w in words) / len(words) if words else 0.0


def ends_turn(prompts, completions, completion_ids, **kwargs) -> list[float]:
    """Per completion: 1 if it ended its turn before MAX_COMPLETION_LENGTH tokens, else 0 (a
    completion that long was cut, as the trainer's ids tell; one ended exactly on its last token
    counts as cut, rarely).

    >>> ends_turn(None, ["Ay.", "..."], [[7, 2], list(range(MAX_COMPLETION_LENGTH))])
    [1.0, 0.0]
    """
    return [float(len(ids) < MAX_COMPLETION_LENGTH) for ids in completion_ids]
