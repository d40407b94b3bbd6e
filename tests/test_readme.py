import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

README = Path(__file__).resolve().parents[1] / "README.md"


TIMM = 'timm.create_model("resnet18", num_classes=50)'


@pytest.mark.parametrize("build", [TIMM, "torchvision.models.resnet18(num_classes=50)"])
def test_readme_example_runs(build):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert TIMM in code and "# or any torchvision model" in code
    code = "import torchvision\n" + code.replace(TIMM, build)
    g = torch.Generator().manual_seed(0)
    loader = [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 50, (4,), generator=g))
        for _ in range(2)
    ]
    # Run it up to the transfer step, then the transfer step: the classifier must change.
    training, _, transfer = code.partition("backbone = net.unwrap()")
    assert transfer
    namespace = {"loader": loader}
    exec(compile(training, str(README), "exec"), namespace)
    trained = namespace["net"].backbone.fc.weight.detach().clone()
    exec(compile("backbone = net.unwrap()" + transfer, str(README), "exec"), namespace)
    backbone, net = namespace["backbone"], namespace["net"]
    assert backbone.fc.out_features == 50
    assert not torch.equal(backbone.fc.weight, trained)
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 50)
    assert not backbone.fc._forward_pre_hooks  # unwrapped: the plain model
    # The logged terms are those of the last batch, against plain cross entropy.
    out, labels, terms = namespace["out"], namespace["labels"], namespace["loss_fn"].last_terms
    main = F.cross_entropy(out.logits, labels)
    binary = F.cross_entropy(out.aux_logits[:, 0], net.relabel(labels)[:, 0])
    torch.testing.assert_close(terms.main, main)
    torch.testing.assert_close(terms.aux, binary)
    torch.testing.assert_close(terms.total, 0.6 * main + 0.4 * binary)


def test_readme_has_exactly_two_setup_commands():
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), re.S)
    assert len(commands) == 2
    assert commands[0].endswith("examples/cifar100_densenet.py --smoke --out runs/smoke")
    assert commands[1].endswith("-m pytest")
