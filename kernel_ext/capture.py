"""Which names a cell reads and which it assigns, found by analysing its code.

``%%remote`` ships only what a cell reads (not the whole namespace) and brings
back what it assigns. The analysis is static and conservative: a name counts as
read unless the cell binds it unconditionally before its first use; functions,
lambdas, comprehensions and class bodies are scoped with :mod:`symtable`, so a
local variable of a function defined in the cell is never mistaken for a global.
This module imports nothing from IPython, so workers can import it cheaply.
"""

from __future__ import annotations

import ast
import symtable
from dataclasses import dataclass, field

__all__ = ["CellAnalysis", "analyze_cell", "split_last_expression", "IPYTHON_NAMES"]

#: Names IPython keeps in the user namespace that never travel with a cell.
IPYTHON_NAMES = frozenset({
    "In", "Out", "get_ipython", "exit", "quit", "_", "__", "___", "_i", "_ii", "_iii",
    "_ih", "_oh", "_dh", "__builtins__", "__name__", "__doc__", "__spec__", "__loader__",
    "__package__", "__builtin__",
})

_UNCONDITIONAL = (ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom, ast.FunctionDef,
                  ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True, slots=True)
class CellAnalysis:
    """What a cell reads from the namespace, what it binds, and what it imports."""

    reads: frozenset[str]
    writes: tuple[str, ...]  # in first-binding order
    imports: dict[str, str] = field(default_factory=dict)  # bound name -> module name
    has_last_expression: bool = False


def _stored_names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Store)]


def _bindings(stmt: ast.stmt) -> list[str]:
    """Names an unconditional top-level statement binds in the module scope."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name.split(".")[0]) for a in stmt.names if a.name != "*"]
    if isinstance(stmt, ast.Assign):
        return [n for t in stmt.targets for n in _stored_names(t)]
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return _stored_names(stmt.target)
    return []


def _loads(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
            and isinstance(n.ctx, (ast.Load, ast.Del))}


def _scope_globals(table: symtable.SymbolTable, reads: set[str], writes: set[str]) -> None:
    """Collect module-level names used (or assigned via ``global``) in nested scopes."""
    for child in table.get_children():
        for sym in child.get_symbols():
            if sym.is_global():
                if sym.is_referenced():
                    reads.add(sym.get_name())
                if sym.is_declared_global() and sym.is_assigned():
                    writes.add(sym.get_name())
        _scope_globals(child, reads, writes)


def _targets(node: ast.AST | None) -> set[str]:
    return set(_stored_names(node)) if node is not None else set()


def _visit_block(stmts: list[ast.stmt], defined: set[str], out: set[str]) -> set[str]:
    """Add to ``out`` the names loaded where they are not certainly bound yet.

    ``defined`` (updated in place) holds the names certainly bound so far.
    """
    for stmt in stmts:
        if isinstance(stmt, (ast.For, ast.AsyncFor)):
            out |= _loads(stmt.iter) - defined
            _visit_block(stmt.body, defined | _targets(stmt.target), out)
            _visit_block(stmt.orelse, set(defined), out)
        elif isinstance(stmt, (ast.While, ast.If)):
            out |= _loads(stmt.test) - defined
            _visit_block(stmt.body, set(defined), out)
            _visit_block(stmt.orelse, set(defined), out)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                out |= _loads(item.context_expr) - defined
                defined |= _targets(item.optional_vars)
            _visit_block(stmt.body, defined, out)
        elif isinstance(stmt, ast.Try):
            _visit_block(stmt.body, set(defined), out)
            for h in stmt.handlers:
                if h.type is not None:
                    out |= _loads(h.type) - defined
                _visit_block(h.body, defined | ({h.name} if h.name else set()), out)
            _visit_block(stmt.orelse, set(defined), out)
            _visit_block(stmt.finalbody, set(defined), out)
        else:
            out |= _loads(stmt) - defined
            if isinstance(stmt, _UNCONDITIONAL):
                defined.update(_bindings(stmt))
    return defined


def analyze_cell(source: str, filename: str = "<cell>") -> CellAnalysis:
    """Analyse ``source`` (plain Python); raises ``SyntaxError`` as ``compile`` would."""
    tree = ast.parse(source, filename=filename)
    table = symtable.symtable(source, filename, "exec")
    candidates: set[str] = set()
    nested_writes: set[str] = set()
    for sym in table.get_symbols():
        if sym.is_referenced():
            candidates.add(sym.get_name())
    _scope_globals(table, candidates, nested_writes)

    # A name is not read from the namespace where the cell has certainly bound
    # it already (flow-sensitive over the top-level statements).
    loaded_unbound: set[str] = set()
    _visit_block(tree.body, set(), loaded_unbound)
    reads = {n for n in candidates & loaded_unbound if n not in IPYTHON_NAMES}

    found: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names = [node.id]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(a.asname or a.name.split(".")[0]) for a in node.names if a.name != "*"]
        found += [(node.lineno, node.col_offset, n) for n in names]  # type: ignore[attr-defined]
    writes: list[str] = []
    seen: set[str] = set()
    for _line, _col, n in sorted(found):
        if n not in seen:
            seen.add(n)
            writes.append(n)
    module_bound = {s.get_name() for s in table.get_symbols()
                    if s.is_assigned() or s.is_imported() or s.is_namespace()}
    module_bound |= nested_writes
    ordered = [n for n in writes if n in module_bound]
    ordered += sorted(module_bound - set(ordered))

    imports: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                imports[a.asname or a.name.split(".")[0]] = a.name if a.asname else \
                    a.name.split(".")[0]
    has_last = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    return CellAnalysis(frozenset(reads), tuple(ordered), imports, has_last)


def split_last_expression(source: str, filename: str = "<cell>",
                          line_offset: int = 0) -> tuple[ast.Module, ast.Expression | None]:
    """Split a cell into its body and its last expression (None when it ends otherwise).

    ``line_offset`` shifts line numbers so tracebacks match the notebook cell
    (``%%remote`` is line 1, so the code starts at line 2).
    """
    tree = ast.parse(source, filename=filename)
    if line_offset:
        ast.increment_lineno(tree, line_offset)
    last: ast.Expression | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expr = tree.body.pop()
        last = ast.Expression(body=expr.value)  # type: ignore[attr-defined]
        ast.copy_location(last, expr)
    return tree, last

