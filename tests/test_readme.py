import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    g = torch.Generator().manual_seed(0)
    loader = [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 50, (4,), generator=g))
        for _ in range(2)
    ]
    namespace = {"loader": loader}
    exec(compile(code, str(README), "exec"), namespace)
    backbone = namespace["backbone"]
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 50)
    assert namespace["loss_fn"].last_terms.binary.item() > 0


def test_readme_has_exactly_two_setup_commands():
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), re.S)
    assert len(commands) == 2
    assert commands[0].endswith("examples/quickstart.py")
    assert commands[1].endswith("-m pytest")
