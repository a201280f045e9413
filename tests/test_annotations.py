"""Every public function and method of rbe's Python modules has type annotations (the package
ships py.typed): each parameter but self/cls, and the return value of all but __init__."""
import ast
from pathlib import Path

import pytest

import rbe

PACKAGE = Path(rbe.__file__).parent
NOT_YET_ANNOTATED = {"torch.py"}
MODULES = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in NOT_YET_ANNOTATED)


def public_functions(tree: ast.Module):
    """(qualified name, function node) of module-level functions and methods of public
    classes whose names do not start with "_" (constructors included)."""
    def walk(body, owner):
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                yield from walk(node.body, f"{owner}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    (not node.name.startswith("_") or (owner and node.name == "__init__")):
                yield owner + node.name, node
    return walk(tree.body, "")


def unannotated(node: ast.FunctionDef, is_method: bool) -> list:
    args = node.args
    params = args.posonlyargs + args.args + args.kwonlyargs
    params += [a for a in (args.vararg, args.kwarg) if a is not None]
    if is_method and params and params[0].arg in ("self", "cls"):
        params = params[1:]
    missing = [p.arg for p in params if p.annotation is None]
    if node.returns is None and node.name != "__init__":
        missing.append("return")
    return missing


@pytest.mark.parametrize("module", MODULES)
def test_public_functions_are_annotated(module):
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    gaps = {name: missing for name, node in public_functions(tree)
            if (missing := unannotated(node, "." in name))}
    assert not gaps, f"{module}: unannotated {gaps}"


def test_the_check_sees_what_it_should():
    tree = ast.parse("def f(a, b: int) -> int: ...\n"
                     "class C:\n    def __init__(self, x): ...\n    def _p(self, y): ...\n"
                     "    def g(self) -> None: ...\nclass _D:\n    def h(self, z): ...\n")
    found = {name: unannotated(node, "." in name) for name, node in public_functions(tree)}
    assert found == {"f": ["a"], "C.__init__": ["x"], "C.g": []}
