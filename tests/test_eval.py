"""`minimind-v eval`: the shapes-world suite, held-out digits, user JSON-lines sets, the table, JSON and PNG grid."""
import json

import pytest
from PIL import Image

from minimind_v.cli import main
from minimind_v.eval.grid import draw_grid, pick_examples
from minimind_v.eval.jsonl_eval import (contains_match, evaluate_jsonl, exact_match, jsonl_table, load_jsonl,
                                        score_answer)
from minimind_v.eval.score import KINDS
from minimind_v.eval.shapes import shapes_items


def _write_set(tmp_path, lines):
    for name, colour in (("red.png", "red"), ("blue.png", "blue")):
        Image.new("RGB", (40, 40), colour).save(tmp_path / name)
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_exact_and_contains_match_words_not_characters():
    assert exact_match("Red.", "red") == 1.0 and exact_match("It is red.", "red") == 0.0
    assert contains_match("It is red.", "red") == 1.0
    assert contains_match("It is reddish.", "red") == 0.0  # whole words only
    assert contains_match("a big red circle", "red circle") == 1.0
    assert contains_match("a circle that is red", "red circle") == 0.0  # in order and adjacent
    s = score_answer("The circle is red.", ["blue", "red"], kind="color")
    assert s == {"exact": 0.0, "contains": 1.0, "contract": 1.0}
    cap = score_answer("A red circle and a blue square.", ["A red circle, a blue square and a green cross."],
                       kind="caption")
    assert cap["contract"] == pytest.approx(0.8)  # the contract's caption F1: P = 1, R = 2/3
    assert "contract" not in score_answer("a cat", ["a cat"], kind=None)


def test_load_jsonl_formats_and_markers(tmp_path):
    path = _write_set(tmp_path, [
        {"image": "red.png", "question": "What color is it?", "answer": "red", "kind": "color"},
        {"images": ["red.png", "blue.png"], "question": "<image>\n<image>\nSame colour?", "answer": ["no", "nope"]},
        {"conversations": [{"role": "user", "content": "<image>\nDescribe it."},
                           {"role": "assistant", "content": "A blue square."}], "image": "blue.png"},
    ])
    items = load_jsonl(path)
    assert [it["kind"] for it in items] == ["color", "mine", "mine"]  # default kind: the file's name
    assert items[0]["question"] == "<image>\nWhat color is it?"  # marker added in front
    assert len(items[1]["images"]) == 2 and items[1]["references"] == ["no", "nope"]
    assert items[2]["references"] == ["A blue square."] and items[2]["images"][0].getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize("line,message", [
    ({"image": "nope.png", "question": "q", "answer": "a"}, "mine.jsonl:1: image"),
    ({"image": "red.png", "question": "<image><image>q", "answer": "a"}, "2 <image> markers but 1 images"),
    ({"image": "red.png", "prompt": "q"}, "needs 'question' and 'answer'"),
])
def test_load_jsonl_errors_name_the_line(tmp_path, line, message):
    path = _write_set(tmp_path, [line])
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_jsonl(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="mine.jsonl:1: not valid JSON"):
        load_jsonl(path)


class CannedVLM:
    """Answers from a list, recording what it was asked."""

    def __init__(self, answers):
        self.answers, self.asked = list(answers), []

    def answer_batch(self, items, max_new_tokens=64, temperature=0.0):
        self.asked += items
        return [self.answers.pop(0) for _ in items]


def test_evaluate_jsonl_scores_and_table(tmp_path):
    path = _write_set(tmp_path, [
        {"image": "red.png", "question": "What color?", "answer": "red", "kind": "color"},
        {"image": "blue.png", "question": "What color?", "answer": "blue", "kind": "color"},
        {"image": "blue.png", "question": "What is it?", "answer": "a blue square"},
    ])
    vlm = CannedVLM(["Red.", "It is green.", "I see a blue square here."])
    ev = evaluate_jsonl(vlm, load_jsonl(path), batch_size=2)
    assert ev["summary"]["color"] == {"n": 2, "exact": 0.5, "contains": 0.5, "contract": 0.5}
    assert ev["summary"]["mine"] == {"n": 1, "exact": 0.0, "contains": 1.0}
    assert [r["score"] for r in ev["rows"]] == [1.0, 0.0, 1.0]
    table = jsonl_table(ev["summary"])
    assert "| color | 2 | 0.500 | 0.500 | 0.500 |" in table and "| mine | 1 | 0.000 | 1.000 |  |" in table


def test_shapes_items_cover_every_kind_and_digits():
    items = shapes_items(n_per_kind=2, seed=3, image_size=48, n_digits=5)
    kinds = [it["kind"] for it in items if it["wording"] == "canonical"]
    assert set(kinds) == set(KINDS) and kinds.count("digit") == 5
    unseen = [it["kind"] for it in items if it["wording"] == "unseen"]
    assert set(unseen) == set(KINDS) and unseen.count("digit") == 2  # n_per_kind digits in unseen wordings
    assert all(im.size == (48, 48) for it in items for im in it["images"])
    again = shapes_items(n_per_kind=2, seed=3, image_size=48, n_digits=5)
    assert [it["question"] for it in again] == [it["question"] for it in items]
    assert items[0]["images"][0].tobytes() == again[0]["images"][0].tobytes()
    other = shapes_items(n_per_kind=2, seed=4, image_size=48, n_digits=5)
    assert [it["question"] for it in other] != [it["question"] for it in items]


def test_grid_picks_evenly_and_draws(tmp_path):
    rows = [{"kind": k} for k in ["a"] * 10 + ["b"] * 2 + ["c"] * 1]
    picked = pick_examples(rows, 6, seed=1)
    assert picked == pick_examples(rows, 6, seed=1) and len(picked) == 6
    assert {rows[i]["kind"] for i in picked} == {"a", "b", "c"} and sum(rows[i]["kind"] == "b" for i in picked) == 2
    im = Image.new("RGB", (30, 30), "red")
    examples = [{"images": [im], "question": "<image>\nWhat color?", "answer": "Red.", "expected": "red",
                 "score": 1.0, "kind": "color"},
                {"images": [im, im], "question": "<image>\n<image>\nWhich?", "answer": "The second image.",
                 "expected": "first", "score": 0.0, "kind": "which_has"},
                {"images": [im], "question": "Describe.", "answer": "a red circle", "expected": "x",
                 "score": 0.5, "kind": "caption"}]
    out = draw_grid(examples, tmp_path / "g.png", cols=2, thumb=64)
    grid = Image.open(out).convert("RGB")
    assert grid.width == 2 * (64 + 16) and grid.height > 2 * 64
    colours = {grid.getpixel((x, y)) for x in range(grid.width) for y in range(grid.height)}
    assert (20, 140, 60) in colours and (200, 40, 40) in colours  # a green tick and a red cross were drawn


def test_eval_command_outputs_and_is_deterministic(tiny_run, tmp_path, capsys):
    data = _write_set(tmp_path, [{"image": "red.png", "question": "What color?", "answer": "red", "kind": "color"},
                                 {"image": "blue.png", "question": "Describe it.", "answer": "a blue square"}])
    args = ["eval", "--model", str(tiny_run), "--n-per-kind", "1", "--digits", "2", "--image-size", "32",
            "--data", str(data), "--grid", "5", "--device", "cpu", "--max-new-tokens", "4", "--caption-tokens", "6"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert set(report["shapes"]["summary"]) == set(KINDS)
    assert report["shapes"]["summary"]["digit"]["n"] == 2 and report["shapes"]["image_size"] == 32
    assert report["data"][str(data)]["summary"]["color"]["n"] == 1
    md = (tmp_path / "a" / "eval.md").read_text()
    assert all(f"| {k} |" in md for k in KINDS) and "## mine.jsonl" in md
    assert Image.open(tmp_path / "a" / "eval_grid.png").width > 0
    assert "| caption |" in capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "eval.json").read_text())
    for r in (report, again):
        r["shapes"].pop("seconds")
    assert again == report
    assert (tmp_path / "a" / "eval_grid.png").read_bytes() == (tmp_path / "b" / "eval_grid.png").read_bytes()


def test_eval_command_refuses_nothing_to_do(tiny_run, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_run), "--no-shapes"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_run), "--data", str(tmp_path / "missing.jsonl")]) == 2


def test_confusion_summary_and_unseen_table():
    from minimind_v.eval.shapes import confusion, confusion_markdown, report_markdown, summarise
    rows = [{"kind": "color", "key": "red", "answer": "The circle is orange.", "score": 0.0},
            {"kind": "color", "key": "red", "answer": "It is orange.", "score": 0.0},
            {"kind": "color", "key": "blue", "answer": "Hmm.", "score": 0.0},
            {"kind": "color", "key": "blue", "answer": "Blue.", "score": 1.0},
            {"kind": "color", "key": "blue", "answer": "It is red.", "score": 0.0, "wording": "unseen"},
            {"kind": "absent", "key": "circle", "answer": "The circle is red.", "score": 0.0},
            {"kind": "caption", "key": "A red circle.", "answer": "A blue circle.", "score": 0.0},
            {"kind": "color", "key": "red", "answer": "Red.", "score": 1.0, "wording": "unseen"}]
    conf = confusion(rows)
    assert conf == {"absent": {"not there -> red": 1}, "color": {"red -> orange": 2, "blue -> unparsed": 1},
                    "color@unseen": {"blue -> red": 1}}
    assert list(conf["color"]) == ["red -> orange", "blue -> unparsed"]  # most frequent first
    assert "- color (3 wrong): red -> orange x2, blue -> unparsed x1" in confusion_markdown(conf)
    assert confusion_markdown({}) == "No wrong answers."
    ev = {"summary": summarise(rows, "canonical"), "unseen": summarise(rows, "unseen"), "confusion": conf}
    assert ev["summary"]["color"] == {"n": 4, "score": 0.25} and ev["unseen"]["color"] == {"n": 2, "score": 0.5}
    md = report_markdown(ev)
    assert "| color | 2 | 0.250 | 0.500 |" in md
    assert "| mean over the kinds with a target (target 0.85) |  |  | 0.500 |" in md
    assert "blue -> unparsed" in md


def test_across_runs_mean_and_minimum():
    from minimind_v.eval.across_runs import across_runs, across_runs_markdown
    reports = {f"seed{i}": {"summary": {"color": {"n": 4, "score": s}, "count": {"n": 4, "score": 1.0}},
                            "unseen": {"color": {"n": 4, "score": s / 2}, "caption": {"n": 4, "score": 0.9},
                                       "motion": {"n": 4, "score": 0.0}}}  # motion has no target
               for i, s in enumerate((1.0, 0.5, 0.75))}
    summary = across_runs(reports)
    assert summary["runs"] == ["seed0", "seed1", "seed2"]
    assert summary["canonical"]["color"] == {"n": 4, "scores": [1.0, 0.5, 0.75], "mean": 0.75, "min": 0.5}
    assert summary["unseen_mean"]["scores"] == pytest.approx([0.7, 0.575, 0.6375])
    assert summary["unseen_mean"]["min"] == pytest.approx(0.575)
    md = across_runs_markdown(summary)
    assert "| kind | n | seed0 | seed1 | seed2 | mean | min | target | met (min) |" in md
    assert "| color | 4 | 1.000 | 0.500 | 0.750 | 0.750 | 0.500 | 0.95 | no |" in md
    assert "| count | 4 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 0.90 | yes |" in md
    assert "| caption | 4 | 0.900 | 0.900 | 0.900 | 0.900 | 0.900 | 0.85 | yes |" in md
    assert "| mean over the kinds with a target |  | 0.700 | 0.575 |" in md
    assert summary["unseen_mean_all"]["scores"] == pytest.approx([1.4 / 3, 1.15 / 3, 1.275 / 3])
    assert md.rstrip().endswith("| mean over every kind (motion and absent too) |  | 0.467 | 0.383 | 0.425 | 0.425 "
                                "| 0.383 |  |  |")
    with pytest.raises(ValueError, match="at least one"):
        across_runs({})


def test_eval_command_over_several_runs(tmp_path, capsys):
    from conftest import build_tiny_run
    runs = [build_tiny_run(tmp_path / name, seed=i) for i, name in enumerate(("s0", "s1"))]
    args = ["eval", "--model", *map(str, runs), "--n-per-kind", "1", "--digits", "1", "--image-size", "32",
            "--grid", "0", "--device", "cpu", "--max-new-tokens", "3", "--caption-tokens", "4"]
    assert main(args + ["--out", str(tmp_path / "all")]) == 0
    summary = json.loads((tmp_path / "all" / "eval_runs.json").read_text())
    assert summary["runs"] == ["s0", "s1"] and set(summary["canonical"]) == set(KINDS)
    assert set(summary["unseen"]) == set(KINDS) and len(summary["unseen_mean"]["scores"]) == 2
    for i, name in enumerate(("s0", "s1")):  # each run's own report, and the table reads from it
        shapes = json.loads((tmp_path / "all" / name / "eval.json").read_text())["shapes"]
        assert summary["canonical"]["count"]["scores"][i] == shapes["summary"]["count"]["score"]
        assert summary["unseen"]["count"]["scores"][i] == shapes["unseen"]["count"]["score"]
    md = (tmp_path / "all" / "eval_runs.md").read_text()
    assert "| s0 | s1 | mean | min |" in md and "Unseen wordings" in md
    assert "eval_runs.md" in capsys.readouterr().out
    assert main(args[:2] + [str(runs[0]), str(runs[0])] + args[4:]) != 0  # the same run twice is an error
