"""Checks a NixOS VM test's Python script without running it (there is no VM
here): it must compile, and every name it reads must be bound somewhere in it,
be a Python builtin, or be one the NixOS test driver provides. That catches
syntax errors and misspelt helpers before a Nix machine boots a VM for them.

Usage: python3 vm-script-lint.py NAME=FILE...   (exit 1 on the first problem)
"""

import ast
import builtins
import sys

# what nixos/lib/test-driver puts into a test script's globals
DRIVER = {
    "machine", "machines", "start_all", "subtest", "driver", "log", "retry",
    "serial_stdout_on", "serial_stdout_off", "polling_condition", "join_all",
    "create_machine", "run_tests", "vlans", "t",
}


def bound_names(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            a = node.args if not isinstance(node, ast.ClassDef) else None
            if a:
                for arg in a.posonlyargs + a.args + a.kwonlyargs:
                    names.add(arg.arg)
                if a.vararg:
                    names.add(a.vararg.arg)
                if a.kwarg:
                    names.add(a.kwarg.arg)
        elif isinstance(node, ast.Lambda):
            for arg in node.args.args:
                names.add(arg.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def lint(name, source):
    try:
        tree = ast.parse(source, filename=name)
        compile(tree, name, "exec")
    except SyntaxError as e:
        return [f"{name}:{e.lineno}:{e.offset}: {e.msg}"]
    known = bound_names(tree) | set(dir(builtins)) | DRIVER
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in known:
            problems.append(f"{name}:{node.lineno}:{node.col_offset + 1}: '{node.id}' is not defined")
    return problems


def main(args):
    bad = []
    for arg in args:
        name, _, path = arg.partition("=")
        with open(path) as f:
            bad += lint(name, f.read())
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
