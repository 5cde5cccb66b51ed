"""Patches of other libraries' private code: one module per library, the only place fastnemo replaces or
leans on a function that library does not promise to keep.

Each module names the version it was written against and refuses to import under another (``require``):
a changed private function is an error that says so, not a silent mis-training. Each lists in
``RELIES_ON`` the private functions its patches replace or depend on; tests/fastnemo/test_patches.py pins
a hash of each one's source, so a library upgrade that changes one fails with a message to re-check the
patch. The modules import their library at the top: import them lazily (inside functions), as
``fastnemo.lora`` does, so that reading a recipe pays for none of them.
"""

from __future__ import annotations


def require(library: str, installed: str, written_against: str, accepts: str, module: str) -> None:
    """Raise ImportError unless ``installed`` is ``accepts`` or a release of that series (``"0.21"``
    accepts 0.21.0 and 0.21.2)."""
    if installed != accepts and not installed.startswith(accepts + "."):
        raise ImportError(
            f"{module} patches private code of {library} {written_against}, but {library} {installed} is "
            f"installed: pip install '{library}=={accepts if accepts.count('.') == 2 else accepts + '.*'}' "
            f"(or re-check the patches against {installed} and update the version in {module})"
        )


def wrap_once(owner, name: str, wrap) -> None:
    """Replace ``owner.name`` (a library's module-level name) by ``wrap(original)``, once per process. The
    original stays reachable as ``.fastnemo_original``: the source pins of the tests read the library's code."""
    current = getattr(owner, name)
    if not getattr(current, "fastnemo_wrapped", False):
        wrapped = wrap(current)
        wrapped.fastnemo_wrapped, wrapped.fastnemo_original = True, current
        setattr(owner, name, wrapped)
