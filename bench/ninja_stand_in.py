"""A stand-in for ninja on machines without it (the lent GPU machine has no ninja and no
network): runs the build statements of the build.ninja that torch.utils.cpp_extension
writes, in parallel. Without any ninja, torch falls back to compiling the sources one after
another, minutes longer than bench/gpu_check.sh can spend.

    ninja_stand_in.py --version      # what torch asks to see whether ninja exists
    ninja_stand_in.py [-v] [-j N]    # builds ./build.ninja: every output, in parallel

Enough of ninja's syntax for those files: variables, rules with a command, ``build out: rule
in...`` statements, ``$var``/``${var}``/``$in``/``$out`` and the escapes ``$$``, ``$ ``,
``$:`` and ``$`` at the end of a line. Everything is rebuilt (no dependency tracking): a
fresh machine has nothing to keep. gpu_check.sh puts it on the PATH as ``ninja`` only where
no ninja is found.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

VERSION = "1.11.1"  # torch only checks that `ninja --version` succeeds


def _logical_lines(text):
    """Lines with ``$``-newline continuations joined, comments and blank lines dropped."""
    out, pending = [], None
    for raw in text.splitlines():
        raw = raw if pending is None else pending + raw.lstrip()  # a continuation's indent is dropped
        if raw.endswith("$") and not raw.endswith("$$"):
            pending = raw[:-1]
            continue
        line, pending = raw, None
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line)
    return out


def _expand(value, scope):
    def sub(m):
        token = m.group(1)
        if token == "$":
            return "$"
        if token in (" ", ":"):
            return token
        name = token.strip("{}")
        return scope.get(name, "")

    return re.sub(r"\$(\$| |:|\{[A-Za-z0-9_.-]+\}|[A-Za-z0-9_-]+)", sub, value)


def _split_paths(text):
    """Space-separated paths, where ``$ `` is a space inside a path."""
    return [p.replace("\0", " ") for p in text.replace("$ ", "\0").split()]


def parse(text):
    """The (command, outputs) of every build statement, expanded."""
    variables, rules, builds = {}, {}, []
    current = None  # the rule or build statement whose indented lines follow
    for line in _logical_lines(text):
        indented = line[0] in " \t"
        line = line.strip()
        if indented and current is not None:
            key, _, value = line.partition("=")
            current[1][key.strip()] = value.strip()
            continue
        if line.startswith("rule "):
            current = ("rule", {})
            rules[line[5:].strip()] = current[1]
        elif line.startswith("build "):
            head, _, tail = line[6:].partition(": ")
            parts = _split_paths(tail)
            current = ("build", {})
            builds.append((_split_paths(head), parts[0], [p for p in parts[1:] if p not in ("|", "||")],
                           current[1]))
        else:
            current = None
            key, _, value = line.partition("=")
            variables[key.strip()] = _expand(value.strip(), variables)
    commands = []
    for outs, rule_name, ins, extra in builds:
        if rule_name == "phony":
            continue
        rule = rules[rule_name]
        scope = dict(variables)
        scope.update({k: _expand(v, variables) for k, v in extra.items()})
        scope["in"] = " ".join(shlex.quote(p) for p in ins)
        scope["out"] = " ".join(shlex.quote(p) for p in outs)
        commands.append((_expand(rule["command"], scope), outs))
    return commands


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-j", type=int, default=os.cpu_count() or 1)
    parser.add_argument("-C", dest="directory", default=".")
    parser.add_argument("-f", dest="file", default="build.ninja")
    args, _ = parser.parse_known_args(argv)
    if args.version:
        print(VERSION)
        return 0
    os.chdir(args.directory)
    with open(args.file) as f:
        commands = parse(f.read())

    def run(item):
        command, outs = item
        for out in outs:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        done = subprocess.run(command, shell=True, capture_output=True, text=True)
        return command, done

    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, args.j)) as pool:
        for i, (command, done) in enumerate(pool.map(run, commands), 1):
            print(f"[{i}/{len(commands)}] {command if args.verbose else command.split()[-1]}", flush=True)
            sys.stdout.write(done.stdout + done.stderr)
            if done.returncode != 0:
                print(f"FAILED ({done.returncode}): {command}", flush=True)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
