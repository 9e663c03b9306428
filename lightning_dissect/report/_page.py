"""The frame shared by the report pages: head with inline CSS, top header with navigation, main, script."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from html import escape
from typing import Any

from lightning_dissect._utils.text import plural


def subtitle(*parts: str) -> str:
    """The non-empty ``parts`` and the time of writing, joined by `` · ``."""
    return " · ".join(p for p in (*parts, _dt.datetime.now().strftime("written %Y-%m-%d %H:%M")) if p)


def run_facts(num_layers: int, settings: Mapping[str, Any]) -> tuple[str, str, str]:
    """Layer count, sample count and threshold mode of a result's settings (empty when not recorded)."""
    return (
        plural(num_layers, "layer"),
        plural(settings["num_samples"], "sample") if "num_samples" in settings else "",
        f"{settings['threshold_mode']} thresholds" if "threshold_mode" in settings else "",
    )


def html_page(title: str, sub: str, nav: str, css: str, main: str, script: str) -> str:
    """A whole self-contained page; ``title`` and ``sub`` are escaped, the rest is HTML/CSS/JS."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>
{css}
</style>
</head>
<body>
<header class="top">
  <h1>{escape(title)}</h1>
  <div class="sub">{escape(sub)}</div>
  <nav>{nav}</nav>
</header>
<main>
{main}
</main>
<script>
{script}
</script>
</body>
</html>
"""
