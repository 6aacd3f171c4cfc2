"""Write a registered dataset's images, transformed, as an image file for ``--dataset``.

Out-of-distribution checks need images a model was not trained on; where another dataset
cannot be downloaded (MNIST, on a machine without internet access), a transformed copy
of the model's own dataset stands in: upside down (the same strokes and grey levels,
another shape) or with inverted grey levels (another image statistic altogether).

    python scripts/shifted_images.py --transform flip --out /tmp/fashion-flipped.npz
    pyro-vae evaluate --run RUN --dataset /tmp/fashion-flipped.npz --figure ood.png

The file holds the transformed test images as ``test`` and, since an image file needs
training images too, the first ``--train`` transformed training images as ``train``.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyro_vae.data.images import DATASETS, load_images  # noqa: E402

#: Transforms of a batch of images (N, C, H, W), by name.
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "flip": lambda images: images.flip(-2),  # upside down
    "invert": lambda images: 1 - images,  # white background, dark strokes
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--transform", choices=list(TRANSFORMS), required=True)
    parser.add_argument("--train", type=int, default=600, help="training images to keep")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    args = parser.parse_args()
    data = load_images(args.dataset, args.data_root, binarize=False)
    shape = (-1, *data.image_shape)
    arrays = {}
    for split, images in (("train", data.train[: args.train]), ("test", data.test)):
        transformed = TRANSFORMS[args.transform](images.reshape(shape))
        arrays[split] = (transformed * 255).round().to(torch.uint8).numpy()  # the stored levels
    arrays["train_labels"] = data.train_labels[: args.train].numpy()
    arrays["test_labels"] = data.test_labels.numpy()
    arrays["class_names"] = np.array(data.class_names)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {arrays['test'].shape[0]} test images of {args.dataset}, {args.transform}")


if __name__ == "__main__":
    main()
