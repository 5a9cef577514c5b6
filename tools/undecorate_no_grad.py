"""Rewrite ``@torch.no_grad()`` functions of a module as plain functions whose body runs under ``with torch.no_grad():``.

Same behaviour, but no decorator, so that mutmut (which skips decorated functions) mutates them too. Used by
``tools/mutation_test.sh`` on its copy of the package only:  python tools/undecorate_no_grad.py FILE.py
"""
import sys

import libcst as cst
import libcst.matchers as m

NO_GRAD = m.Decorator(decorator=m.Call(func=m.Attribute(value=m.Name("torch"), attr=m.Name("no_grad")), args=[]))


class Undecorate(cst.CSTTransformer):
    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        if len(updated.decorators) != 1 or not m.matches(updated.decorators[0], NO_GRAD):
            return updated
        body = list(updated.body.body)
        docstring = body[:1] if updated.get_docstring() is not None else []
        with_block = cst.With(items=[cst.WithItem(cst.parse_expression("torch.no_grad()"))],
                              body=cst.IndentedBlock(body=body[len(docstring):]))
        return updated.with_changes(decorators=[], body=updated.body.with_changes(body=docstring + [with_block]))


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            tree = cst.parse_module(f.read())
        with open(path, "w") as f:
            f.write(tree.visit(Undecorate()).code)
