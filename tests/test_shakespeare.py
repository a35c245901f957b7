from hfmini.shakespeare import VALIDATION_PLAYS, load_plays, markdown_to_text

SAMPLE = """# Macbeth

## ACT I

## SCENE I. A desert place.

_Thunder and lightning. Enter three Witches_

**First Witch**<BR>
When shall we three meet again<BR>
In thunder, lightning, or in rain?

**Second Witch**<BR>
When the hurlyburly's done, _Aside_<BR>
When the battle's lost and won.

_Exeunt_
""".replace("<BR>", "  ")  # markdown hard line breaks


def test_markdown_to_classic_layout():
    text = markdown_to_text(SAMPLE)
    assert text == (
        "First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n\n"
        "Second Witch:\nWhen the hurlyburly's done,\nWhen the battle's lost and won.\n"
    )


def test_validation_is_whole_held_out_plays():
    splits = load_plays()
    assert set(splits["validation"]) == set(VALIDATION_PLAYS)
    assert not set(splits["validation"]) & set(splits["train"])
    assert len(splits["train"]) == 35
    romeo = splits["train"]["romeo-and-juliet"]
    assert "\nROMEO:\n" in romeo and "**" not in romeo and "#" not in romeo
    train_bytes = sum(len(t.encode()) for t in splits["train"].values())
    val_bytes = sum(len(t.encode()) for t in splits["validation"].values())
    assert 0.05 < val_bytes / (train_bytes + val_bytes) < 0.10
