import pytest

from napari_itaclip import Vocabulary, VocabularyError

TEXT = """# a comment
background: sky, wall, tree, floor
cat, feline >= a small domesticated carnivorous mammal
person, body >= a human being   # trailing comment

carpet
"""


def test_parse_structure():
    v = Vocabulary.parse(TEXT)
    assert v.class_names == ["background", "cat", "person", "carpet"]
    assert v.has_background
    assert v.queries == ["sky", "wall", "tree", "floor", "cat", "feline", "person", "body", "carpet"]
    assert v.query_class == [0, 0, 0, 0, 1, 1, 2, 2, 3]
    assert v[1].aux == "a small domesticated carnivorous mammal"
    assert v[2].aux == "a human being"
    assert v[3].aux is None and v[0].aux is None


def test_round_trip():
    v = Vocabulary.parse(TEXT)
    assert Vocabulary.parse(v.format()) == v
    assert v.format().splitlines()[0] == "background: sky, wall, tree, floor"
    assert v.format().splitlines()[1] == "cat, feline >= a small domesticated carnivorous mammal"


def test_from_names_and_coerce():
    v = Vocabulary.from_names(["cell", "nucleus"])
    assert v.class_names == ["cell", "nucleus"] and not v.has_background
    one = Vocabulary.coerce("cell, nucleus, background")
    assert one.class_names == ["background", "cell", "nucleus"] and one.has_background
    assert Vocabulary.coerce(["cat, feline", "dog"]).queries == ["cat", "feline", "dog"]
    assert Vocabulary.coerce(v) is v
    assert Vocabulary.coerce("background: sky\ncat").class_names == ["background", "cat"]


def test_file_round_trip(tmp_path):
    v = Vocabulary.parse(TEXT)
    v.save(tmp_path / "v.txt")
    assert Vocabulary.load(tmp_path / "v.txt") == v


def test_with_aux():
    v = Vocabulary.from_names(["cat", "dog"]).with_aux({"cat": "a small  feline\n"})
    assert v[0].aux == "a small feline" and v[1].aux is None
    assert v.with_aux({"cat": None})[0].aux is None
    with pytest.raises(VocabularyError, match="no class named"):
        v.with_aux({"cow": "x"})
    bg = Vocabulary.parse("background: sky\ncat")
    with pytest.raises(VocabularyError, match="background"):
        bg.with_aux({"background": "stuff"})


@pytest.mark.parametrize(
    "text, msg",
    [
        ("", "empty vocabulary"),
        ("# only a comment\n\n", "empty vocabulary"),
        ("cat\ncat", "duplicate name 'cat'"),
        ("cat, Cat", "duplicate name"),
        ("cat\nbackground: sky", "must be the first class"),
        ("background: sky >= stuff", "cannot have an auxiliary text"),
        ("cat,,dog", "empty class name"),
        ("cat >=", "nothing after"),
    ],
)
def test_bad_vocabularies(text, msg):
    with pytest.raises(VocabularyError, match=msg):
        Vocabulary.parse(text)


def test_bad_coerce():
    with pytest.raises(VocabularyError, match="empty"):
        Vocabulary.coerce(" , ")
    with pytest.raises(VocabularyError, match="empty"):
        Vocabulary.from_names([])
    with pytest.raises(TypeError):
        Vocabulary.coerce(3)
