"""The web page (scripts/web_demo.py) on the tiny model: in a real browser (headless Chromium driven by Playwright),
through gradio_client, and its generation function alone (cancel, out of memory, bad requests).

The server runs as a subprocess of the real script on a free port of 127.0.0.1 and is stopped at the end.
KALEIDO_WRITE_SCREENSHOT=1 writes the README's screenshot, docs/web_demo.png (else it goes to a temporary folder).
"""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import sample_video
from kaleido import web_demo
from kaleido.web_demo import Cancelled, DemoError, Request, WebDemo
from scripts import web_demo as web_demo_script
from tests.golden import REPO

TINY = ["configs/video_model/dit_crossattn_tiny.yaml", "configs/sampling/sample_tiny.yaml"]
SMALL = ["args.sampling_image_size=[32,48]", "args.sampling_latent_frames=2", "model.sampler_config.params.num_steps=2"]
FRAMES = 5  # 4(T - 1) + 1 for T = 2
CHROMIUM = shutil.which("chromium")  # Debian's package
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT = 120  # seconds for the server to answer
RUN_TIMEOUT = 120  # seconds for one generation on the page
UPLOAD_LIMIT = 100  # kB: the server's --max-file-size


@pytest.fixture(autouse=True)
def in_repository(monkeypatch):
    """Config paths are relative to the repository, as on the command line."""
    monkeypatch.chdir(REPO)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two references of different shapes and a corrupt PNG (a valid header, its image data cut off)."""
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (30, 40), (200, 30, 30)).save(folder / "red.png")
    Image.new("RGBA", (50, 20), (20, 200, 20, 128)).save(folder / "green.png")
    Image.new("RGB", (64, 64), (10, 20, 200)).save(folder / "blue.png")
    (folder / "corrupt.png").write_bytes((folder / "blue.png").read_bytes()[:60])
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "large.png")  # about 270 kB: over the server's upload limit
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """scripts/web_demo.py on the tiny model (small size, 2 steps), serving on a free port; stopped at the end."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_TEMP_DIR": str(folder / "gradio")}
    command = [sys.executable, "scripts/web_demo.py", "--base", *TINY, *SMALL]
    command += [f"args.output_dir={folder / 'out'}", "--port", str(port), "--max-file-size", f"{UPLOAD_LIMIT}kb"]
    log = open(folder / "server.log", "w")  # noqa: SIM115 (open for the server's whole life)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}):\n{(folder / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not answer in {START_TIMEOUT} s")
                time.sleep(0.5)
        yield url, folder / "out"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


def command_line_video(settings: dict, monkeypatch) -> bytes:
    """Run the settings' sample_video.py command (in this process, from the repository root); -> its mp4."""
    argv = shlex.split(settings["command"])
    assert argv[:2] == ["python", "sample_video.py"]
    monkeypatch.chdir(REPO)
    assert sample_video.main(argv[2:]) == 0
    request = Path(settings["video"]).parents[1]
    written = list((request / "command_line").glob("*/output.mp4"))
    assert len(written) == 1
    return written[0].read_bytes()


def check_video(path: Path) -> np.ndarray:
    frames = iio.imread(path)
    assert frames.shape == (FRAMES, 32, 48, 3) and frames.dtype == np.uint8
    assert frames.std() > 0  # a video of something, not a blank
    return frames


# -- the script's own arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["args.no_such_key=1"], "unknown key 'args.no_such_key'"),
        (["--port", "seventy"], "--port: expected a port number from 1 to 65535, got 'seventy'"),
        (["--port", "70000"], "--port: expected a port number from 1 to 65535, got '70000'"),
        (["args.text_encoder_offload=free"], "text_encoder_offload=free"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_the_model(extra, message, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(web_demo, "prepare_model", no_model)
    assert web_demo_script.main(["--base", *TINY, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_a_port_in_use_is_an_error_before_the_model(monkeypatch, capsys):
    monkeypatch.setattr(web_demo, "prepare_model", lambda *a, **k: pytest.fail("the model was built"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert web_demo_script.main(["--base", *TINY, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen there") and "\n" not in err


# -- the generation function, without a server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    old = Path.cwd()
    os.chdir(REPO)
    try:
        demo = WebDemo(TINY, [*SMALL, f"args.output_dir={tmp_path_factory.mktemp('demo')}"])
        demo.check()
        demo.load()
    finally:
        os.chdir(old)
    return demo


def test_progress_follows_the_steps_and_the_decode(demo, images):
    reports = []
    result = demo.generate(
        Request("A red ball.", [str(images / "red.png")], seed=3, steps=3, guidance=4.0),
        report=lambda fraction, text: reports.append((fraction, text)),
    )
    texts = [text for _, text in reports]
    assert "sampling: step 1 of 3" in texts and "sampling: step 2 of 3" in texts
    assert texts[-2:] == ["decoding the video (VAE) and writing the mp4", "done"]
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    check_video(result.video)
    assert result.settings["seed"] == 3 and result.settings["steps"] == 3 and result.settings["guidance_scale"] == 4.0
    assert json.loads(result.settings_file.read_text()) == result.settings
    assert result.preview is not None and Image.open(result.preview).width > 48  # references beside frames


def test_the_official_parity_profile_loads_its_own_model(demo, images):
    result = demo.generate(Request("A red ball.", [str(images / "red.png")], seed=2, profile="official parity"))
    assert demo.model_profile == "official parity" and demo.model.network.rope_float32 is False  # quirk Q11
    assert result.settings["config_files"][-1] == web_demo.PARITY_CONFIG
    assert f"--base {' '.join(TINY)} {web_demo.PARITY_CONFIG} " in result.settings["command"]
    check_video(result.video)
    demo.generate(Request("A red ball.", [str(images / "red.png")], seed=2))  # and back
    assert demo.model_profile == "default" and demo.model.network.rope_float32 is True


def test_cancel_stops_between_steps_and_leaves_nothing(demo, images):
    steps_seen = []
    before = sorted((Path(demo.args.output_dir) / "web").glob("*"))

    def stop_after_two():
        return len(steps_seen) >= 2

    with pytest.raises(Cancelled) as raised:
        demo.generate(
            Request("A red ball.", [str(images / "red.png")], seed=1, steps=20),
            report=lambda fraction, text: steps_seen.append(text) if "step" in text else None,
            should_stop=stop_after_two,
        )
    assert raised.value.steps_done == 3  # two steps reported, the third one's callback saw the flag
    assert sorted((Path(demo.args.output_dir) / "web").glob("*")) == before  # the request's folder is gone
    assert not demo.lock.locked()  # the next request may run


def test_out_of_memory_is_one_message(demo, images, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(demo.model, "sample", out_of_memory)
    with pytest.raises(DemoError, match="^out of memory: choose a smaller size or fewer frames"):
        demo.generate(Request("A red ball.", [str(images / "red.png")], seed=1))


@pytest.mark.parametrize(
    "references, message",
    [
        ([], "add at least one reference image"),
        (["red.png"] * 4, "4 reference images: at most 3 (args.max_references)"),
        (["corrupt.png"], "is not a readable image"),
    ],
)
def test_bad_requests_are_one_line_errors(demo, images, references, message):
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        demo.generate(Request("A red ball.", [str(images / name) for name in references], seed=1))
    assert "\n" not in str(raised.value)


def test_an_oversized_image_is_refused_by_the_pixel_limit(demo, images, monkeypatch):
    profile = demo.profile("default")
    monkeypatch.setattr(profile, "overrides", [*profile.overrides, "args.max_image_pixels=1000"])
    with pytest.raises(ValueError, match="more than args.max_image_pixels = 1,000"):
        demo.generate(Request("A red ball.", [str(images / "blue.png")], seed=1))


def test_unexpected_failures_are_one_message_on_the_page():
    import gradio as gr

    with pytest.raises(gr.Error) as raised, web_demo.shown_on_page(["gradio/3f2a/upload.png"]):
        raise RuntimeError("boom in gradio/3f2a/upload.png\nTraceback line")
    assert raised.value.message == (
        "the generation failed: RuntimeError: boom in upload.png (the server log has the details)"
    )


# -- through gradio_client ----------------------------------------------------------------------------------------------


def test_api_generate_equals_its_files_and_keeps_serving_after_errors(server, images):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _ = server
    client = Client(url, verbose=False)
    refs = [handle_file(str(images / "red.png")), handle_file(str(images / "green.png"))]
    video, settings = client.predict("A red ball and a green leaf.", refs, 5, 2, 5.0, api_name="/generate")
    frames = check_video(Path(video))
    assert Path(video).read_bytes() == Path(settings["video"]).read_bytes()
    assert (settings["seed"], settings["steps"], settings["guidance_scale"]) == (5, 2, 5.0)
    assert len(settings["references"]) == 2 and settings["prompt"] == "A red ball and a green leaf."
    with pytest.raises(AppError, match="is not a readable image"):
        client.predict("A ball.", [handle_file(str(images / "corrupt.png"))], 5, 2, 5.0, api_name="/generate")
    with pytest.raises(AppError, match="at most 3"):
        client.predict("A ball.", refs * 2, 5, 2, 5.0, api_name="/generate")
    assert (images / "large.png").stat().st_size > UPLOAD_LIMIT * 1024
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client knows the limit ...
        client.predict("A ball.", [handle_file(str(images / "large.png"))], 5, 2, 5.0, api_name="/generate")
    with open(images / "large.png", "rb") as large:  # ... and the server enforces it
        refused = httpx.post(f"{url}gradio_api/upload", files={"files": large}, timeout=30)
    assert refused.status_code == 413
    again, settings_again = client.predict("A red ball and a green leaf.", refs, 5, 2, 5.0, api_name="/generate")
    assert np.array_equal(check_video(Path(again)), frames)  # same settings, same video
    random_video, random_settings = client.predict("A red ball.", refs[:1], -1, 2, 5.0, api_name="/generate")
    assert random_settings["seed"] >= 0 and Path(random_video).is_file()


def test_two_requests_at_once_both_finish_in_order(server, images):
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    url, _ = server
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    refs = [handle_file(str(images / "red.png"))]
    job_1 = first.submit("The first video.", refs, 1, 60, 5.0, api_name="/generate")
    time.sleep(0.3)
    job_2 = second.submit("The second video.", refs, 2, 2, 5.0, api_name="/generate")
    waiting = set()
    deadline = time.monotonic() + RUN_TIMEOUT
    while not job_1.done():
        status = job_2.status()
        if status.code == Status.IN_QUEUE and status.rank is not None:
            waiting.add(status.rank)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (_, settings_1), (_, settings_2) = job_1.result(timeout=RUN_TIMEOUT), job_2.result(timeout=RUN_TIMEOUT)
    assert settings_1["prompt"] == "The first video." and settings_2["prompt"] == "The second video."
    folder_1, folder_2 = Path(settings_1["video"]).parents[1], Path(settings_2["video"]).parents[1]
    assert folder_1.name < folder_2.name  # made one after the other, in the order asked
    assert (folder_2 / "settings.json").stat().st_mtime >= (folder_1 / "settings.json").stat().st_mtime
    assert waiting, "the second request never waited in the queue with a position"


# -- in a real browser --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Playwright (its own browser download is not used)."""
    missing = None
    if CHROMIUM is None:
        missing = "chromium is not installed: run `bash scripts/setup.sh --test` (as root it installs Debian's)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            missing = "playwright is not installed: run `bash scripts/setup.sh --test`"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(RUN_TIMEOUT * 1000)
    page.problems = []  # console errors and uncaught exceptions
    page.on("console", lambda message: page.problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.goto(server[0])
    page.wait_for_selector("#generate")
    yield page
    context.close()


def upload(page, slot: int, path: Path) -> None:
    page.locator(f"#reference-{slot} input[type=file]").set_input_files(str(path))


def test_browser_makes_the_command_lines_video(page, images, tmp_path, monkeypatch):
    page.fill("#prompt textarea", "A red ball and a green leaf on a table.")
    upload(page, 1, images / "red.png")
    upload(page, 2, images / "green.png")
    page.wait_for_function("document.querySelectorAll('#letterboxed img').length == 2")
    page.fill("#seed input", "7")
    page.click("#generate")
    page.wait_for_selector("#video video")
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('Done')")

    with page.expect_download() as download:
        page.click("#download-video")
    video = tmp_path / "page.mp4"
    download.value.save_as(video)
    check_video(video)
    with page.expect_download() as download:
        page.click("#download-settings")
    settings = json.loads(Path(download.value.path()).read_text())
    assert settings["seed"] == 7 and settings["prompt"] == "A red ball and a green leaf on a table."
    assert video.read_bytes() == command_line_video(settings, monkeypatch)  # bitwise the command line's result

    page.locator("#made").scroll_into_view_if_needed()  # the session's gallery (its images load when seen)
    page.wait_for_function("[...document.querySelectorAll('#made img')].filter(i => i.naturalWidth > 0).length == 1")
    page.evaluate("window.scrollTo(0, 0)")
    screenshot = REPO / "docs/web_demo.png" if os.environ.get("KALEIDO_WRITE_SCREENSHOT") == "1" else tmp_path / "s.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and Image.open(screenshot).height > 600
    assert page.problems == []


def test_browser_shows_a_corrupt_image_as_one_message(page, images):
    upload(page, 1, images / "corrupt.png")
    toast = page.locator(".toast-body", has_text="is not a readable image")
    toast.wait_for()
    assert "corrupt.png" in toast.inner_text() and "Traceback" not in page.content()
    assert page.problems == []


def test_browser_example_fills_prompt_and_references(page):
    page.locator(".gallery-item, table tbody tr").first.click()
    page.wait_for_function("document.querySelector('#prompt textarea').value.length > 20")
    page.wait_for_function("document.querySelectorAll('#letterboxed img').length >= 1")
    assert page.problems == []


def test_browser_cancel_leaves_the_page_ready(page, images):
    page.fill("#prompt textarea", "A long run to cancel.")
    upload(page, 1, images / "red.png")
    page.locator("#steps input[type=number]").fill(str(web_demo.MAX_STEPS))
    page.locator("#steps input[type=number]").press("Enter")
    page.click("#generate")
    page.wait_for_selector("text=/sampling: step [0-9]+ of/")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('Cancelled after step')")
    page.wait_for_function("!document.querySelector('#generate').disabled")
    assert page.locator("#cancel").is_disabled()
    assert page.locator("#video video").count() == 0  # nothing was made
    assert page.problems == []
