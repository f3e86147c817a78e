"""A web page to make videos: prompt and one to three reference images in, video out (kaleido/web_demo.py).

    python scripts/web_demo.py --base configs/video_model/dit_crossattn_tiny.yaml configs/sampling/sample_tiny.yaml \
        [key=value ...] [--host 127.0.0.1] [--port 7860] [--max-file-size 20mb]

The config files and overrides are sample_video.py's, with the same checks before the model is loaded; each
request is written to args.output_dir/web/<request>/ with the video, its preview and settings.json (the equivalent
sample_video.py command). The page binds to 127.0.0.1: only this machine can open it. `--host 0.0.0.0` serves every
network the machine is on, without a password: anyone who reaches the port can use the GPU, fill the disk with
videos and read the results made by others; use it only on a network you trust (or behind an authenticating proxy).

Exit status: 0 stopped; 2 a bad argument or setting (one line `error: ...`, before the model is loaded).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page reports nothing to anyone

from kaleido.web_demo import WebDemo, build_app, launch  # noqa: E402 (after the sys.path line)
from sample_video import INPUT_ERRORS  # noqa: E402
from sgm.util import use_exact_fp32  # noqa: E402


def check_address(host: str, port: str) -> int:
    """The port as a number, free on `host`: checked before the model is loaded (a 14B load takes minutes)."""
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--port: expected a port number from 1 to 65535, got {port!r}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
    except OSError as err:
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
    return int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", nargs="+", required=True, metavar="YAML", help="config files, as sample_video.py")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", default="7860", help="port to listen on (default 7860)")
    parser.add_argument("--max-file-size", default="20mb", help="largest upload (default 20mb)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    cli = parser.parse_args(argv)
    use_exact_fp32()  # as sample_video.py: the same numbers as the command line
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to itself

    # `--base a.yaml b.yaml key=value` hands the trailing overrides to --base: move them back.
    overrides = [item for item in cli.base if "=" in item] + list(cli.overrides)
    base_files = [item for item in cli.base if "=" not in item]
    try:
        port = check_address(cli.host, cli.port)
        demo = WebDemo(base_files, overrides)
        demo.check()
        demo.load()
    except (*INPUT_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cli.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("kaleido").warning(
            "serving on %s: anyone who reaches this port can make videos and see the results (no password)", cli.host
        )
    launch(build_app(demo), demo, cli.host, port, cli.max_file_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
