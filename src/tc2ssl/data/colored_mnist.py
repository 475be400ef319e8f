"""``colored_mnist``: real MNIST with a colour that predicts the class in training but not at test (D-BM-01 D2).

The TC² paper's Table 4 follows Gat et al. 2020 ("Removing bias in multi-modal classifiers: regularization by
maximizing functional entropies", NeurIPS) on ColoredMNIST as used by Nam et al. 2020 ("Learning from failure:
training debiased classifier from biased classifier", NeurIPS, the "biased MNIST" / Colored MNIST of LfF):
the digit's strokes are coloured with one of 10 fixed colours, and in training the colour is a shortcut for the
class. Construction here:

* images: the ``mnist`` source (digits/mnist_{train,test}.npz under the shared data root, 14,262 / 10,000,
  28×28 grey) at ``data.resolution``; each grey image x ∈ [0, 255] becomes the RGB image x/255 · colour, i.e.
  the strokes take the colour and the background stays black;
* colours: the 10 fixed, well separated RGB colours of :data:`COLOURS` (colour k is "aligned" with digit k);
* training split: digit c gets colour c with probability ρ (:data:`COLORED_MNIST_RHO` = 0.9, LfF uses
  0.95–0.995), otherwise one of the 9 other colours uniformly at random, so P(colour = class) = ρ;
* test split: every colour uniformly at random, independently of the digit (colour carries no information);
* the draws use fixed generators (seed 0 for training, 1 for test), so every run sees the same coloured images;
* ``groups`` = 10 · label + colour (100 groups, names ``"<digit>/<colour>"``), on both splits, so
  :func:`tc2ssl.eval.evaluate.evaluate_backbone` reports per-group accuracies and the worst group. A group is
  bias-aligned when colour = label and bias-conflicting otherwise.

``data.name=colored_mnist`` uses ρ = 0.9 (DataConfig has no field for it); :func:`colored_mnist_splits` takes any
ρ (``tc2ssl benchmark colored_mnist suite.rho=0.95``). Images are always RGB: ``data.channels`` must be 0 or 3.
"""
from __future__ import annotations

import dataclasses

import torch

from tc2ssl.data.base import DataSplits, ImageSet
from tc2ssl.data.sources import SOURCES
from tc2ssl.errors import ConfigError

COLORED_MNIST_RHO = 0.9
TRAIN_COLOUR_SEED, TEST_COLOUR_SEED = 0, 1
N_COLOURS = 10
COLOUR_NAMES = ("red", "green", "yellow", "blue", "orange", "purple", "cyan", "magenta", "lime", "pink")
COLOURS = torch.tensor([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)],
                       dtype=torch.float32)  # colour k is aligned with digit k
GROUP_NAMES = [f"{digit}/{colour}" for digit in range(10) for colour in COLOUR_NAMES]


def biased_colours(labels: torch.Tensor, rho: float, generator: torch.Generator) -> torch.Tensor:
    """Colour index per image: the label's own colour with probability ``rho``, else one of the other 9 uniformly."""
    if not 0.0 <= rho <= 1.0:
        raise ConfigError(f"colored_mnist: rho={rho} must be a probability in [0, 1]")
    aligned = torch.rand(len(labels), generator=generator) < rho
    shift = torch.randint(1, N_COLOURS, (len(labels),), generator=generator)  # 1..9: never the label's colour
    return torch.where(aligned, labels, (labels + shift) % N_COLOURS)


def uniform_colours(n: int, generator: torch.Generator) -> torch.Tensor:
    """Colour index per image, uniform over the 10 colours and independent of the label."""
    return torch.randint(0, N_COLOURS, (n,), generator=generator)


def colorize(images: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Grey uint8 [N, 1, H, W] -> RGB uint8 [N, 3, H, W]: each stroke pixel x becomes x/255 · COLOURS[colour]."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"colorize needs grey images [N, 1, H, W], got shape {tuple(images.shape)}")
    if colours.shape != (images.shape[0],):
        raise ValueError(f"one colour per image: {images.shape[0]} images, colours of shape {tuple(colours.shape)}")
    rgb = COLOURS[colours].view(-1, 3, 1, 1)
    return (images.float() / 255.0 * rgb).round().clamp(0, 255).to(torch.uint8)


def coloured_set(grey: ImageSet, colours: torch.Tensor, name: str) -> ImageSet:
    return ImageSet(colorize(grey.images, colours), grey.labels, grey.classes, name,
                    groups=grey.labels * N_COLOURS + colours, group_names=list(GROUP_NAMES))


def colored_mnist_splits(mnist: DataSplits, rho: float = COLORED_MNIST_RHO) -> DataSplits:
    """Colour grey MNIST splits: a biased training split (P(colour = label) = ``rho``) and a uniform test split."""
    if mnist.test is None or mnist.train.labels is None or mnist.test.labels is None:
        raise ValueError("colored_mnist needs labelled MNIST train and test splits")
    train_colours = biased_colours(mnist.train.labels, rho, torch.Generator().manual_seed(TRAIN_COLOUR_SEED))
    test_colours = uniform_colours(len(mnist.test), torch.Generator().manual_seed(TEST_COLOUR_SEED))
    return DataSplits(train=coloured_set(mnist.train, train_colours, "colored_mnist-train"),
                      test=coloured_set(mnist.test, test_colours, "colored_mnist-test"))


def load_grey_mnist(cfg) -> DataSplits:
    if cfg.channels not in (0, 3):
        raise ConfigError(f"data.channels={cfg.channels} is not allowed for colored_mnist: its images are RGB "
                          "(use 0 or 3)")
    return SOURCES.get("mnist")(dataclasses.replace(cfg, name="mnist", channels=1, max_train=0))


@SOURCES.register("colored_mnist")
def load_colored_mnist(cfg) -> DataSplits:
    """Colored MNIST with ρ = COLORED_MNIST_RHO (see the module docstring)."""
    return colored_mnist_splits(load_grey_mnist(cfg))
