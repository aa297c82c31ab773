"""What ``import fluxq`` offers: the client names and the whole error tree, nothing missing."""

from __future__ import annotations

import inspect

import fluxq
from fluxq.config import errors


def test_every_error_fluxq_raises_is_a_name_of_fluxq() -> None:
    tree = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and value.__module__ == errors.__name__
    }
    assert "FluxqError" in tree
    assert tree <= set(fluxq.__all__), sorted(tree - set(fluxq.__all__))
    for name in tree:
        assert getattr(fluxq, name) is getattr(errors, name)


def test_every_public_name_resolves() -> None:
    for name in fluxq.__all__:
        assert getattr(fluxq, name) is not None, name
