"""Shared test fixtures: paths of the golden data copied into tests/fixtures."""
import pathlib

import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_dir() -> pathlib.Path:
    """The tiny MHA LLaDA checkpoint (HF layout) with its golden.npz."""
    return FIXTURES / "llada_tiny"


@pytest.fixture(scope="session")
def tiny_gqa_dir() -> pathlib.Path:
    return FIXTURES / "llada_tiny" / "gqa"
