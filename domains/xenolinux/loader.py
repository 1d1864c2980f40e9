"""exec's loader: a program file becomes a coroutine in a fresh address space.

Rules:
1. A program is Python source defining a generator `main(argv)`. exec
   reads it through the VFS (ext2 over blkfront), copies the bytes into the
   process's text pages, and compiles what the text pages hold.
2. The timer tick: a Python generator cannot be interrupted from outside,
   so the loader adds `if __preempt__(): yield __PREEMPT__` at the top of
   every loop in a generator function (the back-edge where a CPU would take
   a timer interrupt). The scheduler's quantum decides when it yields.
3. Programs get the libc and a short list of builtins: no import, open,
   eval or exec of the host. (This keeps honest programs honest; it is not
   a sandbox boundary, since the model's CPU is the Python interpreter.)
"""

import ast
import builtins
import errno

from domains.xenolinux import libc
from domains.xenolinux.abi import ERRNO, Preempt

MAX_PROGRAM = 256 * 1024
SAFE_BUILTINS = (
    "abs", "all", "any", "bin", "bool", "bytearray", "bytes", "chr", "dict", "divmod",
    "enumerate", "filter", "float", "format", "hex", "int", "isinstance", "iter", "len",
    "list", "map", "max", "min", "next", "oct", "ord", "pow", "range", "repr", "reversed",
    "round", "set", "sorted", "str", "sum", "tuple", "zip", "Exception", "ValueError",
    "KeyError", "IndexError", "TypeError", "StopIteration", "ZeroDivisionError",
    "__build_class__", "object", "property", "staticmethod", "classmethod", "super",
)
PREEMPT = Preempt()
_TICK = ast.parse("if __preempt__():\n    yield __PREEMPT__").body[0]


def _is_generator(fn: ast.AST) -> bool:
    for node in ast.walk(fn):
        if node is not fn and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
    return False


class _Ticks(ast.NodeTransformer):
    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:  # noqa: N802
        gen = _is_generator(node)
        self.generic_visit(node)
        if gen:
            for loop in (n for n in ast.walk(node) if isinstance(n, (ast.While, ast.For))):
                loop.body.insert(0, _TICK)
        return node


def compile_program(source: bytes, path: str):
    """Code object of a program; OSError(ENOEXEC) if it is not one."""
    try:
        tree = ast.parse(source.decode(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError) as err:
        raise OSError(errno.ENOEXEC, f"{path}: {err}") from None
    tree = ast.fix_missing_locations(_Ticks().visit(tree))
    return compile(tree, path, "exec")


def instantiate(code, argv: list[str], load, store, preempt):
    """Run the program's top level and return its main(argv) coroutine."""
    ns = {"__builtins__": {n: getattr(builtins, n) for n in SAFE_BUILTINS},
          "__name__": "__main__", "__preempt__": preempt, "__PREEMPT__": PREEMPT}
    ns.update(libc.instantiate(load, store))
    ns.update(ERRNO)
    from domains.xenolinux import abi
    ns.update({k: v for k, v in vars(abi).items() if k.startswith(
        ("O_", "SEEK_", "W", "PROT_", "AF_", "SOCK_", "SHUT_", "POLL"))})
    ns.update({"SIGKILL": 9, "SIGSEGV": 11, "SIGTERM": 15})
    exec(code, ns)  # noqa: S102 - the program's own top level, in its namespace
    main = ns.get("main")
    if main is None:
        raise OSError(errno.ENOEXEC, "no main(argv)")
    coro = main(list(argv))
    if not hasattr(coro, "send"):
        raise OSError(errno.ENOEXEC, "main(argv) is not a generator")
    return coro
