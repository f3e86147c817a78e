"""The web page (scripts/web_demo.py): a Gradio app over the sampling job's own functions.

Each request becomes a one-line prompt file in a folder of its own, args.output_dir/web/<request>/ (the uploaded
references copied beside it), and is sampled by the job's line function (kaleido.pipeline.sample_and_write_line)
with the job's seed rule and checks. Its settings are expressed as sample_video.py overrides and read back through
the same config loader, so a video from the page equals, bitwise, the one the command line writes for the same
settings; settings.json holds that command.

One model is loaded at a time and one generation runs at a time (Gradio's queue, concurrency 1; others wait with
their position shown). Cancel is cooperative: a flag checked after every sampling step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import secrets
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch

from kaleido import files
from kaleido.files import InputError, OutputError
from kaleido.lora import LoraError
from kaleido.pipeline import (
    SampleArgs,
    check_outputs,
    check_weight_paths,
    encode_texts,
    latent_shape,
    place_model,
    prepare_model,
    read_prompts,
    sample_and_write_line,
    warn_long_prompts,
)
from sat import parallel
from sat.config import Config, ConfigError, load_config, parse_args
from sat.parallel import resolve_device
from sgm.util import InstantiationError
from sgm.weights import WeightsError

log = logging.getLogger("kaleido")

PARITY_CONFIG = "configs/sampling/official_parity.yaml"
PROFILES = ("default", "official parity")
WEB_FOLDER = "web"  # requests go to args.output_dir/web/<request>/
MAX_PROMPT_CHARS = 20_000
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MAX_SEED = 2**63 - 1 - 1000  # torch.Generator takes 64 bits; the seed rule adds the line index
STEPS_KEY = "model.sampler_config.params.num_steps"
GUIDANCE_KEY = "model.sampler_config.params.guider.params.scale"
# Problems with the request or the server's settings: shown on the page as one message.
USER_ERRORS = (InputError, OutputError, ConfigError, InstantiationError, WeightsError, LoraError, ValueError)


class DemoError(ValueError):
    """A request the page cannot run (message shown as it is)."""


class Cancelled(Exception):
    """Cancel was pressed: raised from the step callback, between two steps."""

    def __init__(self, steps_done: int):
        super().__init__(f"cancelled after {steps_done} steps")
        self.steps_done = steps_done


@dataclass
class Request:
    """One video as the page or the API asks for it; None means the loaded config's value."""

    prompt: str
    references: list[str]  # uploaded image files, 1 to args.max_references
    seed: int = -1  # -1: a random seed (the one used is in the result)
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    size: tuple[int, int] | None = None  # (H, W) pixels
    latent_frames: int | None = None
    profile: str = "default"


@dataclass
class Result:
    video: Path
    preview: Path | None
    settings_file: Path
    settings: dict
    seconds: float


@dataclass
class Profile:
    """A config stack the page can sample with: the --base files (plus the official-parity overlay) and overrides."""

    name: str
    base_files: list[str]
    overrides: list[str]
    config: Config = field(repr=False)
    args: SampleArgs = field(repr=False)


def one_line(text: str) -> str:
    """The prompt as one line of a prompt file: every run of whitespace (newlines included) becomes one space."""
    return " ".join(text.split())


def quoted(value) -> str:
    """A YAML value for a key=value override: JSON is YAML, and a quoted string is never read as another type."""
    return json.dumps(value, ensure_ascii=False)


def size_presets(size: list[int]) -> list[tuple[int, int]]:
    """The config's (H, W), its transpose and half of it: multiples of 16, as the model needs."""
    height, width = size
    half = (max(16, height // 32 * 16), max(16, width // 32 * 16))
    return list(dict.fromkeys([(height, width), (width, height), half]))


def frame_presets(latent_frames: int) -> list[int]:
    """Latent frame counts T (the video has 4(T - 1) + 1 frames): the config's, half and a quarter of it."""
    return sorted({max(2, latent_frames // 4), max(2, latent_frames // 2), latent_frames})


class WebDemo:
    """The model, its settings and the requests' folders; `generate` is one request, start to end.

    Built from sample_video.py's `--base` files and overrides; `check()` does every check the job does before any
    model work, `load()` builds the default profile's model (an error there is fatal, as for the job).
    """

    def __init__(self, base_files: list[str], overrides: list[str]):
        self.base_files = list(base_files)
        self.overrides = list(overrides)
        self.profiles: dict[str, Profile] = {}
        self.model = None
        self.model_profile: str | None = None
        self.lock = threading.Lock()  # one generation at a time, whatever calls generate
        self.examples: list[files.PromptLine] = []
        self._count = 0

    # -- settings ------------------------------------------------------------------------------------------------

    def profile(self, name: str) -> Profile:
        if name not in PROFILES:
            raise DemoError(f"unknown profile {name!r} (expected one of {list(PROFILES)})")
        if name not in self.profiles:
            bases = list(self.base_files)
            if name == "official parity" and not any(Path(b).name == Path(PARITY_CONFIG).name for b in bases):
                bases.append(PARITY_CONFIG)  # the overlay goes last, as the README says: after the run config
            config = load_config(bases, self.overrides)
            args = parse_args(SampleArgs, config)
            self.profiles[name] = Profile(name, bases, self.overrides, config, args)
        return self.profiles[name]

    @property
    def args(self) -> SampleArgs:
        """The default profile's run settings (the page's defaults)."""
        return self.profile("default").args

    def check(self) -> None:
        """The job's checks before any model work, plus what a server cannot do; raises one error."""
        args = self.args
        config = self.profile("default").config
        if args.sequence_parallel_size != 1:
            raise ConfigError("the web page samples in one process: leave args.sequence_parallel_size at 1")
        if args.text_encoder_offload == "free":
            raise ConfigError(
                "args.text_encoder_offload=free drops the text encoder after the first prompts; the web page encodes "
                "every request: use 'cpu' or 'none'"
            )
        if args.batch_size != 1:
            raise ConfigError("the web page makes one video per request: leave args.batch_size at 1")
        if args.noise_file:
            raise ConfigError("args.noise_file names noise per prompt-file line; the web page draws it by seed")
        files.check_output_dir(args.output_dir)
        check_weight_paths(args, config)
        if Path(args.input_file).is_file():
            self.examples = read_prompts(args)
        else:
            log.warning("%s: no such prompt file (args.input_file): the page has no examples", args.input_file)

    def request_overrides(self, folder: Path, request: Request, output_dir: Path) -> list[str]:
        """The request as sample_video.py overrides (applied after the server's own)."""
        items = [f"args.input_file={quoted(str(folder / 'prompts.txt'))}", f"args.output_dir={quoted(str(output_dir))}"]
        items.append(f"args.seed={request.seed}")
        if request.size is not None:
            items.append(f"args.sampling_image_size=[{request.size[0]},{request.size[1]}]")
        if request.latent_frames is not None:
            items.append(f"args.sampling_latent_frames={request.latent_frames}")
        if request.negative_prompt is not None:
            items.append(f"args.negative_prompt={quoted(request.negative_prompt)}")
        if request.steps is not None:
            items.append(f"{STEPS_KEY}={request.steps}")
        if request.guidance is not None:
            items.append(f"{GUIDANCE_KEY}={float(request.guidance)!r}")
        return items

    # -- the model -----------------------------------------------------------------------------------------------

    def load(self, name: str = "default", report: Callable[[float, str], None] | None = None):
        """The model of profile `name`, built once; another profile's model is dropped first (one in memory)."""
        if self.model is not None and self.model_profile == name:
            return self.model
        if report:
            report(0.0, f"loading the model ({name} profile)")
        profile = self.profile(name)
        if self.model is not None:
            self.model, self.model_profile = None, None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        # The command line's own preparation: build (weights checked first), the DiT's kernels, the step cache.
        args = profile.args
        device = resolve_device(args.device)
        model, _ = prepare_model(args, profile.config, parallel.ParallelState(), device)
        place_model(args, model, device)
        self.model, self.model_profile = model, name
        return model

    # -- one request ---------------------------------------------------------------------------------------------

    def new_folder(self) -> Path:
        root = Path(self.args.output_dir) / WEB_FOLDER
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        while True:
            self._count += 1
            folder = root / f"{stamp}-{self._count:03d}"
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
                return folder

    def check_request(self, request: Request, args: SampleArgs) -> str:
        """The request's own limits (the images are checked by the job's prompt-file reader); -> the prompt line."""
        prompt = one_line(request.prompt or "")
        if not prompt:
            raise DemoError("type a prompt (Kaleido was trained on long, detailed descriptions)")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise DemoError(f"the prompt has {len(prompt):,} characters, more than {MAX_PROMPT_CHARS:,}")
        if files.REFERENCE_SEPARATOR in prompt:
            raise DemoError(f"the prompt may not contain '{files.REFERENCE_SEPARATOR}' (it separates image paths)")
        count = len(request.references)
        if count == 0:
            raise DemoError(
                "add at least one reference image (Kaleido puts the subjects of its references in the video)"
            )
        if count > args.max_references:
            raise DemoError(f"{count} reference images: at most {args.max_references} (args.max_references)")
        if request.steps is not None and not 1 <= request.steps <= MAX_STEPS:
            raise DemoError(f"steps: expected 1 to {MAX_STEPS}, got {request.steps}")
        if request.guidance is not None and not 0 <= request.guidance <= MAX_GUIDANCE:
            raise DemoError(f"guidance scale: expected 0 to {MAX_GUIDANCE}, got {request.guidance}")
        if not 0 <= request.seed <= MAX_SEED:
            raise DemoError(f"seed: expected 0 to {MAX_SEED} (or -1 for a random one), got {request.seed}")
        if request.negative_prompt is not None and "${" in request.negative_prompt:
            raise DemoError("the negative prompt may not contain '${' (config interpolation)")
        return prompt

    def generate(
        self,
        request: Request,
        report: Callable[[float, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Result:
        """Sample one request; raises DemoError (or the job's InputError, ConfigError, ...) with a one-line message,
        Cancelled when should_stop() turned true between two steps."""
        report = report or (lambda fraction, text: None)
        should_stop = should_stop or (lambda: False)
        with self.lock:
            started = time.perf_counter()
            if request.seed == -1:
                request = dataclasses.replace(request, seed=secrets.randbelow(2**31))
            profile = self.profile(request.profile)
            prompt = self.check_request(request, profile.args)
            folder = self.new_folder()
            try:
                return self._sample(request, prompt, profile, folder, report, should_stop, started)
            except torch.OutOfMemoryError:
                shutil.rmtree(folder, ignore_errors=True)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise DemoError(
                    "out of memory: choose a smaller size or fewer frames (or set args.memory_profile when starting "
                    "the page)"
                ) from None
            except BaseException:  # cancelled or failed: no folder of a request that made nothing
                shutil.rmtree(folder, ignore_errors=True)
                raise

    def _sample(self, request, prompt, profile, folder, report, should_stop, started) -> Result:
        # The inputs first, as files the command line can read: references, then the one-line prompt file.
        references = []
        for i, upload in enumerate(request.references, start=1):
            suffix = Path(upload).suffix.lower()
            target = folder / f"reference_{i}{suffix if suffix[1:].isalnum() else ''}"
            with files.atomic_path(target) as tmp:
                tmp.write_bytes(Path(upload).read_bytes())
            references.append(str(target))
        files.write_text(folder / "prompts.txt", files.REFERENCE_SEPARATOR.join([prompt, *references]) + "\n")

        # The request's settings, read as the command line would read them.
        config = load_config(profile.base_files, profile.overrides + self.request_overrides(folder, request, folder))
        args = parse_args(SampleArgs, config)
        lines = read_prompts(args)  # the job's checks: every image decoded, within args.max_image_pixels
        check_outputs(args, lines)
        sampler_params = config.section("model")["sampler_config"]["params"]
        steps = int(sampler_params.get("num_steps", 50))

        model = self.load(profile.name, report)
        model.sampler.num_steps = steps
        model.sampler.guider.scale = float(sampler_params.get("guider", {}).get("params", {}).get("scale", 6.0))
        state = parallel.ParallelState()
        if should_stop():
            raise Cancelled(0)
        report(0.0, "encoding the prompt and references")

        def on_step(i: int, x: torch.Tensor) -> None:
            if should_stop():
                raise Cancelled(i + 1)
            if i + 1 < steps:
                report((i + 1) / (steps + 1), f"sampling: step {i + 1} of {steps}")
            else:
                report(steps / (steps + 1), "decoding the video (VAE) and writing the mp4")

        warn_long_prompts(args, model, lines)  # in the server's log, as the command line does
        texts = encode_texts(args, model, lines, state)
        shape = latent_shape(args, model)
        line_folder = sample_and_write_line(args, model, lines[0], texts, None, shape, state, None, on_step)
        video = line_folder / "output.mp4"
        preview = line_folder / "preview.png"
        seconds = time.perf_counter() - started
        settings = self.settings(request, profile, folder, args, lines[0], video, seconds)
        files.write_text(folder / "settings.json", json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
        report(1.0, "done")
        return Result(video, preview if preview.exists() else None, folder / "settings.json", settings, seconds)

    def settings(self, request, profile, folder, args, line, video, seconds) -> dict:
        """Everything needed to make the video again, with the equivalent command line (writing beside it)."""
        command_overrides = self.request_overrides(folder, request, folder / "command_line")
        command = ["python", "sample_video.py", "--base", *profile.base_files, *profile.overrides, *command_overrides]
        return {
            "prompt": line.text,
            "references": [str(path) for path in line.references],
            "seed": args.seed,
            "steps": self.model.sampler.num_steps,
            "guidance_scale": self.model.sampler.guider.scale,
            "negative_prompt": args.negative_prompt,
            "size": list(args.sampling_image_size),
            "latent_frames": args.sampling_latent_frames,
            "video_frames": self.model.first_stage.temporal_factor * (args.sampling_latent_frames - 1) + 1,
            "fps": args.sampling_fps,
            "profile": profile.name,
            "config_files": profile.base_files,
            "overrides": profile.overrides + command_overrides,
            "video": str(video),
            "seconds": round(seconds, 1),
            "command": shlex.join(command),
        }


# -- the page ------------------------------------------------------------------------------------------------------

INTRO = """# Kaleido: subject to video
Describe the video, add one to three images of its subjects (people, objects, a scene), press **Generate**.
Kaleido was trained on **long, detailed prompts**: name each subject as it looks in its image, say what it does,
where, and what the camera does. One video is made at a time; other requests wait in line (their place is shown)."""
PROMPT_NOTE = "Long and detailed works best: each subject, its motion, the scene, the light and the camera."
NEGATIVE_NOTE = "What to avoid. '@kaleido' and '@wan' are the shipped lists; empty for none."


def parse_size(value: str) -> tuple[int, int]:
    """'96x160' -> (96, 160)."""
    height, _, width = value.partition("x")
    return int(height), int(width)


def video_frames(latent_frames: int) -> int:
    return 4 * (latent_frames - 1) + 1  # the Wan VAE's temporal factor 4, first frame alone


@contextlib.contextmanager
def shown_on_page(uploads=()):
    """Any failure becomes one message on the page (gr.Error), never a stack trace; unexpected ones are logged.
    The server paths of `uploads` are replaced by their file names."""

    def clean(text: str) -> str:
        for path in filter(None, uploads):  # empty slots are None
            text = text.replace(str(path), Path(path).name)
        return text

    try:
        yield
    except (gr.Error, Cancelled):
        raise
    except USER_ERRORS as err:
        raise gr.Error(clean(str(err)), duration=None, print_exception=False) from None
    except Exception as err:
        log.exception("request failed")
        first = (str(err).strip().splitlines() or [""])[0]
        message = f"the generation failed: {type(err).__name__}: {clean(first)} (the server log has the details)"
        raise gr.Error(message, duration=None, print_exception=False) from None


def build_app(demo: WebDemo):
    """The Gradio Blocks of the page and of the API endpoint `generate` (see the module docstring)."""
    args = demo.args
    steps = int(demo.profile("default").config.section("model")["sampler_config"]["params"].get("num_steps", 50))
    guider = demo.profile("default").config.section("model")["sampler_config"]["params"].get("guider", {})
    guidance = float(guider.get("params", {}).get("scale", 6.0))
    sizes = [(f"{h} × {w}", f"{h}x{w}") for h, w in size_presets(args.sampling_image_size)]
    frames = [(f"{video_frames(t)} frames ({t} latent)", t) for t in frame_presets(args.sampling_latent_frames)]
    cancel_requests: set[str] = set()  # sessions whose Cancel was pressed since their last Generate
    tracker = gr.Progress()  # Gradio gives each call its own progress from this default

    def letterboxed(ref1, ref2, ref3, size, profile_name):
        profile_args = demo.profile(profile_name).args
        height, width = parse_size(size)
        shown = []
        with shown_on_page([ref1, ref2, ref3]):
            for i, path in enumerate((ref1, ref2, ref3), start=1):
                if path:
                    files.check_image(Path(path), f"reference {i}", profile_args.max_image_pixels)
                    image = files.load_reference(Path(path), profile_args.ref_alpha, profile_args.max_image_pixels)
                    shown.append((files.letterbox(image, height, width), f"reference {i}"))
        return shown

    def begin(request: gr.Request):
        cancel_requests.discard(request.session_hash)
        return gr.Button(interactive=False), gr.Button(interactive=True, value="Cancel"), "Waiting for the model..."

    def cancel(request: gr.Request):
        cancel_requests.add(request.session_hash)
        return gr.Button(interactive=False, value="Cancelling after this step...")

    def end(request: gr.Request):
        cancel_requests.discard(request.session_hash)
        return gr.Button(interactive=True), gr.Button(interactive=False, value="Cancel")

    def run(request_: Request, session: str, progress) -> Result:
        uploads = list(request_.references)
        with shown_on_page(uploads):
            return demo.generate(
                request_,
                report=lambda fraction, text: progress(fraction, desc=text),
                should_stop=lambda: session in cancel_requests,
            )

    def generate_on_page(
        prompt, negative, ref1, ref2, ref3, seed, random_seed, steps_, guidance_, size, latent_frames, profile_name,
        made, request: gr.Request, progress=tracker,
    ):  # fmt: skip
        height, width = parse_size(size)
        request_ = Request(
            prompt=prompt,
            references=[ref for ref in (ref1, ref2, ref3) if ref],
            seed=-1 if random_seed else int(seed or 0),
            steps=int(steps_),
            guidance=float(guidance_),
            negative_prompt=None if negative == args.negative_prompt else negative,
            size=None if [height, width] == list(args.sampling_image_size) else (height, width),
            latent_frames=None if int(latent_frames) == args.sampling_latent_frames else int(latent_frames),
            profile=profile_name,
        )
        try:
            result = run(request_, request.session_hash, progress)
        except Cancelled as err:
            status = f"Cancelled after step {err.steps_done}. Ready."
            return (*[gr.skip()] * 7, made, status)
        caption = f"seed {result.settings['seed']}: {result.settings['prompt'][:80]}"
        made = [*made, (str(result.preview or result.video), caption)]
        status = (
            f"Done in {result.seconds:.1f} s: seed {result.settings['seed']}, {result.settings['steps']} steps, "
            f"{result.settings['video_frames']} frames ({result.video.parents[1].name})."
        )
        return (
            str(result.video),
            str(result.preview) if result.preview else None,
            gr.DownloadButton(value=str(result.video), interactive=True),
            gr.DownloadButton(value=str(result.settings_file), interactive=True),
            json.dumps(result.settings, indent=2, ensure_ascii=False),
            made,
            result.settings["seed"],
            made,
            status,
        )

    def generate_api(prompt: str, references, seed, steps_, guidance_, request: gr.Request, progress=tracker):
        """Prompt, a list of 1 to 3 image files, seed (-1: random), steps, guidance scale -> the mp4 and settings."""
        paths = [str(ref) for ref in (references or [])]
        request_ = Request(prompt, paths, int(seed), int(steps_), float(guidance_))
        try:
            result = run(request_, request.session_hash, progress)
        except Cancelled:  # no Cancel reaches the API, but a page's flag would not outlive its session
            raise gr.Error("cancelled", print_exception=False) from None
        return str(result.video), result.settings

    with gr.Blocks(title="Kaleido: subject to video") as app:
        gr.Markdown(INTRO)
        if args.allow_random_weights and not args.load:
            gr.Markdown("**This model has random weights: its videos are noise** (a pipeline check).")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=4, info=PROMPT_NOTE, elem_id="prompt")
                negative = gr.Textbox(
                    label="Negative prompt (optional)", value=args.negative_prompt, info=NEGATIVE_NOTE
                )
                with gr.Row():
                    refs = [
                        gr.File(label=f"Reference {i}", file_types=["image"], height=120, elem_id=f"reference-{i}")
                        for i in (1, 2, 3)
                    ]
                shown = gr.Gallery(
                    label="References as the model sees them (letterboxed)",
                    columns=3,
                    height=180,
                    object_fit="contain",
                    elem_id="letterboxed",
                )
                with gr.Accordion("Settings", open=True):
                    with gr.Row():
                        seed = gr.Number(label="Seed", value=args.seed, precision=0, minimum=0, elem_id="seed")
                        random_seed = gr.Checkbox(label="Random seed", value=False)
                    with gr.Row():
                        steps_box = gr.Slider(1, MAX_STEPS, value=steps, step=1, label="Steps", elem_id="steps")
                        guidance_box = gr.Slider(0, MAX_GUIDANCE, value=guidance, step=0.5, label="Guidance scale")
                    with gr.Row():
                        size = gr.Dropdown(sizes, value=sizes[0][1], label="Size (height × width)")
                        latent_frames = gr.Dropdown(frames, value=args.sampling_latent_frames, label="Length")
                    profile = gr.Radio(
                        list(PROFILES),
                        value="default",
                        label="Quirk profile",
                        info="official parity: every quirk of the released code (README, Official quirks)",
                    )
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Cancel", variant="stop", interactive=False, elem_id="cancel")
                status = gr.Markdown("Ready.", elem_id="status")
            with gr.Column(scale=1):
                video = gr.Video(label="Video", interactive=False, loop=True, elem_id="video")
                preview = gr.Image(
                    label="Preview: the references and six frames", interactive=False, type="filepath", height=200
                )
                with gr.Row():
                    download_video = gr.DownloadButton("Download mp4", interactive=False, elem_id="download-video")
                    download_settings = gr.DownloadButton(
                        "Download settings (JSON)", interactive=False, elem_id="download-settings"
                    )
                with gr.Accordion("Settings to reproduce it, with the equivalent sample_video.py command", open=False):
                    settings = gr.Code(language="json", show_label=False)
        gallery = gr.Gallery(
            label="Made since this page was opened",
            columns=4,
            fit_columns=False,  # square tiles of a quarter width, even for the first result
            height="auto",
            object_fit="contain",
            elem_id="made",
        )
        made = gr.State([])
        if demo.examples:
            rows = [
                [line.text, *[str(path) for path in line.references], *[None] * (3 - len(line.references))]
                for line in demo.examples
                if len(line.references) <= 3
            ]
            gr.Examples(rows, [prompt, *refs], label="Examples (the config's demo prompts): click one to fill in")
        with gr.Row(visible=False):  # the API endpoint's own inputs and outputs
            api_references = gr.File(file_count="multiple", label="references")
            api_numbers = [gr.Number(label=name) for name in ("seed", "steps", "guidance_scale")]
            api_video = gr.File(label="video")
            api_settings = gr.JSON(label="settings")
            api_trigger = gr.Button()

        quick = {"concurrency_limit": None, "api_visibility": "private"}
        gr.on(
            [*[ref.change for ref in refs], size.change, profile.change],
            letterboxed,
            [*refs, size, profile],
            shown,
            show_progress="hidden",
            **quick,
        )
        inputs = [prompt, negative, *refs, seed, random_seed, steps_box, guidance_box, size, latent_frames, profile]
        outputs = [video, preview, download_video, download_settings, settings, gallery, seed, made, status]
        generate.click(begin, None, [generate, stop, status], **quick).then(
            generate_on_page,
            [*inputs, made],
            outputs,
            concurrency_limit=1,
            concurrency_id="model",
            api_visibility="private",
        ).then(end, None, [generate, stop], **quick)
        stop.click(cancel, None, stop, **quick)
        api_trigger.click(
            generate_api,
            [prompt, api_references, *api_numbers],
            [api_video, api_settings],
            api_name="generate",
            concurrency_limit=1,
            concurrency_id="model",
        )
    return app


def launch(app, demo: WebDemo, host: str, port: int, max_file_size: str, block: bool = True):
    """Serve the page; the queue runs one generation at a time (concurrency_id 'model')."""
    web = Path(demo.args.output_dir) / WEB_FOLDER
    web.mkdir(parents=True, exist_ok=True)
    theme = gr.themes.Default(  # system fonts: the page loads nothing from outside the server
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    app.queue(default_concurrency_limit=1)
    return app.launch(
        server_name=host,
        server_port=port,
        max_file_size=max_file_size,
        allowed_paths=[str(web.resolve())],  # the results it returns, and nothing else of the disk
        show_error=False,
        ssr_mode=False,
        prevent_thread_lock=not block,
        quiet=False,
        theme=theme,
    )
