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

__all__ = ["CellAnalysis", "analyze_cell", "split_last_expression", "IPYTHON_NAMES",
           "ends_with_semicolon"]

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
    #: Read names the cell may change in place (item/attribute stores, method calls,
    #: passed to a function...): the worker checks them and brings back changed ones.
    maybe_mutated: frozenset[str] = frozenset()
    quiet: bool = False  # the last line ends with ``;``: the value is not displayed


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
    """Names loaded (or deleted) in ``node``; ``x += 1`` loads ``x`` too."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Load, ast.Del)):
            out.add(n.id)
        elif isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
            out.add(n.target.id)
    return out


def _scope_globals(table: symtable.SymbolTable, reads: set[str], writes: set[str]) -> None:
    """Collect module-level names used (or assigned via ``global``) in nested scopes."""
    for child in table.get_children():
        for sym in child.get_symbols():
            if sym.is_global():
                if sym.is_referenced():
                    reads.add(sym.get_name())
                if sym.is_declared_global() and sym.is_assigned():
                    writes.add(sym.get_name())
                    reads.add(sym.get_name())  # it may be ``global n; n += 1``
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
    augmented = {n.target.id for n in ast.walk(tree)
                 if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name)}
    for sym in table.get_symbols():
        if sym.is_referenced() or sym.get_name() in augmented:
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
    mutated = frozenset(reads & impure_names(tree))
    return CellAnalysis(frozenset(reads), tuple(ordered), imports, has_last, mutated,
                        has_last and ends_with_semicolon(source))


#: Builtins that never change their arguments: passing a value to them is a pure read.
PURE_CALLS = frozenset({
    "print", "len", "repr", "str", "int", "float", "bool", "complex", "sum", "min", "max",
    "sorted", "list", "tuple", "set", "frozenset", "dict", "abs", "round", "isinstance",
    "issubclass", "type", "id", "hash", "format", "enumerate", "zip", "range", "any", "all",
    "hasattr", "getattr", "callable", "divmod", "pow", "ascii", "bin", "hex", "oct", "ord",
    "chr", "bytes", "reversed",
})
#: Methods that only read their object (``d.get(k)``, ``s.split()``...).
PURE_METHODS = frozenset({
    "get", "keys", "values", "items", "copy", "count", "index", "startswith", "endswith",
    "split", "strip", "lower", "upper", "format", "join", "tolist", "mean", "std", "sum",
    "min", "max", "any", "all", "round", "argmax", "argmin",
})
_PURE_PARENTS = (ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.FormattedValue,
                 ast.JoinedStr, ast.Expr, ast.Assert, ast.If, ast.While, ast.IfExp)


def impure_names(tree: ast.AST) -> set[str]:
    """Names used somewhere the value could be changed in place or escape (an alias).

    Pure uses: operands (``x + 1``, ``x < y``), arguments of :data:`PURE_CALLS`,
    reading methods (:data:`PURE_METHODS`), items and attributes read into a pure use
    (``print(d['k'])``), a bare expression. Anything else counts: ``d[k] = v``,
    ``p.x = 1``, ``items.append(3)``, ``f(cfg)``, ``alias = data``.
    """
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and \
                not _pure_use(node, parents):
            out.add(node.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return out


def _pure_use(name: ast.Name, parents: dict[ast.AST, ast.AST]) -> bool:
    expr: ast.AST = name
    parent = parents.get(expr)
    while isinstance(parent, (ast.Subscript, ast.Attribute)) and parent.value is expr:
        if not isinstance(parent.ctx, ast.Load):
            return False  # d[k] = v, p.x = 1, del d[k]
        expr, parent = parent, parents.get(parent)
    if isinstance(parent, ast.Subscript) and parent.slice is expr:
        return True  # used as an index
    if isinstance(parent, ast.Call):
        if parent.func is expr:  # calling it (a function), or a method call on the value
            return isinstance(expr, ast.Name) or (isinstance(expr, ast.Attribute)
                                                  and expr.attr in PURE_METHODS)
        return isinstance(parent.func, ast.Name) and parent.func.id in PURE_CALLS
    if isinstance(parent, ast.keyword):
        call = parents.get(parent)
        return isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and \
            call.func.id in PURE_CALLS
    return isinstance(parent, _PURE_PARENTS)


def ends_with_semicolon(source: str) -> bool:
    """Whether the cell's last code token is ``;`` (IPython then hides the value)."""
    import io
    import tokenize

    last = ""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE,
                                tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
                last = tok.string
    except (tokenize.TokenError, SyntaxError):
        return False
    return last == ";"


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

