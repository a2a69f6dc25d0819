#!/usr/bin/env bash
# Writes docs/real-kernels.md from the real-kernel corpus (scripts/kernels.sh): per kernel,
# its package and version, and its own ftrace site table against what `splice inspect` finds,
# with every difference grouped by its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/kernels.sh >/dev/null
swift build --product splice >/dev/null
mkdir -p .build/kernels/inspect
while IFS=$'\t' read -r name _; do
    [ "$name" = name ] && continue
    .build/debug/splice inspect ".build/kernels/$name.elf" --instructions 0 --json > ".build/kernels/inspect/$name.json"
done < .build/kernels/manifest.tsv
python3 - <<'EOF'
import json, collections, re
rows = [l.rstrip('\n').split('\t') for l in open('.build/kernels/manifest.tsv')][1:]
out = ['# Splice on Debian\'s kernels', '',
       'Written by `scripts/real-kernels-doc.sh` from the corpus `scripts/kernels.sh` prepares (Debian 12 and 13,',
       'ppc64el and amd64). Each kernel\'s own ftrace table (`__start_mcount_loc`..`__stop_mcount_loc`) is the',
       'authority for its sites: every entry is checked for a tracing slot at its address; discovery in the',
       'prologues of the image\'s function symbols is the cross-check.', '']
for name, suite, arch, package, version, deb_sha, image_sha in rows:
    r = json.load(open(f'.build/kernels/inspect/{name}.json'))
    t = r.get('siteTable')
    out += [f'## {name}', '',
            f'`{package}` {version} ({suite}, {arch}); image sha256 `{image_sha[:16]}…`, build id `{r.get("buildID")}`.', '',
            '| functions | sites in its table | zero entries | found | missing | only through the table | extra |',
            '|---|---|---|---|---|---|---|']
    if t is None:
        out += [f'| {len(r["functions"])} | (no table) | | | | | |', '']
        continue
    pct = 100.0 * t['found'] / t['entries'] if t['entries'] else 100.0
    out += [f'| {len(r["functions"])} | {t["entries"]} | {t["zeroEntries"]} | {t["found"]} ({pct:.2f}%) | '
            f'{len(t["missing"])} | {len(t["undiscovered"])} | {len(t["extra"])} |', '']
    for title, key in [('Missing: entries whose bytes are not a tracing slot', 'missing'),
                       ('Found only through the table (discovery from the symbols misses them)', 'undiscovered'),
                       ('Extra: slots discovery finds that the table does not list', 'extra')]:
        items = t[key]
        if not items:
            continue
        groups = collections.Counter()
        examples = {}
        for e in items:
            reason = re.sub(r'0x[0-9a-f]+', '…', e['reason'])
            reason = re.sub(r'\[[0-9a-f ]+\]', '[…]', reason)
            reason = re.sub(r'(in|past) [A-Za-z0-9_.$]+', r'\1 F', reason)
            reason = re.sub(r"F's", "F's", reason)
            key2 = (reason, e.get('section') or '-')
            groups[key2] += 1
            examples.setdefault(key2, []).append(e.get('location') or hex(e['address']))
        out += [f'{title}:', '', '| count | section | reason | examples |', '|---|---|---|---|']
        for (reason, section), n in groups.most_common():
            out.append(f'| {n} | {section} | {reason} | {", ".join(examples[(reason, section)][:3])} |')
        out.append('')
out += ['## What the differences are', '',
        '- *No function symbol covers it* (ppc64le 6.1): code between symbols, such as an alias\'s body or a local',
        '  label the linker kept no symbol for. Linux finds these through its table, and so does `splice inspect`.',
        '  A payload names the functions it patches, so a site with no symbol cannot be patched by name.',
        '- *Inside the size inferred for a function* (amd64): kallsyms has no symbol for some functions, so the',
        '  size inferred for the previous symbol runs over them. The table still finds their slots.',
        '- *int80_emulation+0x0* (amd64): an assembly entry that starts with five one-byte nops, an alternatives',
        '  placeholder. It is not a compiler\'s tracing slot, and the table rightly leaves it out.',
        '- *__stack_chk_fail+0x4* (amd64 6.12): the function is `noinstr`. objtool keeps its nop but removes its',
        '  table entry, so Linux never patches it.',
        '- *write_ciabr+0x8* (ppc64le 6.12): the function keeps the compiler\'s two nops but has no table entry.',
        '  The kernel does not trace it.',
        '- *do_uaccess_flush+0x0* (ppc64le 6.12): assembly that starts with nops the kernel rewrites for its',
        '  uaccess-flush mitigation (feature fixups). They are not a tracing slot.',
        '- *debian13-ppc64le*: 6.12 is built with `-fpatchable-function-entry=2`, which leaves two nops at the',
        '  local entry that become `mflr r0; bl ftrace_caller`. Splice finds these sites; it cannot patch them yet.', '']
open('docs/real-kernels.md', 'w').write('\n'.join(out) + '\n')
print('wrote docs/real-kernels.md')
EOF
