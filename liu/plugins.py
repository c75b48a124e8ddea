"""One loader for user scanners and strategies named by file and class."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from liu.errors import PluginError

log = logging.getLogger(__name__)
T = TypeVar("T")


def load_class(file: Path, class_name: str, base: type[T]) -> type[T]:
    """Import `class_name` from `file` and check it subclasses `base`."""
    if not file.is_file():
        raise PluginError(f"{base.__name__.lower()} file {file}: not found (class {class_name})")
    module_name = "liu_plugin_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, file)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[module_name]
            raise PluginError(f"{file}: importing it failed: {type(e).__name__}: {e}") from e
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PluginError(f"{file}: no class {class_name!r} in it")
    if not (isinstance(cls, type) and issubclass(cls, base)) or cls is base:
        raise PluginError(f"{file}: {class_name} must be a subclass of liu.{base.__name__}")
    log.debug("loaded %s from %s", class_name, file)
    return cls


def instantiate(file: Path, class_name: str, base: type[T], name: str, config: dict[str, Any]) -> T:
    """Load the class, validate `config` with its `Config` model and build the instance."""
    cls = load_class(file, class_name, base)
    try:
        cfg = cls.Config.model_validate(config)  # type: ignore[attr-defined]
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "?"
        raise PluginError(
            f"{file}: {class_name} config key {key!r}: {err['msg']} (given {err.get('input')!r})"
        ) from None
    return cls(name, cfg)  # type: ignore[call-arg]
