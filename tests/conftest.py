from pathlib import Path

import pytest
import torch

# tiny test models run fastest (and steadiest on a shared machine) on one thread
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one intra-op thread; a test that changes the count does not leak it to the next."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_data_dir() -> Path | None:
    from tc2ssl.data.sources import shared_data_root

    root = shared_data_root(None)
    return root if (root / "README.md").exists() or (root / "digits").is_dir() else None


@pytest.fixture
def shared_data():
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data is not available")
    return root
