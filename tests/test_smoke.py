"""The package imports and says its version."""

import segops


def test_version_is_a_string() -> None:
    """segops exposes a non-empty __version__."""
    assert isinstance(segops.__version__, str) and segops.__version__
