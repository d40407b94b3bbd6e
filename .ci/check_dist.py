"""Check the built sdist and wheel: complete, licensed, valid metadata, and working when
installed outside the repository.

    python .ci/check_dist.py dist/          # after: python -m build --outdir dist/

The wheel is installed into a fresh virtual environment in a temporary folder, without its
dependencies, which it takes from the environment running this script (so CI does not
download torch again); everything then runs from outside the repository, so the package
comes from the wheel, not from the source tree.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "auxtransfer"

SMOKE = """
import timm, torch
import auxtransfer, auxtransfer.models
from auxtransfer import RandomPartitionHead, CombinedLoss
from pathlib import Path
assert "{root}" not in str(Path(auxtransfer.__file__).resolve()), auxtransfer.__file__
assert (Path(auxtransfer.__file__).parent / "py.typed").exists()
for name in ("cifar_densenet_bc_100", "cifar_wrn_28_10"):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    assert model.num_classes == 10, name
net = RandomPartitionHead(timm.create_model("cifar_densenet_bc_100", num_classes=10, depth=10))
out = net(torch.randn(2, 3, 32, 32))
y = torch.tensor([0, 3])
assert CombinedLoss(0.4)(out, y, net.relabel(y)).ndim == 0
print("wheel works:", auxtransfer.__version__, auxtransfer.__file__)
"""


def fail(message: str) -> None:
    print(f"check_dist: {message}", file=sys.stderr)
    raise SystemExit(1)


def expected_modules() -> set[str]:
    return {
        f"auxtransfer/{path.relative_to(PACKAGE).as_posix()}"
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix in (".py", ".typed")
    }


def check_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(expected_modules() - names)
    if missing:
        fail(f"{wheel.name} lacks {', '.join(missing)}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        fail(f"{wheel.name} lacks the LICENSE file in its .dist-info/licenses/")
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    for field in (
        "License-Expression: Apache-2.0",
        "License-File: LICENSE",
        "Requires-Dist: torch",
    ):
        if field not in text:
            fail(f"{wheel.name}'s METADATA lacks {field!r}")


def check_sdist(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    wanted = {f"src/{m}" for m in expected_modules()} | {"LICENSE", "CITATION.cff", "README.md"}
    missing = sorted(wanted - names)
    if missing:
        fail(f"{sdist.name} lacks {', '.join(missing)}")


def check_installed(wheel: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        env = Path(folder) / "env"
        venv.create(env, with_pip=True)
        python = env / "bin" / "python"
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
        # The dependencies (torch, timm, ...) come from the environment running this check,
        # after the wheel's own site-packages on the path.
        site = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        (Path(site) / "_ci_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        commands = [
            [python, "-c", SMOKE.format(root=ROOT)],
            [python, "-m", "auxtransfer", "--version"],
            [python, "-m", "auxtransfer", "layers", "resnet18"],
        ]
        for command in commands:
            result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
            if result.returncode:
                fail(f"{' '.join(map(str, command[1:]))[:80]} failed:\n{result.stderr[-2000:]}")
            print(result.stdout.strip().splitlines()[0])


def main() -> None:
    dist = Path(sys.argv[1] if len(sys.argv) > 1 else "dist")
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        fail(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
    check_wheel(wheels[0])
    check_sdist(sdists[0])
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode:
        fail(f"twine check failed:\n{result.stdout}{result.stderr}")
    check_installed(wheels[0])
    print(f"check_dist: {wheels[0].name} and {sdists[0].name} are complete and work")


if __name__ == "__main__":
    main()
