"""Answer extraction on real-looking completions, and answer equivalence for voting."""

from __future__ import annotations

import pytest

from strategies.answers import (
    AnswerGroups,
    answers_equivalent,
    canonical_answer,
    extract_answer,
    parse_answer_format,
)

AUTO = parse_answer_format("auto")

COMPLETIONS = [
    ("Tom has 3 apples and buys 14 more. 3 + 14 = 17. The answer is 17.", "17"),
    ("First, 6 * 7 = 42.\n#### 42", "42"),
    ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72", "72"),
    ("We simplify: $\\frac{6}{8} = \\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}"),
    ("So $x = \\boxed{\\sqrt{2}+1}$ is the positive root.", "\\sqrt{2}+1"),
    ("Try $\\boxed{5}$... no, recheck: the result is $\\boxed{6}$.", "6"),
    ("Therefore, the final answer is $\\boxed{-3}$. I hope it is correct.", "-3"),
    ("The answer is $\\boxed{42}$.", "42"),
    ("Answer: (C)", "C"),
    ("Looking at the options, the answer is (B) because water boils at 100 C.", "B"),
    ("I think the correct option is b.", "B"),
    ("Let's count: 2, 4, 6, 8. There are 8 legs in total.", "8"),
    ("It costs $1,234 in total.", "1234"),
    ("The temperature dropped to -5 degrees, then to -12.", "-12"),
    ("The average is 2.50 meters.", "2.5"),
    ("The answer is 42 apples.", "42"),
    ("Final answer: 3/4", "3/4"),
    ("The final answer is 2x + 1.", "2x + 1"),
    ("**Answer:** Paris", "Paris"),
    ("The capital of France is Paris.", None),
    ("I am not sure how to solve this problem.", None),
    ("She has 5 cats. Each cat has 4 legs. So the answer is 20 legs.", "20"),
    ("2 + 3 = 5", "5"),
    ("5", "5"),
    ("The answer is: 9.0", "9"),
    ("Adding them gives 1,000,000.", "1000000"),
    ("The final answer is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("Step 1: 10 - 4 = 6\nStep 2: 6 / 2 = 3\nThe answer is 3", "3"),
    ("The answer is 7. Next question: what is 8?", "7"),
    ("+3 is the result", "3"),
    # A marker restated inside the statement is not part of the answer (the 1.5B model's
    # "The final answer is: Answer: No" on reasoning-gym syllogisms).
    ("The final answer is: Answer: No", "No"),
    ("Thus, the answer is:\n\nAnswer: Yes", "Yes"),
    ("The final answer is **Answer: 42**.", "42"),
    ("Final answer: The answer is: (B)", "B"),
    ("Thus, the final answer is: \\(\\boxed{\\text{No}}\\).", "No"),
    ("The answer is $\\boxed{\\textbf{Yes}}$.", "Yes"),
    ("The unit is $\\boxed{\\text{cm}^2}$.", "\\text{cm}^2"),
]


@pytest.mark.parametrize(("text", "expected"), COMPLETIONS)
def test_auto_extraction(text: str, expected: str | None) -> None:
    assert extract_answer(text, AUTO) == expected


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        ("boxed", "It is \\boxed{a+b} and also \\fbox{c}", "c"),
        ("boxed", "No box here: 42", None),
        ("answer_is", "Thinking... The answer is Paris.", "Paris"),
        ("number", "The answer is B, 12 times.", "12"),
        ("choice", "The answer is (d).", "D"),
        ("choice", "I like Apples. Bananas too.", None),
        ("code", "First:\n```python\nx = 1\n```\nBetter:\n```python\nx = 2\n```\n", "x = 2"),
        ("code", "no code", None),
        ("text", "  Hello   world \n", "Hello world"),
        ("regex:Result=(\\d+)", "Result=4, then Result=5.", "5"),
        ("regex:[A-Z]{3}", "codes ABC and XYZ", "XYZ"),
        ("regex:Result=(\\d+)", "nothing", None),
    ],
)
def test_explicit_formats(fmt: str, text: str, expected: str | None) -> None:
    assert extract_answer(text, parse_answer_format(fmt)) == expected


@pytest.mark.parametrize("bad", ["regex:(", "regex:", "latex", "regex:" + "a" * 501])
def test_invalid_formats_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_answer_format(bad)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("42", "42.0", True),
        ("1,000", "1000", True),
        ("0.5", "\\frac{1}{2}", True),
        ("1/2", "0.5", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("Paris", "paris.", True),
        ("\\text{Paris}", "Paris", True),
        ("12", "13", False),
        ("\\frac{1}{3}", "0.5", False),
        ("Paris", "London", False),
        ("-3", "3", False),
    ],
)
def test_equivalence(a: str, b: str, same: bool) -> None:
    assert answers_equivalent(a, b) is same
    assert answers_equivalent(b, a) is same


def test_canonical_keys() -> None:
    assert canonical_answer(" 42.50 ") == "42.5"
    assert canonical_answer("$\\left( 1, 2 \\right)$") == "(1,2)"
    assert canonical_answer("Yes.") == "yes"


def test_groups_follow_equivalence_in_order_of_appearance() -> None:
    book = AnswerGroups()
    groups = [book.add(a) for a in ["0.5", "3", None, "\\frac{1}{2}", "3.0", "7", "1/2"]]
    assert groups == [0, 1, None, 0, 1, 2, 0]
    assert [book.representative(g) for g in (0, 1, 2)] == ["0.5", "3", "7"]
