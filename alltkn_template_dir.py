"""A Jinja extension that tells the hooks where the template is: `template_dir()`.

Cookiecutter renders each hook with Jinja from inside the template directory (`work_in(repo_dir)`
in `cookiecutter.hooks.run_hook_from_repo_dir`), for `cookiecutter` (local path, relative path,
`.`, or a clone in its cookiecutters_dir) and for cruft (`create`, `update`, `diff` call
cookiecutter's `generate_files`, which does the same). So while a hook is rendered, the working
directory of the rendering process is the template. The hooks render `template_dir()` into their
`__main__` block and import the shared `hooks/alltkn_hooks` package from there.

Loaded through `_extensions` in cookiecutter.json: cookiecutter and cruft both put the template
directory on `sys.path` (the documented "local extensions"). The value is read when called, not
at import: `cruft update` imports this module once and renders two checkouts. Nothing here is
specific to an operating system. Only meaningful while a hook is rendered.
"""

from __future__ import annotations

import os

from jinja2 import Environment
from jinja2.ext import Extension


def template_dir() -> str:
    """The absolute working directory of the rendering process: the template, during a hook."""
    return os.getcwd()


class TemplateDirExtension(Extension):
    """Adds the global `template_dir()`."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.globals["template_dir"] = template_dir
