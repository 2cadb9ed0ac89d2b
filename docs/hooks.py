"""mkdocs hooks: render procflow's docstrings well.

The docstrings carry bare ``>>>`` examples (they run as doctests). Markdown
would read ``>>>`` as three nested block quotes, so a small preprocessor wraps
every such block, outside fenced code, in a ``pycon`` fence before the fence
extension runs; Sphinx roles become inline code. It is added in ``on_config`` ahead of mkdocstrings, which
renders docstrings with the site's Markdown extensions.
"""

from __future__ import annotations

import re
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
#: Sphinx roles in the docstrings (``:class:`~procflow.Result```) become inline code.
_ROLE = re.compile(r":(?:class|func|meth|attr|exc|mod|data):`(~?)([\w.]+)`")


def _role(m: re.Match[str]) -> str:
    name = m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)
    return f"`{name}`"


class _DoctestBlocks(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fence: str | None = None
        i = 0
        while i < len(lines):
            line = lines[i]
            m = _FENCE.match(line)
            if fence is not None:
                if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                    fence = None
                out.append(line)
                i += 1
                continue
            if m:
                fence = m.group(1)
                out.append(line)
                i += 1
                continue
            if line.lstrip().startswith(">>>") and (not out or not out[-1].strip()):
                indent = line[: len(line) - len(line.lstrip())]
                block = []
                while i < len(lines) and lines[i].strip():
                    block.append(lines[i])
                    i += 1
                out.append(f"{indent}```pycon")
                out.extend(block)
                out.append(f"{indent}```")
                continue
            out.append(_ROLE.sub(_role, line))
            i += 1
        return out


class DoctestBlocks(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        # Above the fenced-code preprocessors (priority 25), so they see our fences.
        md.preprocessors.register(_DoctestBlocks(md), "procflow_doctest_blocks", 40)


@event_priority(100)  # before mkdocstrings reads the extension list
def on_config(config: Any) -> Any:
    config.markdown_extensions.append(DoctestBlocks())
    return config
