"""report.html: one self-contained page, checked in a real headless Chromium (images render, one row per
sample, per comparison entry and per yes/no category, every section a table with no raw JSON) and as text (no
network references, user text escaped)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from entrypoint.evaluation.yes_no import yes_no_report
from entrypoint.results.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")  # Debian's; Ubuntu's and GitHub runners' names
SCRIPT_PROMPT = "What is in the image? <script>alert('x')</script>"
COMPARISON = [
    {"metric": "eval reward accuracy", "base": 0.5, "tuned": 0.8125, "count": 16, "note": "on 16 eval pairs"},
    {"metric": "eval loss", "base": 0.693147, "tuned": 0.512345, "count": 16, "note": ""},
    {"metric": "judge win rate", "base": None, "tuned": None, "count": None, "note": "no judge configured"},
]
IMAGES = {"samples/0.jpg": (320, 240, "red"), "samples/1.png": (200, 300, "navy")}
SAMPLES = [
    {"prompt": SCRIPT_PROMPT, "chosen": "A red square.", "rejected": "A cat & a dog.", "base": "A box.",
     "tuned": "A red square.", "image": "samples/0.jpg"},
    {"prompt": "Describe the colour.", "chosen": "Navy blue.", "rejected": "Green.", "base": "Blue?",
     "tuned": "Navy blue.", "image": "samples/1.png"},
    {"prompt": "Say hello.", "chosen": "Hello!", "rejected": "Bye.", "base": "Hi", "tuned": "Hello!", "image": None},
]
TOKENS = {"max_length": 4096, "pairs_measured": 46, "pair_tokens": {"p50": 102, "p95": 134, "max": 136},
          "prompt_tokens": {"p50": 89, "p95": 112, "max": 112}, "answer_tokens": {"p50": 16, "p95": 29, "max": 31},
          "image_tokens_per_image": {"p50": 70, "p95": 88, "max": 88, "images": 46}, "dropped_prompt_too_long": 0,
          "answers_cut": 0, "length_for_p95": 192, "length_for_all": 192}
EVAL_SET = {"source": "sample:pope", "format": "pope", "format_detected": True, "rows_read": 14, "rows_used": 14,
            "not_sampled": 0, "pairs": 12, "dropped": {"answer is not yes or no": 2},
            "dropped_examples": {"answer is not yes or no": ["row 3 (id 3)", "row 9 (id 9)"]}, "tokens": TOKENS}
DATA_REPORT = {"source": "sample:rlaif-v", "format": "rlaif-v", "rows_read": 48, "rows_used": 46, "pairs": 46,
               "train_pairs": 46, "eval_pairs": 12, "dropped": {"image missing": 2}, "tokens": TOKENS,
               "eval_set": EVAL_SET}
# 12 POPE questions, 6 a category; base says yes to all, tuned misses one yes and one no
ANSWERS = ["yes", "no"] * 6
YES_NO = yes_no_report(ANSWERS, ["adversarial"] * 6 + ["random"] * 6,
                       {"base": [1.0] * 12, "tuned": [-1.0, 1.0, *([1.0, -1.0] * 5)]})
SETTINGS = {"model": "tiny:llava-next", "dataset": "sample:rlaif-v", "max_steps": 40, "hf_token": "***",
            "lora_target_modules": ["q_proj", "v_proj"], "learning_rate": 5e-3, "eval_dataset": "sample:pope",
            "fsdp_config": {"min_num_params": 0, "xla": False}}


def make_run(run_dir: Path, samples: list[dict] = SAMPLES, comparison: list[dict] = COMPARISON) -> Path:
    """A run dir with sample images and one training-curve PNG; returns its report.html."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, (width, height, colour) in IMAGES.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), colour).save(run_dir / name)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    axes.plot([1, 2, 3, 4], [0.69, 0.6, 0.52, 0.47], marker="o", label="loss")
    axes.legend()
    figure.savefig(run_dir / "plots" / "loss.png")
    plt.close(figure)
    metrics = {"train": {"global_step": 40}, "comparison": comparison, "samples": samples, "yes_no": YES_NO}
    return write_report(run_dir / "report.html", run_name="demo-run", settings=SETTINGS, data_report=DATA_REPORT,
                        metrics=metrics, plots=[run_dir / "plots" / "loss.png"], run_dir=run_dir)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The report opened once in headless Chromium (Debian's, installed by `make browser`)."""
    executable = next(filter(None, map(shutil.which, BROWSERS)), None)
    if executable is None:  # a failure, not a skip: CI without the browser must go red
        pytest.fail(f"no browser on PATH ({', '.join(BROWSERS)}): run `make browser` "
                    "(as root it runs `apt-get install -y chromium`)", pytrace=False)
    from playwright.sync_api import sync_playwright

    report = make_run(tmp_path_factory.mktemp("run"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto(report.as_uri())
        yield page
        browser.close()


def test_every_image_renders_and_sample_thumbnails_are_small(page):
    images = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => ({alt: i.alt, natural: i.naturalWidth, shown: i.getBoundingClientRect().width}))")
    assert len(images) == len(IMAGES) + 1  # the sample images and the plot; the text-only sample has none
    assert all(image["natural"] > 0 for image in images), images
    thumbnails = {image["alt"]: image for image in images if image["alt"].startswith("samples/")}
    assert {alt: thumbnails[alt]["natural"] for alt in thumbnails} == {name: w for name, (w, _, _) in IMAGES.items()}
    assert all(image["shown"] <= 256 for image in thumbnails.values())
    assert all(url.startswith(("file:", "data:")) for url in page.requests), page.requests


def test_one_row_per_sample_and_per_comparison_entry(page):
    assert page.locator("#samples tr.sample").count() == len(SAMPLES)
    assert page.locator("#comparison tr.comparison").count() == len(COMPARISON)
    first = page.locator("#samples tr.sample").first.locator("td").all_inner_texts()
    assert first[1:] == [SCRIPT_PROMPT, "A red square.", "A cat & a dog.", "A box.", "A red square."]
    assert page.locator("script").count() == 0  # the prompt's <script> is text, not an element
    accuracy = page.locator("#comparison tr.comparison").first.locator("td").all_inner_texts()
    assert [cell.strip() for cell in accuracy[1:]] == ["0.5000", "0.8125", "+0.3125", "16"]


def test_yes_no_questions_by_category_base_and_tuned(page):
    rows = page.locator("#yes-no tr.category")
    assert rows.count() == 3  # all, then each category
    cells = [[cell.strip() for cell in rows.nth(i).locator("td").all_inner_texts()] for i in range(3)]
    # all: base accuracy 0.5, tuned 10/12; precision, recall, F1, yes share base then tuned
    assert cells[0] == ["all", "12", "0.5000", "0.8333", "0.5000", "0.8333", "1.0000", "0.8333", "0.6667",
                        "0.8333", "1.0000", "0.5000"]
    assert cells[1][:4] == ["adversarial", "6", "0.5000", "0.6667"] and cells[2][:4] == ["random", "6", "0.5000",
                                                                                          "1.0000"]
    assert "next token after the prompt" in page.inner_text("#yes-no-scoring")


def test_every_section_is_a_table_without_raw_json(page):
    text = page.inner_text("body")
    assert "{" not in text and "}" not in text, [line for line in text.splitlines() if "{" in line]
    tokens = page.locator("#data-tokens tbody tr").first.locator("td").all_inner_texts()
    assert tokens == ["a pair (prompt + the longer answer)", "102", "134", "136", "46"]
    assert page.locator("#data-budget").inner_text().count("DPO_MAX_LENGTH") == 5
    assert "q_proj, v_proj" in page.locator("#settings").inner_text()
    dropped = page.locator("#eval-set-dropped tbody tr").first.locator("td").all_inner_texts()
    assert dropped == ["answer is not yes or no", "2", "row 3 (id 3), row 9 (id 9)"]
    assert "Measured on DPO_EVAL_DATASET sample:pope: 12 pairs" in page.inner_text("#evaluated-on")


def test_screenshot(page, tmp_path):
    shot = tmp_path / "report.png"
    page.screenshot(path=shot, full_page=True)
    with Image.open(shot) as image:
        assert image.width >= 1000 and image.height > 900  # the whole page, longer than one screen
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # text, curves, images
    assert shot.stat().st_size > 30_000


def test_self_contained_and_user_text_escaped(tmp_path):
    html = make_run(tmp_path).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "<link" not in html and "<script" not in html
    assert "What is in the image? &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert html.count('src="data:image/jpeg;base64,') == 1 and html.count('src="data:image/png;base64,') == 2
    assert "A cat &amp; a dog." in html and "—" in html  # None rendered as a dash
    assert "+0.3125" in html and "-0.1808" in html and "on 16 eval pairs" in html


def test_no_samples_no_comparison_and_a_sparse_data_report(tmp_path):
    report = write_report(tmp_path / "out" / "report.html", run_name="bare", settings={}, data_report={},
                          metrics={}, plots=[], run_dir=tmp_path)
    html = report.read_text()
    assert 'id="samples"' not in html and "No sample generations were recorded" in html
    assert "No base vs tuned comparison" in html and "No rows were dropped" in html and 'id="yes-no"' not in html


def test_a_grouped_split_is_shown_side_by_side_with_what_both_sides_hold(tmp_path):
    split = {"by": "image content and prompt", "target_eval_pairs": 12, "largest_group": 4, "shared": {
        "images": 0, "prompts": 0}, "train": {"pairs": 36, "groups": 9, "images": 9, "prompts": 30},
             "eval": {"pairs": 12, "groups": 3, "images": 3, "prompts": 11}}
    report = {**DATA_REPORT, "eval_set": None, "eval_pairs": 12, "train_pairs": 36, "split": split}
    html = write_report(tmp_path / "report.html", run_name="split", settings=SETTINGS, data_report=report,
                        metrics={}, plots=[], run_dir=tmp_path).read_text()
    rows = re.findall(r"<tr><th>(train|eval|on both sides)</th>((?:<td[^>]*>[^<]*</td>)+)</tr>", html)
    assert [(side, re.findall(r">([^<]*)<", cells)[::2]) for side, cells in rows] == [
        ("train", ["36", "9", "9", "30"]), ("eval", ["12", "3", "3", "11"]), ("on both sides", ["—", "—", "0", "0"])]
    assert "the eval split of sample:rlaif-v: 12 pairs in 3 groups, held out by image and prompt: 0 images" in html


def test_the_on_policy_rounds_table_and_example_pairs_with_their_images_and_claims(tmp_path):
    """Rounds kept as rounds.py keeps them (JSON lines in the checkpoint dir), copied and fingerprinted by
    results/rounds.py, their example pairs shown with the prompt's image and the model judge's verdicts."""
    import json

    from entrypoint.data.formats import make_pair
    from entrypoint.results.rounds import keep_rounds, round_examples
    from entrypoint.run.outputs import sha256_file, write_manifest

    checkpoints, run_dir = tmp_path / "checkpoints", tmp_path / "run"
    prompts = [make_pair(f"Describe image {i}.", "a", "b", [Image.new("RGB", (640, 480), colour)])
               for i, colour in enumerate(["red", "navy", "green", "gray"])]
    claim = {"claim": "There is a red square.", "question": "Is there a red square? Please answer yes or no.",
             "p_yes": 0.91, "true": True}
    wrong = {**claim, "claim": "There is a cat.", "p_yes": 0.12, "true": False}
    samples = [{"prompt": i, "samples": ["A red square.", "A cat."], "scores": [0.0, -1.0],
                "verdicts": [[{"score": 0.0, "claims": [claim]}, {"score": -1.0, "claims": [wrong]}][k]
                             for k in range(2)]} for i in range(4)]
    pairs = [{"prompt": i, "chosen": "A red square.", "rejected": "A cat.", "chosen_score": 0.0,
              "rejected_score": -1.0 - i} for i in range(4)]
    for r in (1, 2):
        (checkpoints / "rounds" / str(r)).mkdir(parents=True)
        for name, records in (("samples.jsonl", samples), ("pairs.jsonl", pairs)):
            (checkpoints / "rounds" / str(r) / name).write_text("".join(json.dumps(x) + "\n" for x in records))
    rounds = [{"round": r, "prompts": 4, "samples": 8, "pairs": 4, "mean_score": -0.5, "heldout_base": 0.25,
               "heldout_mean_score": 0.5 * r, "global_step": 4 * r} for r in (1, 2)]
    kept = keep_rounds(checkpoints, run_dir, rounds)
    assert kept["2"] == {"path": "rounds/2/pairs.jsonl", "pairs": 4,
                         "sha256": sha256_file(checkpoints / "rounds" / "2" / "pairs.jsonl")}
    examples = round_examples(run_dir, prompts, rounds)
    assert [e["prompt_index"] for e in examples[1]] == [3, 2, 1]  # the widest score gaps, 3 a round
    html = write_report(run_dir / "report.html", run_name="rounds", settings=SETTINGS, data_report=DATA_REPORT,
                        metrics={"rounds": rounds}, plots=[], run_dir=run_dir, round_examples=examples).read_text()
    rows = re.findall(r'<tr class="round">(.*?)</tr>', html)
    assert [re.findall(r">([^<]*)<", row)[::2] for row in rows] == [["1", "4", "8", "4", "-0.5000", "0.5000", "4"],
                                                                   ["2", "4", "8", "4", "-0.5000", "1.0000", "8"]]
    assert "before round 1: 0.2500" in html
    assert html.count('<tr class="round-pair">') == 6 and html.count('src="data:image/jpeg;base64,') == 6
    assert "Describe image 3." in html and "score -4.0000" in html
    assert html.count('<tr class="false"><td>There is a cat.</td><td class="num">0.1200</td>') == 6
    files = {entry["path"] for entry in write_manifest(run_dir, "rounds")["files"]}
    assert {"rounds/1/pairs.jsonl", "rounds/1/samples.jsonl", "rounds/2/pairs.jsonl", "rounds/1/images/3.jpg"} <= files
