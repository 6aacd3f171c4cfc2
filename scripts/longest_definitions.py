"""The longest functions and classes of the package, in lines (docstrings included).

Usage: ``python scripts/longest_definitions.py [--top N] [PATH]``; the design keeps
functions within 60 lines and classes within 200.
"""

import argparse
import ast
from pathlib import Path


def definitions(root: Path) -> list[tuple[int, str, str]]:
    """``(lines, kind, where)`` of every function and class under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                lines = node.end_lineno - node.lineno + 1
                found.append((lines, kind, f"{path}:{node.lineno} {node.name}"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="pyro_vae", type=Path)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    found = definitions(args.path)
    for kind in ("function", "class"):
        print(f"longest {kind}s:")
        ranked = sorted((d for d in found if d[1] == kind), reverse=True)
        for lines, _, where in ranked[: args.top]:
            print(f"  {lines:4d}  {where}")


if __name__ == "__main__":
    main()
