"""The confusion matrix of a model that classifies (the semi-supervised VAE's q(y|x))."""

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_vae.analysis.evaluation import label_accuracy
from pyro_vae.figures.canvas import agg_figure
from pyro_vae.models.semisupervised import SemiSupervisedVAE


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Counts ``(true class, predicted class)``."""
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(
        classes, classes
    )


@torch.no_grad()
def confusion_figure(
    vae: SemiSupervisedVAE, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]
) -> Figure:
    """Each true class's share of predictions per class, with the counts in the cells."""
    predicted = torch.cat([vae.classify(x) for x in images.split(10_000)]).cpu().numpy()
    counts = confusion_matrix(predicted, labels.cpu().numpy(), len(class_names))
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = agg_figure(figsize=(7.5, 6.5))
    ax = fig.subplots()
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if shares[row, col] > 0.5 else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted: most probable y under q(y|x)")
    ax.set_ylabel("true label")
    accuracy = label_accuracy(vae, images, labels)
    ax.set_title(f"Test images: accuracy {accuracy:.1%} ({len(labels)} images)")
    fig.colorbar(shown, ax=ax, label="share of the true class")
    return fig
