"""The scoring rule of the shapes-world contract, checked on its own examples and the obvious traps."""
import pytest

from minimind_v.eval.score import caption_f1, caption_pairs, positions_named, score


@pytest.mark.parametrize("answer,expected", [
    ("The circle is red.", 1.0), ("RED!", 1.0), ("red", 1.0),
    ("The circle is reddish.", 0.0),  # whole words only
    ("It is red or blue.", 0.0),  # another word of the same list
    ("The circle is green.", 0.0), ("I don't know.", 0.0),
])
def test_color_whole_word_and_no_other_colour(answer, expected):
    assert score("color", answer, "red") == expected


def test_shape_and_size_lists():
    assert score("shape", "The red object is a circle.", "circle") == 1.0
    assert score("shape", "A circle, or maybe a square.", "circle") == 0.0
    assert score("shape", "It is circular.", "circle") == 0.0
    assert score("size", "The red circle is small.", "small") == 1.0
    assert score("size", "It is smaller than the other.", "small") == 0.0
    assert score("size", "Small, not large.", "small") == 0.0


def test_position_longest_name_wins():
    assert positions_named("It is at the top left, not the top.") == ["top left", "top"]
    assert score("position", "The red circle is at the top left.", "top left") == 1.0
    assert score("position", "The red circle is at the top left.", "top") == 0.0  # "top left" is not "top"
    assert score("position", "It is at the top.", "top") == 1.0
    assert score("position", "It is at the top.", "top left") == 0.0
    assert score("position", "At the bottom right of the image.", "bottom right") == 1.0
    assert score("position", "It is on the left.", "left") == 1.0
    assert score("position", "It is in the center.", "center") == 1.0
    assert score("position", "It is in the centre.", "center") == 0.0  # only the spelling "center"
    assert score("position", "It is at the top, on the right.", "top right") == 0.0


@pytest.mark.parametrize("kind,answer,key,expected", [
    ("count", "There are 3 shapes.", "3", 1.0), ("count", "There are three shapes.", "3", 1.0),
    ("count", "Three.", "3", 1.0), ("count", "There are 3 shapes, not 4.", "3", 1.0),
    ("count", "There are 4 shapes, not 3.", "3", 0.0), ("count", "Many shapes.", "3", 0.0),
    ("count_color", "There are no red shapes.", "0", 1.0), ("count_color", "None.", "0", 1.0),
    ("count_color", "Zero.", "0", 1.0), ("count_color", "There is 1 red shape.", "0", 0.0),
    ("count_color", "There is one red shape.", "1", 1.0),
    ("digit", "The digit is 7.", "7", 1.0), ("digit", "Seven.", "7", 1.0), ("digit", "It is a 1.", "7", 0.0),
])
def test_numbers_first_number_digits_or_words(kind, answer, key, expected):
    assert score(kind, answer, key) == expected


@pytest.mark.parametrize("kind,answer,key,expected", [
    ("exists", "Yes, there is a red circle.", "yes", 1.0), ("exists", "No, there is no red circle.", "no", 1.0),
    ("exists", "Yes, no doubt.", "yes", 1.0), ("exists", "No. Well, yes.", "yes", 0.0),
    ("exists", "Maybe.", "yes", 0.0), ("exists", "Yesterday.", "yes", 0.0),
    ("both_have", "No, only the first image contains a red circle.", "no", 1.0),
    ("which_has", "The first image.", "first", 1.0),
    ("which_has", "The second image, not the first.", "second", 1.0),
    ("compare_count", "The second image has more shapes than the first.", "first", 0.0),
])
def test_choice_first_of_the_two_words_wins(kind, answer, key, expected):
    assert score(kind, answer, key) == expected


def test_caption_f1():
    key = "A large red circle at the top left, a small blue square in the center and a small green cross at the bottom."
    assert caption_pairs(key) == {("red", "circle"), ("blue", "square"), ("green", "cross")}
    assert score("caption", key, key) == 1.0
    # sizes and places do not count, only colour+shape pairs
    assert score("caption", "A green cross, a red circle and a blue square.", key) == 1.0
    # two of three named, plus one wrong pair: precision 2/3, recall 2/3
    assert score("caption", "A red circle, a blue square and a yellow triangle.", key) == pytest.approx(2 / 3)
    # one right pair: precision 1, recall 1/3 -> F1 1/2
    assert score("caption", "A red circle.", key) == pytest.approx(0.5)
    assert score("caption", "Some shapes.", key) == 0.0
    assert score("caption", "A reddish circle.", key) == 0.0
    assert caption_f1("A red circle.", set()) == 0.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown kind"):
        score("colour", "red", "red")
    with pytest.raises(ValueError, match="key"):
        score("exists", "yes", "maybe")


@pytest.mark.parametrize("answer,key,expected", [
    ("There is no circle in the image.", "circle", 1.0), ("No.", "circle", 1.0),
    ("I can't find a red square here.", "red square", 1.0), ("There isn't one.", "blue cross", 1.0),
    ("None of the shapes is a circle.", "circle", 1.0), ("I do not see a green object.", "green object", 1.0),
    ("The circle is red.", "circle", 0.0),  # an invented colour, no denial
    ("There is no circle, it is red.", "circle", 0.0),  # denies, yet gives it a colour
    ("No, the red square is at the top left.", "red square", 0.0),  # a place for what is not there
    ("It is small.", "blue cross", 0.0), ("No, it is small.", "blue cross", 0.0),
    ("Nothing of that kind.", "red square", 1.0), ("Notable.", "circle", 0.0),  # whole words only
])
def test_absent_needs_a_denial_and_no_invented_attribute(answer, key, expected):
    assert score("absent", answer, key) == expected


def test_read_key_reads_what_the_rule_reads():
    from minimind_v.eval.score import read_key
    assert read_key("color", "It is red or blue.") == "blue+red" and read_key("color", "Hm.") == "unparsed"
    assert read_key("position", "At the top left.") == "top left" and read_key("count", "Three.") == "3"
    assert read_key("exists", "No, yes.") == "no" and read_key("which_has", "The other.") == "unparsed"
    assert read_key("absent", "There is no circle.", "circle") == "not there"
    assert read_key("absent", "The circle is red and small.", "circle") == "red+small"
    assert read_key("absent", "The red square is on the left.", "red square") == "left"
    assert read_key("caption", "a red circle") == "-"
    with pytest.raises(ValueError, match="unknown kind"):
        read_key("colour", "red")
