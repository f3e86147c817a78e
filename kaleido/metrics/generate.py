"""--generate of scripts/evaluate.py: sample the videos of a prompt set with the real sampling job, as `<id>.mp4`.

The items without a video in VIDEOS_DIR are written to WORK/prompts.txt, each on the line of its position in the
prompt set (the others left blank, so a line's index, and its output folder, stay the same from run to run), and
sample_video.py samples them into WORK/samples (in this process, or through torchrun_multi_gpu.sh on N GPUs:
data parallel over lines x sequence parallel, SP from the environment). Each finished line's output.mp4 is then
copied to VIDEOS_DIR/<id>.mp4. Both steps resume: sample_video skips finished line folders, and ids that have a
video are not written at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kaleido import files
from kaleido.files import REFERENCE_SEPARATOR

REPO = Path(__file__).resolve().parents[2]  # sample_video.py and torchrun_multi_gpu.sh live here


class GenerateError(RuntimeError):
    """Sampling failed (its own error line was printed); the message says which step."""


def prompt_line(prompt: str, references) -> str:
    """A prompt-file line: the prompt on one line (OpenS2V prompts hold newlines), references by absolute path."""
    text = " ".join(prompt.split()).replace(REFERENCE_SEPARATOR, "@ @")
    return REFERENCE_SEPARATOR.join([text, *(str(Path(r).resolve()) for r in references)])


def generate(
    prompts: Path,
    videos: Path,
    work: Path,
    sampling_base: list[str],
    sampling_overrides: list[str],
    image_root: str | None = None,
    nproc_per_node: int = 1,
) -> list[str]:
    """Sample every item of `prompts` that has no VIDEOS_DIR/<id>.mp4; return the ids written."""
    from kaleido.metrics.prompts import read_prompt_set

    items = read_prompt_set(prompts, image_root)
    todo = {i: item for i, item in enumerate(items) if not (videos / f"{item.id}.mp4").is_file()}
    print(f"--generate: {len(items) - len(todo)} of {len(items)} ids have a video; sampling {len(todo)}", flush=True)
    if not todo:
        return []
    lines = [prompt_line(todo[i].prompt, todo[i].references) if i in todo else "" for i in range(len(items))]
    files.write_text(work / "prompts.txt", "\n".join(lines) + "\n")
    samples = work / "samples"
    overrides = [f"args.input_file={work / 'prompts.txt'}", f"args.output_dir={samples}", *sampling_overrides]
    if nproc_per_node > 1:
        env = {**os.environ, "BASE": " ".join(str(Path(b).resolve()) for b in sampling_base)}
        command = ["bash", str(REPO / "torchrun_multi_gpu.sh"), "--nproc-per-node", str(nproc_per_node), *overrides]
        code = subprocess.run(command, env=env).returncode
    else:
        import sys

        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        import sample_video

        code = sample_video.main(["--base", *sampling_base, *overrides])
    if code != 0:
        raise GenerateError(f"sample_video.py ended with exit status {code}; rerun to continue")
    written = []
    for i, item in todo.items():
        found = sorted(samples.glob(f"{i}_*/output.mp4"))
        if not found:
            raise GenerateError(f"{item.id}: sample_video.py wrote no {samples}/{i}_*/output.mp4")
        with files.atomic_path(videos / f"{item.id}.mp4") as tmp:
            shutil.copyfile(found[0], tmp)
        written.append(item.id)
    return written
