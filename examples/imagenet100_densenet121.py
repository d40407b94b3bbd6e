"""The paper's ImageNet-100 experiment on DenseNet-121 (Fig. 15), as a plan of runs.

100 classes drawn with --class-seed from the class folders of an ImageNet folder
(--data-root holding train/ and val/, one subfolder per class in each), split 50/50 into A
and B by each split seed; baseline against binary (weight 0.4) on the identical split, as
for CIFAR (the paper's ImageNet run was unpaired). DenseNet-121 (k=32) is timm's
densenet121, the same network as torchvision's. Images are read by a DataLoader with the
standard ImageNet augmentation: RandomResizedCrop(224) and a horizontal flip for training,
Resize(256) and CenterCrop(224) for testing, normalised with ImageNet's mean and std.

The paper gives no ImageNet schedule. Pre-training on A follows DenseNet's own ImageNet
recipe: 90 epochs, 0.1 / 0.01 / 0.001 from epochs 1 / 31 / 61, batch 256, weight decay
1e-4. Fine-tuning on B is the paper's, scaled with the pre-training (175 to 90 epochs):
50 epochs, drops at 26 and 39, the body 0.01 / 0.01 / 0.001, the new classifier from 0.1.
Every number is a flag.

  python examples/imagenet100_densenet121.py --smoke --out runs/in100-smoke   # every step, tiny
  python examples/imagenet100_densenet121.py --data-root /data/imagenet --amp --out runs/in100
  torchrun --nproc_per_node=4 examples/imagenet100_densenet121.py --data-root /data/imagenet --amp --batch-size 64 --out runs/in100   # DDP, 4 x 64

--smoke writes a tiny ImageNet-style folder of generated images to a temporary folder and
trains a DenseNet-121 of growth rate 4 with one layer per block on 32x32 crops, 2-epoch
runs. <out>/data.json records the drawn classes and image sizes; a later call on other data
is refused.
"""

import sys

from auxtransfer.experiments import protocols
from auxtransfer.experiments.cli import Example, ImageNetData

EXAMPLE = Example(
    protocols.DENSENET121_IMAGENET,
    ImageNetData(),
    __doc__,
    smoke="tiny DenseNet-121 (growth rate 4, one layer per block) on a generated ImageNet-style folder at 32x32",
    figures={"paired": "Fig. 15"},
)

if __name__ == "__main__":
    sys.exit(EXAMPLE.main())
