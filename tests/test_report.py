"""report.html: one self-contained page, checked in a real headless Chromium (images render, one row per
sample and per comparison entry) and as text (no network references, user text escaped)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

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
DATA_REPORT = {"source": "sample:rlaif-v", "format": "rlaif-v", "rows_read": 48, "rows_used": 46, "pairs": 46,
               "train_pairs": 36, "eval_pairs": 10, "dropped": {"image missing": 2},
               "tokens": {"max_length": 4096, "pair_tokens": {"p50": 102, "p95": 134, "max": 136}}}
SETTINGS = {"model": "tiny:llava-next", "dataset": "sample:rlaif-v", "max_steps": 40, "hf_token": "***",
            "lora_target_modules": ["q_proj", "v_proj"], "learning_rate": 5e-3}


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
    metrics = {"train": {"global_step": 40}, "comparison": comparison, "samples": samples}
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
    assert "No base vs tuned comparison" in html and "No rows were dropped" in html
