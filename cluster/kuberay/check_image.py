"""Before anyone builds cluster/kuberay/Dockerfile: do the things it pins exist for its platform?

    python cluster/kuberay/check_image.py

Reads the Dockerfile's pins (the base image `rayproject/ray:<ray>-py<python>-<cuda>` and `torch==<version>` from
the index of the same CUDA) and asks the registries, without downloading either: Docker Hub for the base image's
tag, the torch index's listing for a `torch-<version>+<cuda>-cp<python>-cp<python>-manylinux*_x86_64.whl`. Prints
one line per pin, "found", "MISSING" or "unreachable from here", and exits 0 (all found), 1 (one missing) or
2 (one could not be checked: this project's test machines reach PyPI only, so they answer 2).
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).with_name("Dockerfile")
TIMEOUT_S = 20


@dataclass(frozen=True)
class Pins:
    ray: str  # 2.60.0
    python: str  # 311
    cuda: str  # cu128
    torch: str  # 2.13.0
    torch_index: str  # https://download.pytorch.org/whl/cu128

    @property
    def base_image(self) -> tuple[str, str]:
        return "rayproject/ray", f"{self.ray}-py{self.python}-{self.cuda}"


def read_pins(dockerfile: Path = DOCKERFILE) -> Pins:
    text = dockerfile.read_text(encoding="utf-8")
    cuda = _one(r"^ARG CUDA=(\S+)", text)
    ray, python = _one(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py(\d+)-\$\{CUDA\}", text, groups=2)
    torch = _one(r"torch==(\S+)", text)
    index = _one(r"--index-url (\S+)", text).replace("${CUDA}", cuda)
    return Pins(ray=ray, python=python, cuda=cuda, torch=torch, torch_index=index)


def _one(pattern: str, text: str, groups: int = 1):  # type: ignore[no-untyped-def]
    match = re.search(pattern, text, flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"the Dockerfile no longer matches {pattern!r}: update cluster/kuberay/check_image.py")
    return match.group(1) if groups == 1 else match.groups()


def torch_wheels(listing_html: str, pins: Pins) -> list[str]:
    """The wheels of a simple-index page that the image can install."""
    tag = f"cp{pins.python}"
    name = re.escape(f"torch-{pins.torch}+{pins.cuda}-{tag}-{tag}-")
    return sorted(set(re.findall(rf"({name}manylinux[^\"'#<>]*x86_64\.whl)", listing_html.replace("%2B", "+"))))


def _get(url: str, headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310 - fixed https URLs
        return str(answer.read().decode("utf-8", errors="replace"))


def check_torch(pins: Pins) -> tuple[str, str]:
    try:
        listing = _get(f"{pins.torch_index}/torch/")
    except (urllib.error.URLError, OSError) as exc:
        return "unreachable from here", f"{pins.torch_index} ({exc})"
    wheels = torch_wheels(listing, pins)
    return ("found", ", ".join(wheels)) if wheels else ("MISSING", f"no cp{pins.python} x86_64 wheel in the listing")


def check_base_image(pins: Pins) -> tuple[str, str]:
    repository, tag = pins.base_image
    try:
        token = json.loads(
            _get(f"https://auth.docker.io/token?service=registry.docker.io&scope=repository:{repository}:pull")
        )["token"]
        _get(
            f"https://registry-1.docker.io/v2/{repository}/manifests/{tag}",
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.docker.distribution.manifest.list.v2+json, "
                "application/vnd.oci.image.index.v1+json",
            },
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return "MISSING", f"{repository}:{tag}"
        return "unreachable from here", f"{repository}:{tag} (HTTP {exc.code})"
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        return "unreachable from here", f"{repository}:{tag} ({exc})"
    return "found", f"{repository}:{tag}"


def main() -> int:
    pins = read_pins()
    results = {
        f"base image {':'.join(pins.base_image)}": check_base_image(pins),
        f"torch=={pins.torch} ({pins.cuda}, cp{pins.python}, x86_64)": check_torch(pins),
    }
    for what, (verdict, detail) in results.items():
        print(f"{what}: {verdict}: {detail}")
    verdicts = {verdict for verdict, _ in results.values()}
    return 1 if "MISSING" in verdicts else 2 if "unreachable from here" in verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
