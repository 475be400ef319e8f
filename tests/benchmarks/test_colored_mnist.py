"""The ``colored_mnist`` source: colour predicts the class with probability ρ in training, is uniform at test,
strokes take the colour, groups are 10 · label + colour."""
import pytest
import torch

from tc2ssl.config import DataConfig
from tc2ssl.data.base import DataSplits, ImageSet
from tc2ssl.data.colored_mnist import (COLOUR_NAMES, COLOURS, GROUP_NAMES, colored_mnist_splits, colorize,
                                       load_colored_mnist)
from tc2ssl.data.sources import load_data
from tc2ssl.errors import ConfigError


def grey_digits(n_train: int, n_test: int) -> DataSplits:
    """Grey 'digits' (random strokes on black) with balanced labels 0..9."""
    g = torch.Generator().manual_seed(0)

    def make(n, name):
        images = (torch.rand(n, 1, 8, 8, generator=g) > 0.6).to(torch.uint8) * torch.randint(
            1, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
        return ImageSet(images, torch.arange(n) % 10, [str(i) for i in range(10)], name)

    return DataSplits(train=make(n_train, "train"), test=make(n_test, "test"))


def colour_of(groups: torch.Tensor) -> torch.Tensor:
    return groups % 10


def test_training_colour_matches_the_class_with_probability_rho():
    splits = colored_mnist_splits(grey_digits(20000, 10), rho=0.9)
    labels, colours = splits.train.labels, colour_of(splits.train.groups)
    aligned = (colours == labels).double().mean().item()
    assert abs(aligned - 0.9) < 0.0065  # 3 standard errors at n = 20,000
    # the other 10% spread uniformly over the 9 other colours: offsets 1..9 each about 1/9 of them
    offsets = ((colours - labels) % 10)[colours != labels]
    shares = torch.bincount(offsets, minlength=10).double() / len(offsets)
    assert shares[0] == 0 and torch.all((shares[1:] - 1 / 9).abs() < 0.02)


def test_test_colours_are_uniform_and_independent_of_the_class():
    splits = colored_mnist_splits(grey_digits(10, 20000), rho=0.9)
    colours, labels = colour_of(splits.test.groups), splits.test.labels
    shares = torch.bincount(colours, minlength=10).double() / len(colours)
    assert torch.all((shares - 0.1).abs() < 0.01)
    assert abs((colours == labels).double().mean().item() - 0.1) < 0.01


def test_groups_names_and_stroke_colouring():
    grey = grey_digits(50, 50)
    splits = colored_mnist_splits(grey, rho=0.9)
    for split, source in ((splits.train, grey.train), (splits.test, grey.test)):
        assert split.images.shape == (50, 3, 8, 8) and split.images.dtype == torch.uint8
        assert torch.equal(split.groups // 10, split.labels)
        assert split.group_names == GROUP_NAMES and len(GROUP_NAMES) == 100
        i = 7
        colour = colour_of(split.groups)[i].item()
        assert split.group_names[split.groups[i]] == f"{split.labels[i].item()}/{COLOUR_NAMES[colour]}"
        expected = (source.images[i].float() / 255 * COLOURS[colour].view(3, 1, 1)).round()
        assert torch.equal(split.images[i].float(), expected)
        assert torch.all(split.images[i][:, source.images[i][0] == 0] == 0)  # the background stays black


def test_colouring_is_fixed_and_rho_bounds():
    grey = grey_digits(200, 200)
    a, b = colored_mnist_splits(grey, 0.9), colored_mnist_splits(grey, 0.9)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.groups, b.test.groups)
    always = colored_mnist_splits(grey, 1.0).train
    assert torch.equal(colour_of(always.groups), always.labels)
    with pytest.raises(ConfigError, match="rho"):
        colored_mnist_splits(grey, 1.5)
    with pytest.raises(ValueError, match="grey"):
        colorize(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))


def test_grey_channels_are_rejected():
    with pytest.raises(ConfigError, match="data.channels=1"):
        load_colored_mnist(DataConfig(name="colored_mnist", channels=1))


@pytest.mark.data
def test_real_colored_mnist_through_load_data(shared_data):
    splits = load_data(DataConfig(name="colored_mnist", root=str(shared_data), max_train=3000))
    train, test = splits.train, splits.test
    assert train.images.shape == (3000, 3, 28, 28) and test.images.shape == (10000, 3, 28, 28)
    assert abs((colour_of(train.groups) == train.labels).double().mean().item() - 0.9) < 0.02
    assert abs((colour_of(test.groups) == test.labels).double().mean().item() - 0.1) < 0.01
    # a stroke pixel's RGB is proportional to its colour
    i = 0
    colour = COLOURS[colour_of(test.groups)[i]]
    brightest = test.images[i].flatten(1)[:, test.images[i].sum(0).flatten().argmax()].float()
    assert torch.allclose(brightest / brightest.max(), colour / colour.max(), atol=0.02)
