"""Sphinx configuration of callstate's documentation site (``make docs``; warnings are errors)."""

from __future__ import annotations

import sys
import importlib.metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this tree, whatever is installed

project = "callstate"
author = "The callstate developers"
copyright = "2026, The callstate developers"
release = importlib.metadata.version("callstate")
version = release

# Pages are Markdown (MyST), so the README and the site share one syntax and tests/test_docs_blocks.py
# runs the code blocks of both. The API reference comes from the docstrings (Google style, with
# reStructuredText inline markup), through autodoc and napoleon.
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
html_theme = "furo"
html_title = f"callstate {release}"
