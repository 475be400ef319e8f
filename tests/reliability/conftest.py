import pytest
from reliability_helpers import run_cli


@pytest.fixture
def cli(capsys):
    """``cli("pretrain", "k=v", ...)`` -> (exit status, stdout, stderr), run in this process."""
    return lambda *argv: run_cli(capsys, *argv)
