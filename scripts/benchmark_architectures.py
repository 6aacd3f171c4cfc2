"""Training time of each network architecture, to plan the Fashion-MNIST runs.

    python scripts/benchmark_architectures.py      # conv, gated-conv, gated-fullres-conv
    python scripts/benchmark_architectures.py --device cuda --arch gated-conv gated-fullres-conv

Each architecture trains the published table's convolutional model (by default the
two-level VAE with the VampPrior, 300-300 hidden layers, 40 latents, batch 100) for two
epochs of ``--images`` random images through :func:`pyro_vae.train`, the trainer's own
step (on one GPU the CUDA-graph replay), each epoch ending with a validation pass over
10,000 images. The first epoch pays for warm-up and capture; the second is timed.
Printed per architecture: parameters, seconds per training step, and the seconds a
50,000-image epoch with its validation pass would take (500 steps plus the validation pass), the
figure that says how many epochs fit in a time budget.
"""

import argparse
import math
import tempfile

import torch
from reproduce_fashion_mnist import machine  # scripts/ is on sys.path

from pyro_vae import ImageData, TrainConfig, read_metrics, train

#: The protocol's training set and validation set sizes (docs/results/index.md).
TRAIN_IMAGES, VAL_IMAGES = 50_000, 10_000


def random_images(num_train: int, seed: int = 0) -> ImageData:
    """Grey-level training images and binary validation images of Fashion-MNIST's shape:
    the cost of a step does not depend on what the pixels show."""
    generator = torch.Generator().manual_seed(seed)
    val = torch.bernoulli(torch.rand(VAL_IMAGES, 784, generator=generator), generator=generator)
    return ImageData(
        train=torch.rand(num_train, 784, generator=generator),
        train_labels=torch.zeros(num_train, dtype=torch.long),
        val=val,
        val_labels=torch.zeros(VAL_IMAGES, dtype=torch.long),
        test=val[:100],
        test_labels=torch.zeros(100, dtype=torch.long),
        image_shape=(1, 28, 28),
        class_names=("image",),
        binarize=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["conv", "gated-conv", "gated-fullres-conv"])
    parser.add_argument("--model", default="hvae")
    parser.add_argument("--prior", default="vamp")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--images", type=int, default=2000, help="training images per epoch")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = random_images(args.images)
    steps = math.ceil(args.images / args.batch_size)
    print(f"machine: {machine()}; {args.threads} threads, device {args.device}")
    print(f"model {args.model}, prior {args.prior}, batch {args.batch_size}, {steps} steps timed")
    print("| architecture | parameters | s per step | s per 50k-image epoch with validation |")
    print("|---|---|---|---|")
    for arch in args.arch:
        config = TrainConfig(
            model=args.model,
            arch=arch,
            prior=args.prior,
            hidden_dims=(300, 300),
            latent_dim=40,
            batch_size=args.batch_size,
            epochs=2,
            device=args.device,
            seed=0,
        )
        with tempfile.TemporaryDirectory() as out:
            vae = train(config, out, data=data, progress=False, log=lambda _: None)
            timed = read_metrics(out)[-1]
        per_step = timed["train_seconds"] / steps
        validation = timed["seconds"] - timed["train_seconds"]
        epoch = per_step * math.ceil(TRAIN_IMAGES / args.batch_size) + validation
        parameters = sum(p.numel() for p in vae.parameters())
        print(f"| {arch} | {parameters:,} | {per_step:.4f} | {epoch:.1f} |", flush=True)


if __name__ == "__main__":
    main()
