#!/usr/bin/env python3
"""Run iptables-legacy for each case (chain<TAB>args) in this (throwaway) netns and print
expectations as TSV: chain, args, rc, stderr(escaped), save-tail, list-n tail, list tail."""
import subprocess, sys, shlex, re

def run(cmd):
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr

def tail(line, has_target):
    toks = line.split()
    n = 5 if has_target else 4
    # keep the text after the n-th field with its original spacing
    m = re.match(r'^\s*' + r'\S+\s+' * (n - 1) + r'\S+', line)
    rest = line[m.end():] if m else ''
    return rest.rstrip('\n')

def esc(s):
    return s.replace('\\', '\\\\').replace('\t', '\\t').replace('\n', '\\n')

for raw in open(sys.argv[1]):
    raw = raw.rstrip('\n')
    if not raw or raw.startswith('#'):
        continue
    chain, args = raw.split('\t', 1)
    run('iptables-legacy -F; iptables-legacy -X')
    if chain not in ('INPUT', 'FORWARD', 'OUTPUT'):
        run(f'iptables-legacy -N {chain}')
    rc, out, err = run(f'iptables-legacy -A {chain} {args}')
    save = listn = listv = ''
    if rc == 0:
        _, out, _ = run(f'iptables-legacy -S {chain}')
        lines = [l for l in out.splitlines() if l.startswith(f'-A {chain}')]
        save = lines[0][len(f'-A {chain}'):] if lines else '<none>'
        has_target = ' -j ' in (' ' + args)
        for numeric in (True, False):
            _, out, _ = run(f'iptables-legacy -L {chain}' + (' -n' if numeric else ''))
            rl = out.splitlines()[2] if len(out.splitlines()) > 2 else ''
            t = tail(rl, has_target)
            if numeric: listn = t
            else: listv = t
    print('\t'.join([chain, args, str(rc), esc(err), esc(save), esc(listn), esc(listv)]))
